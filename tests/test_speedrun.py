"""The CIFAR speed-run recipe on the CPU: it learns real data, replays exactly, whitens, and runs fp16 with a
scaler; the GPU benchmark scripts' --smoke modes run and print one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import require_cifar
from imgclf.data import ImageSet, load_splits
from imgclf.data.imageset import stratified_subset
from imgclf.models.speednet import patch_whitening
from imgclf.training.speedrun import (
    FAST,
    LONG,
    augment_epoch,
    lr_factor,
    normalize,
    run_speedrun,
    shrunk,
    translate,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    """2,000 training and 1,000 test images of CIFAR-10-JPEG, decoded once into the session's private cache
    (the one the smoke subprocesses read too)."""
    archive = require_cifar()
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLF_CACHE", str(tmp_path_factory.getbasetemp() / "imgclf-cache"))
        splits = load_splits(str(archive))
    train = splits.train.take(stratified_subset(splits.train.labels, 2000, 0))
    test = splits.test.take(stratified_subset(splits.test.labels, 1000, 0))
    return train, test


def small(data: ImageSet, n: int) -> ImageSet:
    return data.take(stratified_subset(data.labels, n, 1))


@pytest.mark.slow
def test_learns_a_cifar_subset(cifar: tuple[ImageSet, ImageSet]) -> None:
    """Batches of 250 at the per-step LR of 1024. Measured: 46-49 % with TTA, 44-49 % without, in 3-20 s of
    training on 2 shared cores; without the LR scaled up (the linear scaling rule's LR) 36 %."""
    train, test = cifar
    cfg = FAST.replace(widths=(32, 64, 64), batch_size=250, lr=FAST.lr * 1024 / 250, epochs=4.0,
                       eval_batch_size=500, precision="fp32")
    result = run_speedrun(train, test, cfg, "cpu")
    assert result["steps"] == 32 and result["epochs"] == 4.0
    assert result["tta_accuracy"] > 0.35, result
    assert result["accuracy"] > 0.30, result
    assert result["tta_accuracy"] >= result["accuracy"] - 0.02, result


@pytest.mark.slow
def test_same_seed_same_run(cifar: tuple[ImageSet, ImageSet]) -> None:
    train, test = small(cifar[0], 500), small(cifar[1], 200)
    cfg = shrunk(FAST).replace(log_every=1, precision="fp32", tta_level=1)
    first, again, other = (run_speedrun(train, test, cfg.replace(seed=s), "cpu") for s in (3, 3, 4))
    assert first["losses"] == again["losses"] and len(first["losses"]) == first["steps"] == 5
    assert first["tta_accuracy"] == again["tta_accuracy"] and first["accuracy"] == again["accuracy"]
    assert first["losses"] != other["losses"]


@pytest.mark.slow
def test_whitening_gives_identity_second_moment(cifar: tuple[ImageSet, ImageSet]) -> None:
    x = normalize(torch.from_numpy(small(cifar[0], 300).images), channels_last=False)
    filters = patch_whitening(x, kernel=2, eps=1e-9)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.equal(filters[12:], -filters[:12])
    out = F.conv2d(x.double(), filters[:12].double()).permute(0, 2, 3, 1).reshape(-1, 12)
    moment = out.T @ out / len(out)
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=2e-3), moment.diagonal()
    damped = F.conv2d(x.double(), patch_whitening(x, 2, eps=5e-4)[:12].double()).permute(0, 2, 3, 1).reshape(-1, 12)
    diagonal = (damped.T @ damped / len(damped)).diagonal()
    assert diagonal.max() < 1.0 and diagonal.min() < 0.9  # eps damps the weakest directions most


def cpu_fp16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2)).dtype == torch.float16
    except (RuntimeError, TypeError):
        return False


@pytest.mark.slow
def test_half_precision_with_grad_scaler(cifar: tuple[ImageSet, ImageSet]) -> None:
    """fp16 autocast + GradScaler where this torch runs fp16 on a CPU, else bf16 (no scaler)."""
    fp16 = cpu_fp16_autocast_works()
    cfg = shrunk(LONG).replace(precision="fp16" if fp16 else "bf16", log_every=1, tta_level=0, batch_size=50)
    result = run_speedrun(small(cifar[0], 150), small(cifar[1], 50), cfg, "cpu")
    assert result["precision"] == ("float16" if fp16 else "bfloat16")
    assert all(np.isfinite(loss) for _, loss in result["losses"])
    assert (result["grad_scale"] is not None) == fp16


def test_lr_schedule_shape() -> None:
    total = 100
    assert lr_factor(0, total, FAST) == pytest.approx(FAST.lr_start)
    assert lr_factor(round(FAST.warmup_frac * total), total, FAST) == pytest.approx(1.0, abs=0.01)
    assert lr_factor(total, total, FAST) == pytest.approx(FAST.lr_end)


def test_translate_is_a_reflect_padded_crop_and_flip_alternates() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    shifted = translate(x, 2, gen)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(shifted[i], c) for c in crops)
    base = torch.tensor([True, False])
    cfg = FAST.replace(translate=0, flip="alternate")
    even, odd = (augment_epoch(x, e, base, cfg, gen) for e in (2, 3))
    assert torch.equal(even[0], x[0].flip(2)) and torch.equal(even[1], x[1])
    assert torch.equal(odd[0], x[0]) and torch.equal(odd[1], x[1].flip(2))


@pytest.mark.slow
@pytest.mark.parametrize("script", ["gpu_speedrun", "gpu_finetune", "gpu_precision"])
def test_gpu_benchmark_smoke(script: str, cifar: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
    """Each GPU benchmark's --smoke runs on the CPU (~10-20 s each) and prints the JSON it writes to --out."""
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--smoke",
                           "--archive", str(require_cifar()), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert printed["benchmark"] == script and printed["smoke"] is True and printed["device"] == "cpu"
    if script == "gpu_speedrun":
        assert set(printed["presets"]) == {"fast", "long"}
        assert 0.0 <= printed["presets"]["fast"]["tta_accuracy_mean"] <= 1.0
    elif script == "gpu_finetune":
        assert 0.0 <= printed["test_accuracy"] <= 1.0 and printed["images_per_second"] > 0
    else:
        assert set(printed["variants"]) == {"fp32", "fp32_no_tf32", "bf16", "fp16"}
        assert all(v["losses"] for v in printed["variants"].values())


def test_recipe_speedrun_writes_a_run_that_predicts_and_refuses_photos(tmp_path: Path) -> None:
    """`imgclf train --recipe speedrun` on 32 px images: a standard run directory whose checkpoint the
    predictor loads, resume refused (final weights only), photos refused with one line."""
    from helpers import imgclf, make_folder
    from imgclf.inference.predictor import Predictor

    data = make_folder(tmp_path / "imgs", classes=3, per_class=40, size=32, splits=True)
    run = tmp_path / "run"
    result = imgclf("train", "--data", str(data), "--recipe", "speedrun", "--epochs", "4", "--batch-size", "20",
                    "--set", "width=0.25", "--device", "cpu", "--out", str(run))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "speednet" and metrics["test_accuracy"] > 0.6, metrics
    config = (run / "config.yaml").read_text()
    assert "speedrun: fast" in config and "speedrun_config" in config
    predictor = Predictor.load(checkpoint=str(run / "checkpoints" / "last.pt"), device="cpu")
    picture = next((data / "test" / "class_1").iterdir())
    assert predictor.predict([picture])[0]["label"] == "class_1"
    again = imgclf("train", "--resume", str(run / "checkpoints" / "last.pt"))
    assert again.returncode == 2 and "rerun it" in again.stderr
    photos = make_folder(tmp_path / "photos", classes=2, per_class=12, size=80)
    refused = imgclf("train", "--data", str(photos), "--recipe", "speedrun", "--out", str(tmp_path / "p"))
    assert refused.returncode == 2 and "small square images" in refused.stderr
