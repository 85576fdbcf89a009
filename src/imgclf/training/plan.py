"""Which fine-tuning plan a run follows: none for from-scratch, else a strategy from training.finetune."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgclf.config import TrainConfig
from imgclf.models import ImageClassifier
from imgclf.training.callbacks import Callback


@dataclass
class FinetunePlan:
    """Optimizer groups to start with, the callback that changes them, and how to rebuild them on resume."""

    strategy: str
    param_groups: list[dict[str, Any]]
    callback: Callback

    def prepare_resume(self, trainer: Any, epoch: int) -> None:
        """Bring the optimizer's groups to what they were at `epoch`, so its saved state loads."""
        prepare = getattr(self.callback, "prepare_resume", None)
        if prepare is not None:
            prepare(trainer, epoch)


def plan_finetune(model: ImageClassifier, cfg: TrainConfig) -> FinetunePlan | None:
    """None when training from scratch (no pretrained weights and no --weights)."""
    if not (cfg.pretrained or cfg.weights):
        return None
    return None
