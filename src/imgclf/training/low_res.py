"""--low-res P: the first P of training on batches shrunk to LOW_RES_SCALE of their side (half the arithmetic a
step), which the global pooling of every net accepts; the rest of training (and all evaluation) sees the full
size. A callback: it shrinks each batch before its forward pass, after any mixing (no random draws of its own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F

from imgclf.defaults import LOW_RES_SCALE
from imgclf.training.callbacks import INPUTS, Callback

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer


class LowRes(Callback):
    order = INPUTS + 1  # after --mixup / --cutmix, which mix the full-size batch

    def __init__(self, share: float, scale: float = LOW_RES_SCALE) -> None:
        self.share, self.scale = share, scale

    def on_forward_start(self, trainer: Trainer) -> None:
        if trainer.progress() < self.share:
            side = round(trainer.x.shape[-1] * self.scale)
            trainer.x = F.interpolate(trainer.x, size=(side, side), mode="bilinear", antialias=True)
