"""Learning-rate range test: raise the LR exponentially batch by batch and watch the loss.

The loss falls slowly at tiny rates, fastest somewhere in the middle, and explodes once the rate is too
large. The suggestion sits in the steep part of the descent, safely below the minimum, which is where a
peak LR for one-cycle training belongs. The model, the optimizer state and the RNG are restored
afterwards, so a range test can run right before training without changing it. `imgclf lr-find` runs it on
the configured data and model (imgclf.commands.lr_find).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgclf.data.loaders import endless
from imgclf.defaults import LR_FIND_END, LR_FIND_START, LR_FIND_STEPS
from imgclf.errors import UserError
from imgclf.runtime import plain_step


@dataclass
class LRFindResult:
    """The sweep (lr, raw and smoothed loss per step) and the rates read off it."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    min_loss_lr: float
    steepest_lr: float
    diverged_at: float | None  # the LR at which the sweep stopped on divergence, if it did
    note: str = ""


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer,
                  loader: Iterable[tuple[torch.Tensor, torch.Tensor]], *, criterion: nn.Module | None = None,
                  start_lr: float = LR_FIND_START, end_lr: float = LR_FIND_END, steps: int = LR_FIND_STEPS,
                  beta: float | None = None, diverge_factor: float = 4.0,
                  amp_dtype: torch.dtype | None = None) -> LRFindResult:
    """Sweep the LR from `start_lr` to `end_lr` over `steps` batches; restore everything afterwards.

    With several parameter groups (discriminative fine-tuning LRs) each group keeps its ratio to the
    largest group's LR; the rates reported are the largest group's. An exponential moving average of
    the loss (`beta`; by default a time constant of steps/15) decides when to stop; the curve that is
    plotted and read is a centred Gaussian smoothing, which, unlike the moving average, does not lag
    to the right and so does not push the suggestion towards too high a rate.
    """
    if beta is None:
        beta = 1.0 - 1.0 / max(3.0, steps / 15)
    if not 0 < start_lr < end_lr:
        raise UserError(f"the sweep needs 0 < start lr < end lr, got {start_lr:g} and {end_lr:g}")
    if steps < 5:
        raise UserError(f"the sweep needs at least 5 steps, got {steps}")
    criterion = criterion or nn.CrossEntropyLoss()
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    base = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(base) if max(base) > 0 else 1.0
    ratios = [b / top if max(base) > 0 else 1.0 for b in base]
    schedule = np.geomspace(start_lr, end_lr, steps)  # exact at both ends
    lrs: list[float] = []
    losses: list[float] = []
    avg, best, diverged_at = 0.0, math.inf, None
    try:
        model.train()
        batches = endless(loader)
        for i in range(steps):
            lr = float(schedule[i])
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            x, y = next(batches)
            value = float(plain_step(model, optimizer, criterion, x, y, amp_dtype).detach().float())
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                diverged_at = lr
                break
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (i + 1))
            best = min(best, smooth)
            if i >= 5 and smooth > diverge_factor * best:
                diverged_at = lr
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(saved_rng)
        if saved_cuda_rng is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rng)
        model.train(was_training)
    smoothed = centered_smooth(losses, sigma=max(1.0, steps / 30))
    suggested, min_lr, steepest, note = suggest(lrs, smoothed, start_lr)
    return LRFindResult(lrs, losses, smoothed, suggested, min_lr, steepest, diverged_at, note)


def centered_smooth(values: list[float], sigma: float) -> list[float]:
    """Gaussian-weighted average of each point's neighbours (non-finite values get no weight)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return []
    ok = np.isfinite(v)
    idx = np.arange(len(v))
    weights = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2) * ok[None, :]
    total = weights.sum(axis=1)
    out = np.where(total > 0, (weights * np.where(ok, v, 0.0)[None, :]).sum(axis=1) / np.maximum(total, 1e-12),
                   np.nan)
    out[~ok] = np.nan
    return out.tolist()


def suggest(lrs: list[float], smoothed: list[float], start_lr: float | None = None) -> tuple[float, float, float, str]:
    """(suggested, lowest-loss, steepest-descent) rates and a note when the curve was unhelpful.

    The steepest descent is looked for only after the loss has started to fall (10 % of the way from
    its starting level to its minimum), which keeps the noisy first batches from deciding. The
    suggestion is that rate, kept between a thirtieth and a third of the lowest-loss rate: near the
    minimum the loss is about to blow up, far below it training is needlessly slow.
    """
    s = np.asarray(smoothed, dtype=float)
    lr = np.asarray(lrs, dtype=float)
    finite = np.isfinite(s)
    if finite.sum() < 3:
        first = float(lr[0]) if len(lr) else float(start_lr or 1e-3)
        return first, first, first, "The loss diverged almost at once; start the sweep lower (--start-lr)."
    s, lr = s[finite], lr[finite]
    m = int(np.argmin(s))
    min_lr = float(lr[m])
    start_level = float(np.median(s[: max(1, min(5, m + 1))]))
    drop = start_level - float(s[m])
    note = ""
    if m < 2 or drop <= 0.01 * abs(start_level):
        note = ("The loss hardly fell during the sweep; the suggestion is a tenth of the lowest-loss rate. "
                "Try a wider range or more steps.")
        steepest = min_lr
        suggested = min_lr / 10
    else:
        began = int(np.argmax(s[: m + 1] <= start_level - 0.1 * drop))
        lo = min(began, m - 1)
        slope = np.gradient(s[: m + 1], np.log(lr[: m + 1]))
        steepest = float(lr[lo + int(np.argmin(slope[lo: m + 1]))])
        suggested = float(np.clip(steepest, min_lr / 30, min_lr / 3))
    if m == len(s) - 1 and not note:
        note = "The loss was still falling at the end of the sweep; a larger --end-lr would show the minimum."
    suggested = float(np.clip(suggested, lr[0], lr[-1]))
    return suggested, min_lr, steepest, note
