"""Loaders, the Trainer, exact resume, kill -9 safety and a short real-data run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import make_folder, require_cifar
from imgclf.commands.evaluate import evaluate_checkpoint
from imgclf.config import TrainConfig
from imgclf.data.loaders import BatchAugment
from imgclf.errors import TrainingDiverged
from imgclf.evaluation.metrics import tta_logits
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.training.callbacks import Callback
from imgclf.training.run import train
from imgclf.training.schedules import lr_multiplier


def test_augment_is_seeded_and_shape_preserving() -> None:
    x = torch.rand(8, 3, 16, 16)
    aug = BatchAugment(crop_pad=4, flip=True, cutout=6)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    flipped = BatchAugment(crop_pad=0, flip=True, cutout=0)(x, torch.Generator().manual_seed(0))
    for img, out in zip(x, flipped, strict=True):  # every image is itself or its mirror
        assert torch.equal(out, img) or torch.equal(out, img.flip(2))


def test_schedules_shape() -> None:
    assert lr_multiplier("onecycle", 0.0) == 0.0 and lr_multiplier("onecycle", 0.25) == 1.0
    assert lr_multiplier("cosine", 1.0) == pytest.approx(0.0) and lr_multiplier("cosine", 0.5) == pytest.approx(0.5)
    assert lr_multiplier("step", 0.8) == pytest.approx(0.01) and lr_multiplier("linear", 0.5) == 0.5
    assert lr_multiplier("cosine", 0.05, warmup=0.1) == pytest.approx(0.5)


class StopAfter(Callback):
    """Simulates an interrupted run: stops cleanly after `epochs` epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if trainer.epoch >= self.epochs:
            trainer.stop_reason = "test interruption"


def _without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_resume_is_exact(tmp_path: Path) -> None:
    """2 epochs straight == 1 epoch + resume to 2: bitwise weights, identical history and evaluation."""
    root = make_folder(tmp_path / "f", classes=3, per_class=24, splits=True)
    base = TrainConfig(data=str(root), model="tiny", epochs=2, batch_size=16, dropout=0.2, cutout=4, quiet=True,
                       device="cpu", lr=0.05)
    straight = train(base.replace(out=str(tmp_path / "a")))
    train(base.replace(out=str(tmp_path / "b")), extra_callbacks=[StopAfter(1)])
    first = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert first["trainer"]["epoch"] == 1
    resumed = train(base, resume=str(tmp_path / "b" / "checkpoints" / "last.pt"))
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _without_seconds(straight.history) == _without_seconds(resumed.history)
    for key in ("val_accuracy", "test_accuracy", "test_loss", "per_class_test_accuracy"):
        assert straight.metrics[key] == resumed.metrics[key]
    history_b = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert len(history_b) == 3
    evaluations = [evaluate_checkpoint(tmp_path / run / "checkpoints" / "last.pt", device="cpu") for run in "ab"]
    assert evaluations[0] | {"checkpoint": None} == evaluations[1] | {"checkpoint": None}


class ExplodeLR(Callback):
    """From the second epoch on, a learning rate no network survives."""

    def on_epoch_start(self, trainer: Any) -> None:
        if trainer.epoch == 1:
            for group in trainer.optimizer.param_groups:
                group["peak_lr"] = 1e30


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=20)
    cfg = TrainConfig(data=str(root), model="tiny", epochs=5, batch_size=8, quiet=True, device="cpu",
                      out=str(tmp_path / "run"), label_smoothing=0.0)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(cfg, extra_callbacks=[ExplodeLR()])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_training_learns_and_writes_the_run_directory(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=30, splits=True)
    cfg = TrainConfig(data=str(root), model="tiny", epochs=6, batch_size=16, quiet=True, device="cpu",
                      out=str(tmp_path / "run"), lr=0.05)
    result = train(cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "history.csv", "metrics.json", "classes.json", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert result.metrics["test_accuracy"] > 0.8
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "last.pt"))
    assert sum(p.numel() for p in model.parameters()) == result.metrics["num_params"]


def test_time_budget_stops_and_still_saves(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=40)
    cfg = TrainConfig(data=str(root), model="tiny", batch_size=4, quiet=True, device="cpu", time_budget=0.5,
                      out=str(tmp_path / "run"))
    result = train(cfg)
    assert result.metrics["stop_reason"].startswith("time budget")
    assert result.metrics["train_seconds"] < 5 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_low_res_trains_the_first_share_at_three_quarters_of_the_side(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=16, size=16)
    sizes: list[int] = []

    class RecordTrainingInputs(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            trainer.model.register_forward_pre_hook(
                lambda module, args: sizes.append(args[0].shape[-1]) if module.training else None)

    cfg = TrainConfig(data=str(root), model="tiny", epochs=4, batch_size=8, quiet=True, device="cpu",
                      low_res=0.5, out=str(tmp_path / "run"))
    result = train(cfg, extra_callbacks=[RecordTrainingInputs()])
    half = result.metrics["steps"] // 2
    assert len(sizes) == result.metrics["steps"] and sizes == [12] * half + [16] * half, sizes


@pytest.mark.slow
def test_kill_9_mid_epoch_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=200, size=16)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "imgclf", "train", "--data", str(root), "--model", "tiny", "--epochs", "1000",
           "--batch-size", "8", "--out", str(out), "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next epoch (or its checkpoint write)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(last)
    assert ckpt["trainer"]["epoch"] >= 1
    resumed = subprocess.run([sys.executable, "-m", "imgclf", "train", "--resume", str(last), "--epochs",
                              str(ckpt["trainer"]["epoch"] + 1), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last)["trainer"]["epoch"] == ckpt["trainer"]["epoch"] + 1


@pytest.mark.slow
def test_short_real_cifar_run_beats_chance(tmp_path: Path) -> None:
    archive = require_cifar()
    cfg = TrainConfig(data=str(archive), model="fastcnn", subset=5000, epochs=5, batch_size=128, quiet=True,
                      device="cpu", out=str(tmp_path / "run"), tta=True)
    result = train(cfg)
    assert result.metrics["test_accuracy"] > 0.40, result.metrics  # chance is 0.10
    assert result.metrics["test_accuracy_without_tta"] > 0.40  # both numbers recorded, the plain one too
    assert np.isclose(sum(1 for _ in open(tmp_path / "run" / "history.csv")), 6)


def test_tta_averages_the_mirror_and_two_one_pixel_shifts() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    got = tta_logits(torch.nn.Flatten(), x)  # an "identity model": the logits are the view's pixels
    views = [x, x.flip(3)]
    shifted = []
    for v in views:
        padded = torch.nn.functional.pad(v, (1, 1, 1, 1), mode="reflect")
        shifted += [padded[..., 2:, 2:], padded[..., :5, :5]]  # content moved up-left and down-right
    expected = sum(v.flatten(1) for v in views) / 4 + sum(v.flatten(1) for v in shifted) / 8
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, x.flatten(1))


def test_a_run_reports_the_weights_it_delivers_not_a_later_worse_epoch(tmp_path: Path) -> None:
    """When a later epoch scores lower than the best (a peak LR on a small photo set), the run's figures, the
    returned model and best.pt are all the best epoch's: no `best_epoch: 1` beside the last epoch's accuracy."""
    class SpoilLastEpoch(Callback):
        def on_step_end(self, trainer: Any) -> None:
            if trainer.epoch == 2:  # the third epoch: weights zeroed after every step, chance accuracy
                with torch.no_grad():
                    for p in trainer.model.parameters():
                        p.zero_()

    cfg = TrainConfig(data="digits", model="tiny", epochs=3, quiet=True, device="cpu", out=str(tmp_path / "run"))
    result = train(cfg, extra_callbacks=[SpoilLastEpoch()])
    history, metrics = result.history, result.metrics
    assert history[2]["val_acc"] < history[1]["val_acc"] - 0.2, history
    assert metrics["best_epoch"] == metrics["delivered_epoch"] != 3
    assert metrics["val_accuracy"] == pytest.approx(metrics["best_val_accuracy"], abs=1e-6)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best[k], v) for k, v in result.model.state_dict().items())
