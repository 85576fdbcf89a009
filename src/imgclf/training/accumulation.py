"""--accumulate K: gradient accumulation, the strategy the Trainer's step follows.

The epoch's loader batches come in groups of K, one optimizer step a group (the last group holds the rest when
they do not divide). The step weights each batch's loss 1/len(group), so the summed gradients equal one batch
of them all (BatchNorm still sees each batch alone); under DDP the gradients are all-reduced once a step, on its
last batch, and the LR schedule counts optimizer steps.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


class GradientAccumulation:
    def __init__(self, every: int) -> None:
        self.every = every

    def groups(self, batches: Iterable[Batch]) -> Iterator[list[Batch]]:
        """The batches of one optimizer step at a time (taken from the loader before the step runs)."""
        batches = iter(batches)
        while group := list(itertools.islice(batches, self.every)):
            yield group

    def steps(self, batches: int) -> int:
        """Optimizer steps in an epoch of `batches` loader batches."""
        return -(-batches // self.every)

    @staticmethod
    def sync(model: nn.Module | Any, last: bool) -> contextlib.AbstractContextManager:
        """The context of one batch's forward and backward: under DDP (a model with `no_sync`) gradients are
        all-reduced on the step's last batch only."""
        if last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()
