"""--checkpoint-every: last.pt inside an epoch holds the position in it, and --resume replays exactly the rest of
that epoch (same batches, same augmentation), so the final weights are bitwise those of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_folder, make_photo_folder
from imgclf.config import TrainConfig, checkpoint_interval
from imgclf.data import load_splits
from imgclf.data.loaders import BatchAugment, PhotoLoader, TensorLoader
from imgclf.data.photos import Preprocess, train_transform
from imgclf.errors import UserError
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.callbacks import Callback
from imgclf.training.run import train


class Killed(Exception):
    """What the process dies of in the in-process variant."""


class KillAfter(Callback):
    """Dies after optimizer step `step`, leaving on disk what a kill -9 there would (it runs after the
    Checkpointer, so steps after the last mid-epoch checkpoint are lost and must be redone)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer: Any, loss: float) -> None:
        if trainer.step == self.step:
            raise Killed


def _without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("mid") / "imgs", classes=3, per_class=24, splits=True)


def test_a_loader_started_at_batch_k_yields_the_rest_of_its_epoch(small: Path, tmp_path: Path) -> None:
    splits = load_splits(str(small))
    tensors = TensorLoader(splits.train, 8, shuffle=True, augment=BatchAugment(4, True, 6), seed=3, drop_last=True)
    photo_root = make_photo_folder(tmp_path / "photos")
    kwargs = dict(preprocess=Preprocess(24), augment=train_transform(24), shuffle=True, seed=3)
    photos = PhotoLoader(load_splits(str(photo_root), image_size=24).train, 4, **kwargs)
    streamed = PhotoLoader(load_splits(str(photo_root), image_size=24, stream=True).train, 4, **kwargs)
    for loader in (tensors, photos, streamed):
        loader.set_epoch(2)
        whole = list(loader)
        loader.set_epoch(2, start=3)
        rest = list(loader)
        assert len(rest) == len(whole) - 3 and len(loader) == len(whole)
        for (xa, ya), (xb, yb) in zip(whole[3:], rest, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_checkpoint_every_reads_steps_seconds_minutes_and_off(tmp_path: Path) -> None:
    assert checkpoint_interval(TrainConfig().checkpoint_every) == (None, 600.0)  # the default: every 10 minutes
    assert checkpoint_interval("off") == checkpoint_interval(None) == (None, None)
    assert checkpoint_interval(500) == checkpoint_interval("500") == (500, None)
    assert checkpoint_interval("90s") == (None, 90.0) and checkpoint_interval("1.5m") == (None, 90.0)
    for bad in ("0", "1.5", "10h", "m", "-3", True):
        with pytest.raises(UserError, match="checkpoint_every"):
            TrainConfig(checkpoint_every=bad).replace()
    with pytest.raises(UserError, match="speed run"):  # its own loop, seconds long: refused, not ignored
        train(TrainConfig(speedrun="fast", checkpoint_every="5", out=str(tmp_path / "run")))


@pytest.mark.parametrize("kind", ["small images, every 3 steps", "photos, every millisecond"])
def test_killed_mid_epoch_then_resumed_equals_an_uninterrupted_run(kind: str, small: Path, tmp_path: Path) -> None:
    if kind.startswith("photos"):  # per-image crops and policy; a time interval (each step takes longer)
        data, every = make_photo_folder(tmp_path / "photos"), "0.001s"
        base = TrainConfig(data=str(data), model="tiny", image_size=24, batch_size=4, dropout=0.2)
    else:  # whole-batch translate, flip and cutout from one generator per epoch
        data, every = small, "3"
        base = TrainConfig(data=str(data), model="tiny", batch_size=8, cutout=4, dropout=0.2)
    base = base.replace(epochs=2, quiet=True, device="cpu", lr=0.05, checkpoint_every=every)
    straight = train(base.replace(out=str(tmp_path / "a")))
    per_epoch = straight.metrics["steps"] // 2
    run = tmp_path / "b"
    with pytest.raises(Killed):  # two steps into epoch 2 after its first mid-epoch checkpoint (at most)
        train(base.replace(out=str(run)), extra_callbacks=[KillAfter(per_epoch + 3)])
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]
    assert saved["epoch"] == 1 and 0 < saved["batch"] < per_epoch and saved["step"] == per_epoch + saved["batch"]
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 1  # no row for the partial epoch
    resumed = train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"))
    _assert_same_weights(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"],
                         load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    assert _without_seconds(resumed.history) == _without_seconds(straight.history)  # the partial epoch's sums too
    assert (run / "lr_schedule.csv").read_text() == (tmp_path / "a" / "lr_schedule.csv").read_text()
    assert resumed.metrics["steps"] == straight.metrics["steps"]


def _inside_epoch_2(last: Path) -> bool:
    if not last.exists():
        return False
    saved = load_checkpoint(last)["trainer"]
    return saved["epoch"] == 1 and saved["batch"] > 0


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bitwise_exact(tmp_path: Path) -> None:
    """A real SIGKILL of `imgclf train` once a mid-epoch last.pt exists, then `--resume` from it."""
    root = make_folder(tmp_path / "f", classes=3, per_class=120, size=16)
    flags = ["--data", str(root), "--model", "tiny", "--epochs", "2", "--batch-size", "8",
             "--checkpoint-every", "5", "--quiet", "--device", "cpu"]
    straight = subprocess.run([sys.executable, "-m", "imgclf", "train", *flags, "--out", str(tmp_path / "a")],
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "imgclf", "train", *flags, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not _inside_epoch_2(last):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(last)["trainer"]
    assert saved["epoch"] == 1 and saved["batch"] > 0, saved["batch"]  # killed mid-epoch, after a checkpoint
    resumed = subprocess.run([sys.executable, "-m", "imgclf", "train", "--resume", str(last), "--quiet"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"],
                         load_checkpoint(last)["model"])
    rows = [_without_seconds(list(csv.DictReader(open(r / "history.csv")))) for r in (tmp_path / "a", run)]
    assert rows[0] == rows[1] and len(rows[1]) == 2
