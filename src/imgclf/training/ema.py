"""--ema DECAY: an exponential moving average of the weights, kept beside the raw ones (torch's AveragedModel).

BatchNorm's running statistics are averaged with the weights (use_buffers): statistics gathered under the raw
weights belong to them, so the averaged net gets the average of its statistics too, as timm's ModelEma does.
The decay warms up as min(DECAY, (1 + n) / (10 + n)) after n updates (TensorFlow's num_updates rule): without
it, 0.999 over the few hundred steps of a short CPU run would keep most of the random initial weights.
A stateful callback: it updates after every optimizer step, adds its own validation columns (val_loss_ema, ...)
to each epoch's row, and its state rides in the checkpoint under "ema".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imgclf.training.callbacks import WEIGHTS, Callback

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer


class WeightEMA(Callback):
    """The averaged copy of `model`, updated after every optimizer step; its state rides in the checkpoint,
    so a resumed run continues the average exactly."""

    order = WEIGHTS
    state_key = "ema"

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class and state-dict keys as the raw one)."""
        return self.averaged.module

    def current_decay(self) -> float:
        n = int(self.averaged.n_averaged)
        return min(self.decay, (1 + n) / (10 + n))

    def _lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        get_ema_multi_avg_fn(self.current_decay())(averaged, current, n)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def on_step_end(self, trainer: Trainer) -> None:
        self.update(trainer.model)

    def on_validation_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """The averaged weights scored beside the raw ones: extra history columns."""
        row.update(trainer.validate(self.module, "_ema"))

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
