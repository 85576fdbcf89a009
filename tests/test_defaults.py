"""Defaults follow the data: grey symbols are not mirrored, tiny images are not shifted, photos are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from imgclf.config import TrainConfig, resolve
from imgclf.data import load_splits
from imgclf.data.imageset import ImageSet, Splits
from imgclf.errors import UserError
from imgclf.training.run import train


def _splits(images: np.ndarray) -> Splits:
    data = ImageSet(images, np.arange(len(images)) % 2, ["a", "b"])
    return Splits(train=data, val=data, test=None)


def test_grey_digits_get_no_flips_and_colour_squares_do() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), 3, axis=3)
    colour = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    digits = resolve(TrainConfig(), _splits(grey), cpu)
    cifar = resolve(TrainConfig(), _splits(colour), cpu)
    assert (digits.flip, digits.crop_pad) == (False, 0)
    assert (cifar.flip, cifar.crop_pad) == (True, 4)
    assert resolve(TrainConfig(flip=True, crop_pad=2), _splits(grey), cpu).flip is True  # the user's word wins


def test_readme_digits_command_reaches_95_percent(tmp_path: Path) -> None:
    """`imgclf train --data digits --epochs 10` (the README's first command): 48 % when digits were mirrored."""
    assert load_splits("digits").classes == [str(d) for d in range(10)]
    result = train(TrainConfig(data="digits", epochs=10, quiet=True, device="cpu", out=str(tmp_path / "run")))
    assert result.metrics["test_accuracy"] >= 0.95, result.metrics["test_accuracy"]


def test_config_limits_hold_however_values_arrive(tmp_path: Path) -> None:
    """--set and --config skip the CLI's own flag checks; config._check refuses the same values in one line."""
    from helpers import imgclf

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dropout: 1.5\n")
    for args in (["--set", "lr=-1"], ["--set", "time_budget=0"], ["--config", str(cfg_file)]):
        result = imgclf("train", "--data", "digits", "--out", str(tmp_path / "never"), *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "must be" in result.stderr
    assert not (tmp_path / "never").exists()


def test_cpu_budget_runs_size_their_net_to_the_measured_rate() -> None:
    """Under a time budget on a CPU the widest net whose measured rate fits the minimum epochs is chosen;
    a slow machine gets a narrower net, an explicit width or --epochs is left alone."""
    from imgclf.config import SIZING_MIN_EPOCHS

    colour = np.random.default_rng(0).integers(0, 255, (400, 32, 32, 3), dtype=np.uint8)
    splits, cpu = _splits(colour), torch.device("cpu")
    budget = 10.0
    fits = SIZING_MIN_EPOCHS * 400 / budget  # images per second that just fit the minimum epochs

    def machine(speed_at_full_width: float):  # noqa: ANN202 - a rate that grows as the net narrows
        return lambda c: speed_at_full_width / c.width ** 2

    fast = resolve(TrainConfig(time_budget=budget), splits, cpu, measure=machine(2 * fits))
    slow = resolve(TrainConfig(time_budget=budget), splits, cpu, measure=machine(0.3 * fits))
    hopeless = resolve(TrainConfig(time_budget=budget), splits, cpu, measure=machine(0.01 * fits))
    assert fast.width == 1.0 and list(fast.extra["sizing"]["images_per_second_by_width"]) == ["1.0"]
    assert slow.width == 0.5 and slow.extra["sizing"]["epochs_that_fit"] >= SIZING_MIN_EPOCHS
    assert hopeless.width == 0.5 and "none does" in hopeless.extra["sizing"]["why"]

    def never(c: TrainConfig) -> float:
        raise AssertionError("measured although nothing was left to size")

    assert resolve(TrainConfig(time_budget=budget, width=0.75), splits, cpu, measure=never).width == 0.75
    assert resolve(TrainConfig(time_budget=budget, epochs=3), splits, cpu, measure=never).width == 1.0
    assert resolve(TrainConfig(), splits, cpu, measure=never).width == 1.0


def test_sizing_is_printed_and_kept_in_the_run_directory(tmp_path: Path) -> None:
    from helpers import make_folder

    data = make_folder(tmp_path / "imgs", classes=3, per_class=40, size=32, splits=True)
    result = train(TrainConfig(data=str(data), time_budget=3, device="cpu", quiet=True, out=str(tmp_path / "r")))
    sizing = result.config.extra["sizing"]
    assert sizing["width"] in (1.0, 0.75, 0.5) and sizing["images_per_second_by_width"]["1.0"] > 0
    assert "sizing:" in (tmp_path / "r" / "config.yaml").read_text()


def test_cpu_scratch_runs_take_smaller_batches_and_budgeted_ones_start_at_low_resolution() -> None:
    """On a CPU from scratch: batches of 128 at LR 0.2 (the same images a second as 256, twice the steps); under a time
    budget the first LOW_RES_SHARE of training at 3/4 size. A GPU and the user's own values are left alone."""
    from imgclf.config import LOW_RES_SHARE, SCRATCH_CPU_BATCH_SIZE, SCRATCH_CPU_LR

    colour = np.random.default_rng(0).integers(0, 255, (4000, 32, 32, 3), dtype=np.uint8)
    splits, cpu = _splits(colour), torch.device("cpu")
    budgeted = resolve(TrainConfig(time_budget=60, width=1.0), splits, cpu)
    assert (budgeted.batch_size, budgeted.lr, budgeted.low_res) == (SCRATCH_CPU_BATCH_SIZE, SCRATCH_CPU_LR,
                                                                    LOW_RES_SHARE)
    assert resolve(TrainConfig(width=1.0), splits, cpu).low_res == 0.0  # a fixed number of epochs: full size
    gpu = resolve(TrainConfig(time_budget=60, width=1.0), splits, torch.device("cuda"))
    assert (gpu.batch_size, gpu.lr, gpu.low_res) == (256, 0.1, 0.0)
    mine = resolve(TrainConfig(time_budget=60, width=1.0, batch_size=64, low_res=0.25), splits, cpu)
    assert (mine.batch_size, mine.low_res) == (64, 0.25)


def test_cpu_recipe_benchmark_prints_both_recipes_side_by_side(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import benchmark_json

    printed = benchmark_json(monkeypatch, capsys, "cpu_recipe", "--smoke")
    variants = printed["variants"]
    assert set(variants) == {"previous", "default"} and all(len(v["runs"]) == 2 for v in variants.values())
    assert variants["previous"]["settings"] == {"batch_size": 256, "lr": 0.1, "low_res": 0.0}
    assert all(0 <= r["test_accuracy"] <= 1 and r["epochs"] >= 1 for v in variants.values() for r in v["runs"])
    assert printed["ratio_default_to_previous"] == round(
        variants["default"]["median"]["test_accuracy"] / variants["previous"]["median"]["test_accuracy"], 4)


def test_the_plan_never_shrinks_an_input_below_what_the_model_accepts(tmp_path: Path) -> None:
    """8x8 digits under a CPU time budget: --low-res would train fastcnn at 6x6 (a max_pool2d traceback);
    the plan keeps them at 8 px, refuses an explicit --low-res or --image-size below the model's smallest
    input in one line, and upsamples data smaller than it (speednet needs 9 px)."""
    from helpers import imgclf

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), 3, axis=3)
    cpu = torch.device("cpu")
    assert resolve(TrainConfig(time_budget=20), _splits(grey), cpu).low_res == 0.0
    assert resolve(TrainConfig(model="speednet", width=1.0), _splits(grey), cpu).image_size == 9
    for bad in ({"low_res": 0.5}, {"image_size": 8, "model": "speednet"}):
        with pytest.raises(UserError, match="at least|below"):
            resolve(TrainConfig(width=1.0, **bad), _splits(grey), cpu)
    result = imgclf("train", "--data", "digits", "--time-budget", "3", "--device", "cpu", "--quiet",
                    "--out", str(tmp_path / "digits"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "digits" / "config.yaml").read_text())["low_res"] == 0.0


def test_pretrained_alone_fine_tunes_the_default_pretrained_model() -> None:
    """`--pretrained` without `--model` asks for a pretrained network: the plan picks the one
    `--recipe finetune` gives, never fastcnn (which has no weights)."""
    from imgclf.config import DEFAULT_MODEL, DEFAULT_PRETRAINED_MODEL, recipe_values

    assert TrainConfig(pretrained=True).model == DEFAULT_PRETRAINED_MODEL == recipe_values("finetune")["model"]
    assert TrainConfig().model == DEFAULT_MODEL
    assert TrainConfig(pretrained=True, model="efficientnet_lite2").model == "efficientnet_lite2"
