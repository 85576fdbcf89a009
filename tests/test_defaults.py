"""Defaults follow the data: grey symbols are not mirrored, tiny images are not shifted, photos are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgclf.config import TrainConfig, resolve
from imgclf.data import load_splits
from imgclf.data.imageset import ImageSet, Splits
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
