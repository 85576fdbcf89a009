"""--logger tensorboard: the events read back with TensorBoard's own reader hold every step, the epoch values of
history.csv and the confusion matrix; a resumed run continues the same log without the killed run's extra steps."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import make_folder
from imgclf.config import TrainConfig
from imgclf.errors import UserError
from imgclf.training.run import train
from imgclf.training.tensorboard import TensorBoardLogger
from test_midepoch_resume import KillAfter, Killed


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("tb") / "imgs", classes=3, per_class=24, splits=True)


def _cfg(data: Path, out: Path, **changes: Any) -> TrainConfig:
    return TrainConfig(data=str(data), model="tiny", epochs=2, batch_size=8, quiet=True, device="cpu", lr=0.05,
                       logger="tensorboard", out=str(out)).replace(**changes)


def test_the_log_holds_every_step_the_epoch_values_and_the_confusion_matrix(data: Path, tmp_path: Path) -> None:
    result = train(_cfg(data, tmp_path / "run"))
    events = _events(tmp_path / "run")
    steps = result.metrics["steps"]
    for tag in ("train/loss", "train/lr"):
        assert [e.step for e in events.Scalars(tag)] == list(range(1, steps + 1)), tag
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [steps // 2, steps]  # at each epoch's last step
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        logged = [e.value for e in events.Scalars(f"epoch/{column}")]
        assert logged == pytest.approx([float(row[column]) for row in history], rel=1e-6), column
    assert all(e.value > 0 for e in events.Scalars("epoch/images_per_second"))
    [matrix] = events.Images("val/confusion_matrix")
    picture = Image.open(io.BytesIO(matrix.encoded_image_string))
    assert matrix.step == steps and picture.size == (matrix.width, matrix.height) and min(picture.size) > 200


class KillAfterFlushing(KillAfter):
    """As a kill -9 some time after a checkpoint: the events of the steps since then already on disk."""

    def on_batch_end(self, trainer: Any, loss: float) -> None:
        if trainer.step == self.step:
            next(c for c in trainer.callbacks if isinstance(c, TensorBoardLogger)).write()
        super().on_batch_end(trainer, loss)


def test_a_resumed_run_continues_the_log_without_the_killed_runs_extra_steps(data: Path, tmp_path: Path) -> None:
    straight = _events(train(_cfg(data, tmp_path / "a")).run_dir)
    run = tmp_path / "b"
    with pytest.raises(Killed):  # checkpoints at steps 3, 6, 9 (epoch 2), killed at 11: steps 10-11 redone
        train(_cfg(data, run, checkpoint_every=3), extra_callbacks=[KillAfterFlushing(11)])
    train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"))
    resumed = _events(run)
    assert len(list((run / "tensorboard").iterdir())) == 2  # one event file a process, read as one log
    for tag in ("train/loss", "epoch/train_loss", "epoch/val_acc"):
        assert [(e.step, e.value) for e in resumed.Scalars(tag)] == [(e.step, e.value) for e in straight.Scalars(tag)]


def test_a_missing_tensorboard_is_one_clear_error_before_anything_is_written(data: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    with pytest.raises(UserError, match=r"pip install 'imgclf\[log\]'"):
        train(_cfg(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="logger must be one of mlflow, none, tensorboard"):
        TrainConfig(logger="wandb").replace()
