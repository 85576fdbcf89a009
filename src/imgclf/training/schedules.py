"""Learning-rate schedules as a multiplier of the peak LR over training progress in [0, 1].

Progress, not epochs: a time-budgeted run anneals to its end exactly when the budget runs out.
"""

from __future__ import annotations

import math


def lr_multiplier(schedule: str, progress: float, warmup: float = 0.0) -> float:
    """Multiplier of the peak LR at `progress` (0 = start, 1 = end); `warmup` is a share of training."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "onecycle":  # linear up over the first 25 %, linear down to zero (airbench's triangle)
        peak = warmup or 0.25
        return p / peak if p < peak else max(0.0, (1.0 - p) / (1.0 - peak))
    if warmup > 0 and p < warmup:
        return p / warmup
    q = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if schedule == "linear":
        return 1.0 - q
    if schedule == "step":  # x0.1 at 50 % and 75 %
        return 0.01 if q >= 0.75 else 0.1 if q >= 0.5 else 1.0
    return 1.0  # constant
