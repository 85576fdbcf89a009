"""Optimizers: SGD with Nesterov or AdamW, weight decay off for norms and biases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig


def decay_split(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                only_trainable: bool = True) -> list[dict[str, Any]]:
    """Two groups at one LR: matrices and kernels decay; norm weights and biases (1-d) do not.
    only_trainable=False keeps frozen parameters, for groups that must outlive an unfreeze (resume)."""
    params = [p for p in params if p.requires_grad or not only_trainable]
    groups = [{"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over `groups`, for a config that went through `imgclf.config.resolve`."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)
