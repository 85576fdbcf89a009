"""--mixup / --cutmix: whole training batches blended with their mirror order (timm's Mixup, mode "batch").

The targets come back as class probabilities without label smoothing: the training criterion
(imgclf.training.losses, nn.CrossEntropyLoss with label_smoothing) smooths probability targets the same way it
smooths class indices, target * (1 - s) + s / C, which is exactly timm's smoothed mixed target, so one loss serves
mixed and plain batches and keeps its class weights. Random draws come from NumPy's global generator, whose
state every checkpoint holds, so a resumed run mixes as the straight run would. The mixer is a callback: it mixes
each training batch before its forward pass (first of the callbacks that change batches, see callbacks.INPUTS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from timm.data import Mixup

from imgclf.config import TrainConfig
from imgclf.training.callbacks import INPUTS, Callback

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer


class BatchMixer(Callback):
    """Mixes a float NCHW batch (in place: every loader batch is a fresh tensor) and its integer labels into
    (mixed batch, soft targets); as a callback, the trainer's batch before each forward pass."""

    order = INPUTS

    def __init__(self, mixup: float, cutmix: float, switch: float, num_classes: int) -> None:
        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, switch_prob=switch, mode="batch",
                         label_smoothing=0.0, num_classes=num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) < 2:  # nothing to mix with: the plain label (the criterion takes either form)
            return x, y
        if len(x) % 2:  # timm pairs image i with n-1-i; an odd batch (a tiny set, a DDP slice) drops its last one
            x, y = x[:-1], y[:-1]
        return self.mix(x, y)

    def on_forward_start(self, trainer: Trainer) -> None:
        trainer.x, trainer.y = self(trainer.x, trainer.y)


def batch_mixer(cfg: TrainConfig, num_classes: int) -> BatchMixer | None:
    """The mixer a config asks for, or None when both alphas are 0."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    return BatchMixer(cfg.mixup, cfg.cutmix, cfg.mix_switch, num_classes)


def dominant_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices as they are, or each mixed target's largest share: train accuracy under mixing counts a
    prediction right when it names the class that covers most of the (blended) image."""
    return targets if targets.ndim == 1 else targets.argmax(1)
