"""The training loss, built in one place, and what class imbalance changes in it.

`criterion_for` is the only place the Trainer's cross-entropy is made: label smoothing always, inverse class
frequency weights with --class-weights auto. Soft targets (mixup) go through the same module, since
nn.CrossEntropyLoss takes class probabilities as well as class indices. A multi-label plan (task multilabel)
gets binary cross-entropy on sigmoid outputs instead (`SmoothedBCE`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from imgclf.config import TrainConfig

IMBALANCE_RATIO = 5.0  # `imgclf train` warns when the largest class has more than this many times the smallest


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class in label order (0 for a class with none)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Float32 weight per class, proportional to 1 / its count and scaled to a mean of 1 over the classes
    present, so the loss keeps its scale (and the LR its meaning); a class with no image weighs 0."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.from_numpy(inverse * (np.count_nonzero(counts) / inverse.sum())).float()


class SmoothedBCE(nn.BCEWithLogitsLoss):
    """The multi-label loss: binary cross-entropy of each class's sigmoid, averaged over images and classes, with
    label smoothing as smoothing of the multi-hot targets, y * (1 - s) + s / 2 (each class is a choice of two,
    as cross-entropy's s / C spreads over its C classes). Computed in float32 under autocast."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float() * (1.0 - self.smoothing) + self.smoothing / 2
        return super().forward(logits.float(), targets)


def criterion_for(cfg: TrainConfig, train_labels: np.ndarray | None = None,
                  num_classes: int | None = None) -> nn.Module:
    """The training loss of `cfg`; `train_labels` (and the number of classes) are needed for class weights."""
    if cfg.task == "multilabel":  # config.resolve refused class weights for it
        return SmoothedBCE(cfg.label_smoothing)
    weight = None
    if cfg.class_weights == "auto":
        if train_labels is None or num_classes is None:
            raise ValueError("class_weights=auto needs the training labels and the number of classes")
        weight = class_weights(train_labels, num_classes)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def imbalance_warning(labels: np.ndarray, classes: list[str]) -> str | None:
    """One line naming the largest and the smallest class when they differ by more than IMBALANCE_RATIO
    times: plain cross-entropy then learns mostly the large classes."""
    counts = class_counts(labels, len(classes))
    big, small = int(counts.argmax()), int(counts.argmin())
    if counts[big] <= IMBALANCE_RATIO * counts[small]:
        return None
    return (f"imgclf: warning: imbalanced classes: {classes[big]!r} has {counts[big]} training images, "
            f"{classes[small]!r} {counts[small]} ({counts[big] / max(counts[small], 1):.1f}x); consider "
            "--class-weights auto or --sampler balanced (and --monitor macro_f1)")

