"""Predictions over a loader and the numbers made from them (accuracy, loss, per class, confusion)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def autocast(device: torch.device, amp_dtype: torch.dtype | None):  # noqa: ANN201 - a context manager
    """Mixed precision where asked for (bf16 or fp16), a no-op otherwise."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                   amp_dtype: torch.dtype | None = None, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 CPU logits and labels for every batch; with `tta` the flipped image's logits are averaged in."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        with autocast(x.device, amp_dtype):
            out = model(x).float()
            if tta:
                out = 0.5 * (out + model(x.flip(3)).float())
        logits.append(out.cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def summarize(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """accuracy, loss, per-class accuracy and the confusion matrix (rows: true, columns: predicted)."""
    loss, acc = loss_and_accuracy(logits, labels)
    pred = logits.argmax(1).numpy()
    true = labels.numpy()
    k = len(classes)
    confusion = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {"accuracy": acc, "loss": loss, "num_images": int(len(true)),
            "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class, strict=True)},
            "confusion_matrix": confusion.tolist(), "classes": classes}
