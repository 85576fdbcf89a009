"""What every engine hands `train()`: the delivered weights, how to score them, and its own figures.

imgclf has two engines behind one `imgclf train`: the Trainer (the loop, with callbacks; training/run.py
`fit_loop`) and the speed run (whole epochs on the device; training/speedrun.py `fit_speedrun`). Each takes the
resolved plan, the splits, the device and the RunDir, writes the plan and its checkpoints through the RunDir,
and returns a `Fitted`; `train()` then scores val and test the same way for both and writes the predictions
and metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf.config import TrainConfig

# A split -> (the logits the run reports, with TTA when the plan asks; labels; the plain logits beside TTA
# logits, None without TTA, so what the views add is measured rather than assumed).
Scorer = Callable[[Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


@dataclass
class Fitted:
    model: torch.nn.Module  # the delivered weights (what best.pt or last.pt holds), taking [0, 1] images
    config: TrainConfig  # the plan as the engine ran it: what config.yaml records
    logits: Scorer
    figures: dict[str, Any]  # the engine's own lines of metrics.json: seconds, steps, epochs, best epoch...
    history: list[dict[str, Any]] = field(default_factory=list)
