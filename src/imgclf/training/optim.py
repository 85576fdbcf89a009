"""Optimizers: SGD with Nesterov or AdamW, weight decay off for norms and biases."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig

DEFAULT_LR = {"sgd": 0.1, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


def resolved_lr(cfg: TrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer or "sgd"]


def resolved_weight_decay(cfg: TrainConfig) -> float:
    return cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WEIGHT_DECAY[cfg.optimizer or "sgd"]


def decay_split(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups at one LR: matrices and kernels decay; norm weights and biases (1-d) do not."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=resolved_lr(cfg), momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=resolved_lr(cfg))
