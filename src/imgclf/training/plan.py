"""The fine-tuning plan of a run: optimizer groups and the callback that freezes and unfreezes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgclf.config import TrainConfig
from imgclf.models import ImageClassifier
from imgclf.training.callbacks import Callback
from imgclf.training.finetune import finetune_callback, param_groups
from imgclf.training.optim import decay_split


@dataclass
class FinetunePlan:
    """Optimizer groups (discriminative LRs, head last) and the callback that freezes and unfreezes."""

    param_groups: list[dict[str, Any]]
    callback: Callback

    def prepare_resume(self, trainer: Any, epoch: int) -> None:
        """Bring freezing to what it was at `epoch` before the optimizer state loads."""
        prepare = getattr(self.callback, "prepare_resume", None)
        if prepare is not None:
            prepare(trainer, epoch)


def plan_finetune(model: ImageClassifier, cfg: TrainConfig) -> FinetunePlan | None:
    """None when training from scratch; else the resolved strategy's groups and callback."""
    if cfg.strategy == "scratch":
        return None
    groups = param_groups(model, cfg.strategy, cfg.lr, cfg.weight_decay)
    return FinetunePlan(groups, finetune_callback(cfg.strategy, cfg))


def optimizer_groups(model: ImageClassifier, cfg: TrainConfig, plan: FinetunePlan | None) -> list[dict[str, Any]]:
    """The plan's groups when fine-tuning, else every parameter at one LR (no decay on norms and biases)."""
    return plan.param_groups if plan else decay_split(model.parameters(), cfg.lr, cfg.weight_decay)
