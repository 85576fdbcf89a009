"""The Trainer's events: they fire in the documented order to callbacks sorted by `order` (the config's
mixing, low-res and EMA among them), a stateful callback's state rides in the checkpoint and comes back on
resume, and the callback modules never import the trainer."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from helpers import make_folder
from imgclf.config import TrainConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.loaders import TensorLoader
from imgclf.errors import UserError
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.training.callbacks import Callback
from imgclf.training.checkpoint import save_atomic
from imgclf.training.ema import WeightEMA
from imgclf.training.low_res import LowRes
from imgclf.training.mixing import BatchMixer
from imgclf.training.run import train
from imgclf.training.trainer import Trainer

SIDE, CLASSES = 8, 4


class Recorder(Callback):
    """Every event in the order it fires, with what the trainer holds at that moment."""

    def __init__(self, order: int | None = None) -> None:
        if order is not None:
            self.order = order
        self.events: list[str] = []
        self.inputs: list[tuple[int, int]] = []  # (side, target dims) each forward pass gets
        self.saw_ema_columns: list[bool] = []

    def _record(self, event: str) -> None:
        self.events.append(event)

    def on_fit_start(self, trainer: Any) -> None:
        self._record("on_fit_start")

    def on_epoch_start(self, trainer: Any) -> None:
        self._record("on_epoch_start")

    def on_batch_start(self, trainer: Any) -> None:
        self._record("on_batch_start")

    def on_forward_start(self, trainer: Any) -> None:
        self._record("on_forward_start")
        self.inputs.append((trainer.x.shape[-1], trainer.y.ndim))

    def on_loss(self, trainer: Any) -> None:
        assert trainer.loss.requires_grad and len(trainer.out) == len(trainer.y)
        self._record("on_loss")

    def on_step_end(self, trainer: Any) -> None:
        self._record("on_step_end")

    def on_batch_end(self, trainer: Any, loss: float) -> None:
        self._record("on_batch_end")

    def on_validation_end(self, trainer: Any, row: dict[str, Any]) -> None:
        assert len(trainer.history) == row["epoch"] - 1  # not recorded yet
        self.saw_ema_columns.append("val_acc_ema" in row)
        self._record("on_validation_end")

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        assert trainer.history[-1] is row
        self._record("on_epoch_end")

    def on_fit_end(self, trainer: Any) -> None:
        self._record("on_fit_end")


def test_events_fire_in_the_documented_order_to_callbacks_sorted_by_order() -> None:
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (40, SIDE, SIDE, 3), dtype=np.uint8), rng.integers(0, CLASSES, 40),
                    [str(c) for c in range(CLASSES)])
    loader = TensorLoader(data, 8, shuffle=True, seed=3, channels_last=False, drop_last=True)  # 5 batches
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, CLASSES))
    cfg = TrainConfig(epochs=2, batch_size=8, accumulate=2, mixup=0.4, ema=0.9, low_res=0.5)
    late, early = Recorder(), Recorder(order=5)  # given late first: the trainer sorts them
    trainer = Trainer(model, cfg, loader, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      max_epochs=2, classes=data.classes, callbacks=[late, early])
    assert [type(c) for c in trainer.callbacks] == [Recorder, BatchMixer, LowRes, WeightEMA, Recorder]
    assert trainer.callbacks[0] is early and trainer.callbacks[-1] is late
    trainer.fit()

    expected = ["on_fit_start"]
    for _ in range(2):
        expected.append("on_epoch_start")
        for batches in (2, 2, 1):  # --accumulate 2 over 5 batches: steps of 2, 2 and 1
            expected += ["on_batch_start", *["on_forward_start", "on_loss"] * batches, "on_step_end", "on_batch_end"]
        expected += ["on_validation_end", "on_epoch_end"]
    expected.append("on_fit_end")
    assert late.events == expected and trainer.step == 6
    # before the mixer and low-res: the loader's batch; after them: mixed targets, the first half of the steps
    # (3 of 6: 5 forward passes) at 3/4 of the side
    assert early.inputs == [(SIDE, 1)] * 10
    assert late.inputs == [(6, 2)] * 5 + [(SIDE, 2)] * 5
    assert early.saw_ema_columns == [False, False] and late.saw_ema_columns == [True, True]  # the EMA adds them


class CountSteps(Callback):
    """A stateful callback: the optimizer steps it has seen, across resumes."""

    state_key = "count_steps"

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, trainer: Any) -> None:
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]


class OtherCount(CountSteps):
    state_key = "count_steps_2"


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        trainer.stop_reason = "interrupted"


def test_a_callbacks_state_round_trips_through_the_checkpoint_on_resume(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=16, splits=True)
    base = TrainConfig(data=str(data), model="tiny", epochs=2, batch_size=8, quiet=True, device="cpu", lr=0.05)
    straight = train(base.replace(out=str(tmp_path / "a")), extra_callbacks=[counted := CountSteps()])
    assert counted.steps == straight.metrics["steps"]
    run = tmp_path / "b"
    train(base.replace(out=str(run)), extra_callbacks=[CountSteps(), StopAfterFirstEpoch()])
    last = run / "checkpoints" / "last.pt"
    first = load_checkpoint(last)
    per_epoch = first["trainer"]["step"]
    assert first["count_steps"] == {"steps": per_epoch}
    assert first["lr_schedule"]["step"].tolist() == list(range(1, per_epoch + 1))
    (run / "lr_schedule.csv").unlink()  # the LR monitor's steps come back from the checkpoint, not the file
    resumed = train(TrainConfig(), resume=str(last), extra_callbacks=[recounted := CountSteps()])
    assert recounted.steps == resumed.metrics["steps"] == straight.metrics["steps"] == 2 * per_epoch
    assert (run / "lr_schedule.csv").read_text() == (tmp_path / "a" / "lr_schedule.csv").read_text()
    assert load_checkpoint(last)["count_steps"] == {"steps": 2 * per_epoch}

    with pytest.raises(UserError, match="no state for count_steps_2"):  # a stateful callback the run lacked
        train(TrainConfig(), resume=str(tmp_path / "a" / "checkpoints" / "last.pt"),
              overrides={"out": str(tmp_path / "c")}, extra_callbacks=[OtherCount()])
    older = {k: v for k, v in first.items() if k not in ("lr_schedule", "count_steps")}
    save_atomic(older | {"format": "imgclf-checkpoint-v1"}, tmp_path / "v1.pt")
    model_from_checkpoint(load_checkpoint(tmp_path / "v1.pt"))  # an older checkpoint's weights still load
    with pytest.raises(UserError, match="older imgclf.*cannot be resumed"):
        train(TrainConfig(), resume=str(tmp_path / "v1.pt"), overrides={"out": str(tmp_path / "d")})


class ClaimsTheModel(CountSteps):
    state_key = "model"


def test_stateful_callbacks_cannot_share_a_checkpoint_entry() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for callbacks in ([CountSteps(), CountSteps()], [ClaimsTheModel()]):
        with pytest.raises(ValueError, match="already a checkpoint entry"):
            Trainer(model, TrainConfig(), [], [], optimizer=optimizer, max_epochs=1, classes=["a", "b"],
                    callbacks=callbacks)


CALLBACK_MODULES = ["callbacks", "mixing", "ema", "low_res", "tensorboard", "accumulation"]


@pytest.mark.parametrize("name", CALLBACK_MODULES)
def test_callback_modules_import_the_trainer_only_for_type_checking(name: str) -> None:
    import imgclf.training

    path = Path(imgclf.training.__file__).with_name(f"{name}.py")
    tree = ast.parse(path.read_text())
    type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "imgclf.training.trainer":
            assert id(node) in type_checking, f"{path.name}:{node.lineno} imports the trainer"
        if isinstance(node, ast.Import):
            assert "imgclf.training.trainer" not in {a.name for a in node.names}, f"{path.name}:{node.lineno}"
