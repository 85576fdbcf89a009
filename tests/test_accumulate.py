"""--accumulate K: K batches of b summed into one optimizer step equal one batch of K*b (on a net without
BatchNorm, whose statistics are per batch), and the LR schedule counts optimizer steps."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import make_folder
from imgclf.config import TrainConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.loaders import TensorLoader
from imgclf.errors import UserError
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.run import train
from imgclf.training.trainer import Trainer
from test_ddp import _run

IMAGES, SIDE, CLASSES = 64, 8, 4


def _trained(batch_size: int, accumulate: int, epochs: int = 2) -> Trainer:
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (IMAGES, SIDE, SIDE, 3), dtype=np.uint8),
                    rng.integers(0, CLASSES, IMAGES), [str(c) for c in range(CLASSES)])
    loader = TensorLoader(data, batch_size, shuffle=True, seed=3, channels_last=False, drop_last=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, accumulate=accumulate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    trainer = Trainer(model, cfg, loader, loader, optimizer=optimizer, max_epochs=epochs, classes=data.classes)
    trainer.fit()
    return trainer


def test_accumulated_steps_equal_one_big_batch() -> None:
    big, accumulated = _trained(batch_size=32, accumulate=1), _trained(batch_size=8, accumulate=4)
    assert big.step == accumulated.step == 4  # 2 epochs of 2 steps: the schedule ran to its end in both
    assert big.current_lr == pytest.approx(accumulated.current_lr)
    for (name, a), b in zip(big.model.named_parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    for row_a, row_b in zip(big.history, accumulated.history, strict=True):
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], abs=1e-5)
    plain = _trained(batch_size=8, accumulate=1)
    assert plain.step == 16 and not torch.allclose(plain.model[1].weight, big.model[1].weight, atol=1e-3)


def test_a_remainder_of_batches_makes_a_smaller_last_step() -> None:
    trainer = _trained(batch_size=8, accumulate=3, epochs=1)  # 8 batches: steps of 3, 3 and 2
    assert trainer.step == 3 and trainer.progress() == pytest.approx(1.0)


def test_accumulate_through_train_and_its_limits(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=16, splits=True)
    run = train(TrainConfig(data=str(data), model="tiny", epochs=1, batch_size=8, accumulate=2, quiet=True,
                            device="cpu", out=str(tmp_path / "run")))
    assert run.metrics["steps"] == 3  # 43 training images: 5 batches of 8, in steps of 2, 2 and 1
    with pytest.raises(UserError, match="accumulate must be at least 1"):
        TrainConfig(accumulate=0).replace()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_accumulation_matches_one_process(tmp_path: Path) -> None:
    """2 ranks, global batches of 64 in steps of 2 (each rank normalises 32 images a pass and all-reduces once a
    step) against one process with batches of 32 in steps of 4: the same images in the same BatchNorm groups,
    so the weights and their EMA agree to float error (measured: 1.5e-8 at most)."""
    root = make_folder(tmp_path / "f", classes=3, per_class=96, splits=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["train", "--data", str(root), "--model", "tiny", "--epochs", "3", "--lr", "0.05", "--quiet",
              "--device", "cpu", "--no-amp", "--ema", "0.9", "--no-flip", "--crop-pad", "0"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "imgclf", *common, "--batch-size", "64",
          "--accumulate", "2", "--out", str(tmp_path / "ddp")], env)
    _run([sys.executable, "-m", "imgclf", *common, "--batch-size", "32", "--accumulate", "4", "--out",
          str(tmp_path / "single")], env)
    ddp, single = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("ddp", "single"))
    assert ddp["trainer"]["step"] == single["trainer"]["step"] == 6
    for key in ("model", "ema"):  # the learned tensors (BatchNorm statistics are rank 0's own under DDP)
        for name, value in single[key].items():
            if name.endswith(("weight", "bias")):
                torch.testing.assert_close(ddp[key][name], value, atol=1e-6, rtol=0, msg=f"{key}.{name}")
