"""What more training time buys: validation accuracy against training seconds for each variant of a
comparison, a saturating curve fitted to those points, and what the curve says about 2x and 4x the budget.

The estimate is an extrapolation and is labelled as one. Its points are one run's progress under a schedule
sized to the whole budget: the LR anneals towards the end, which lifts the last epochs above the curve the
earlier ones trace. A run given 2x the time would get that lift at its own end, so the estimate for k x the
budget is the accuracy measured at the budget plus the gain the fitted curve predicts from 1x to k x
(`extrapolate` with `anchor`). Read 2x and 4x as "about this much", not as a measurement.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from imgclf.evaluation.diagnosis import read_history
from imgclf.reporting import figures as figs

MIN_POINTS = 4  # a 3-parameter curve needs more points than parameters to say anything
MIN_SPAN = 2.0  # ... spread over at least this ratio of training seconds (last / first)
FACTORS = (2, 4)  # the budgets the estimate speaks about, as multiples of the measured one
LEVEL = 0.005  # curves closer than half a point are level: no crossing is read into their noise
NOISE_SE = 2.0  # ... nor closer than this many standard errors of a difference on the validation images: on 30
                # photos (flowers-mini) that is 19 points, and 25 of 30 right for each side said nothing
OVERTAKE_FACTOR = 32  # how far past the budget the report looks for when the trailing curve would catch up


@dataclass(frozen=True)
class SaturatingFit:
    """acc(t) = a - b * t**(-c) (`method` "power"), or a + b * ln(t) ("log-linear", c = 0, where scipy is
    missing or the power fit fails); evaluated within [0, 1]."""

    a: float
    b: float
    c: float
    method: str
    points: int

    def __call__(self, t: float | np.ndarray) -> np.ndarray:
        t = np.maximum(np.asarray(t, dtype=float), 1e-9)
        raw = self.a + self.b * np.log(t) if self.method == "log-linear" else self.a - self.b * t ** (-self.c)
        return np.clip(raw, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "c": self.c, "method": self.method, "points": self.points}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SaturatingFit:
        return cls(float(d["a"]), float(d["b"]), float(d["c"]), str(d["method"]), int(d["points"]))


def _power(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a - b * t ** (-c)


def fit_log_linear(seconds: Sequence[float], accuracy: Sequence[float]) -> SaturatingFit:
    """Least squares acc = a + b ln(t): the fallback, which does not saturate (the cap at 1.0 does)."""
    t, y = np.asarray(seconds, dtype=float), np.asarray(accuracy, dtype=float)
    b, a = np.polyfit(np.log(t), y, 1)
    return SaturatingFit(float(a), float(b), 0.0, "log-linear", len(t))


def fit_power_fixed(x: Sequence[float], accuracy: Sequence[float], c: float) -> SaturatingFit:
    """Least squares acc = a - b x**(-c) with the exponent `c` given: the 2-parameter form for two points, where
    a free `c` would pass through them any number of ways. b >= 0 (more never hurts): points that fall give a
    flat line at their mean."""
    x, y = np.asarray(x, dtype=float), np.asarray(accuracy, dtype=float)
    slope, a = np.polyfit(x ** (-c), y, 1)  # y = a + slope * x^-c, so b = -slope
    if slope > 0:
        return SaturatingFit(float(y.mean()), 0.0, c, "power, c fixed", len(x))
    return SaturatingFit(float(a), float(-slope), c, "power, c fixed", len(x))


def enough_points(seconds: Sequence[float] | np.ndarray, min_points: int = MIN_POINTS,
                  min_span: float = MIN_SPAN) -> bool:
    """Whether positive times can carry a curve: `min_points` distinct ones, spread over `min_span` (last / first)."""
    t = np.asarray(seconds, dtype=float)
    return len(np.unique(t)) >= min_points and t.max() >= min_span * t.min()


def fit_saturating(seconds: Sequence[float], accuracy: Sequence[float], min_points: int = MIN_POINTS,
                   min_span: float = MIN_SPAN) -> SaturatingFit | None:
    """Fit acc(t) = a - b * t**(-c) to measured (training seconds, accuracy) points (or any positive x: the data
    curves fit it in training images, with their own `min_points` and `min_span`).

    Bounds keep the curve a saturating one: the asymptote `a` within [0, 1] (no accuracy above 100 %), `b` >= 0
    (accuracy never falls with more time) and `c` in [0.001, 5]. Fitted with scipy.optimize.curve_fit where
    scipy is installed; without it, or when that fit does not converge, a log-linear fit (acc = a + b ln t)
    stands in. None when the points cannot carry a fit: fewer than `min_points` at distinct positive times, or
    spread over less than `min_span` (last / first). Non-finite points are dropped. With exactly 3 points that
    rise and flatten the curve passes through them (points that dip get the closest rising curve): scipy's
    warning that the covariance is then undefined is expected, not a failure.
    """
    t = np.asarray(seconds, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y) & (t > 0)
    t, y = t[keep], y[keep]
    if not enough_points(t, min_points, min_span):
        return None
    try:
        from scipy.optimize import OptimizeWarning, curve_fit
    except ImportError:
        return fit_log_linear(t, y)
    a0 = float(min(0.999, max(y.max() + 0.02, 0.01)))
    c0 = 0.5
    b0 = max(a0 - float(y[np.argmin(t)]), 1e-3) * float(t.min()) ** c0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error" if len(t) > 3 else "ignore", OptimizeWarning)
            (a, b, c), _ = curve_fit(_power, t, y, p0=(a0, b0, c0), bounds=([0.0, 0.0, 1e-3], [1.0, np.inf, 5.0]),
                                     maxfev=20_000)
    except (RuntimeError, ValueError, OptimizeWarning):
        return fit_log_linear(t, y)
    return SaturatingFit(float(a), float(b), float(c), "power", len(t))


def extrapolate(fit: SaturatingFit, budget: float, factors: Sequence[float] = FACTORS,
                anchor: float | None = None) -> dict[str, float]:
    """{"2x": ..., "4x": ...}: the fitted curve at `factor` x `budget` seconds, within [0, 1]. With `anchor` (the
    accuracy measured at the budget), the anchor plus the gain the curve predicts from the budget to `factor` x
    it: the end-of-schedule lift the measured point holds above the curve is kept, not lost."""
    shift = 0.0 if anchor is None else anchor - float(fit(budget))
    return {f"{factor:g}x": float(np.clip(fit(factor * budget) + shift, 0.0, 1.0)) for factor in factors}


def shifted(fit: SaturatingFit, by: float) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted curve moved up by `by` (the anchored continuation past the budget), within [0, 1]."""
    return lambda t: np.clip(fit(t) + by, 0.0, 1.0)


Curve = Callable[[np.ndarray], np.ndarray]


def crossing(first: Curve, second: Curve | float, start: float, end: float,
             tolerance: float = LEVEL) -> float | None:
    """The first time in [start, end] where `first` and `second` (curves, or a fixed accuracy) swap places,
    each ahead by more than `tolerance` on either side (a log grid, refined by bisection); None where one
    stays ahead, or they run level, throughout."""
    grid = np.geomspace(max(start, 1e-3), max(end, start * 1.001, 1e-3), 400)

    def diff(t: np.ndarray) -> np.ndarray:
        other = np.full_like(t, float(second)) if isinstance(second, (int, float)) else second(t)
        return first(t) - other

    d = diff(grid)
    apart = np.nonzero(np.abs(d) > tolerance)[0]
    swaps = [(i, j) for i, j in zip(apart[:-1], apart[1:], strict=True) if np.sign(d[i]) != np.sign(d[j])]
    if not swaps:
        return None
    i, j = swaps[0]
    lo, hi, ahead = grid[i], grid[j], np.sign(d[i])
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if np.sign(diff(np.array([mid]))[0]) == ahead:
            lo = mid
        else:
            hi = mid
    return float(math.sqrt(lo * hi))


# -- reading a comparison's runs -------------------------------------------------------------------------------

def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def history_rows(run_dir: Path) -> list[dict[str, Any]]:
    """history.csv's rows, on the clock a run's budget counts: a staged fine-tuning run's history starts its
    clock after the head phase, so that phase's seconds (metrics.json) are added. Empty without a history."""
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    offset = float((_metrics(run_dir).get("staged") or {}).get("seconds") or 0.0)
    return [{**row, "seconds": offset + row["seconds"]} for row in read_history(path)]


def run_points(run_dir: Path) -> list[tuple[float, float]]:
    """(training seconds, validation accuracy) per epoch of a run directory, on `history_rows`' clock."""
    return [(row["seconds"], row["val_acc"]) for row in history_rows(run_dir)
            if np.isfinite(row.get("seconds", math.nan)) and np.isfinite(row.get("val_acc", math.nan))]


def head_points(run_dir: Path) -> list[tuple[float, float]]:
    """A staged fine-tuning run's head-phase points (heads on shares of its features: training/staged.py
    head_curve), on the same clock as `run_points`; empty for other runs."""
    curve = ((_metrics(run_dir).get("staged") or {}).get("head") or {}).get("curve") or []
    return [(float(t), float(acc)) for t, acc in curve]


def val_images(run_dir: Path) -> int | None:
    """How many validation images scored a run's epochs (the supports of its per-class validation metrics)."""
    per_class = _metrics(run_dir).get("val_per_class") or {}
    return sum(int(c.get("support") or 0) for c in per_class.values()) or None


def partial_depth(run_dir: Path) -> tuple[int, int] | None:
    """(layer groups unfrozen, groups) of a staged fine-tuning run that left some frozen; else None. Such a run's
    plan was sized to its budget: given more time the plan unfreezes more, which its time curve cannot show."""
    staged = _metrics(run_dir).get("staged") or {}
    depth, groups = staged.get("unfreeze_groups"), staged.get("groups")
    return (int(depth), int(groups)) if depth is not None and groups and depth < groups else None


def time_series(folder: Path, summaries: Sequence[Mapping[str, Any]]) -> dict[str, list[list[tuple[float, float]]]]:
    """Per summary (variant at the full fraction): each of its runs' (seconds, val accuracy) points: its epochs,
    led by the head phase's points where the epochs of all its runs are too few to fit (a fine-tuned run on
    CIFAR-10 on a CPU fits one epoch). Only then: on a few hundred photos the head is near its best within seconds,
    and its points would flatten a curve the epochs still climb."""
    series = {}
    for s in summaries:
        dirs = [folder / "runs" / name for name in s["run_names"]]
        runs = [run_points(d) for d in dirs]
        if not enough_points([t for run in runs for t, _ in run if t > 0]):
            runs = [head_points(d) + run for d, run in zip(dirs, runs, strict=True)]
        series[s["variant"]] = runs
    return series


def time_estimates(folder: Path, summaries: Sequence[Mapping[str, Any]],
                   budget: float | None) -> dict[str, dict[str, Any]]:
    """Per variant: the curve fitted to all its runs' points (pooled over seeds), and the estimated validation
    accuracy at 2x and 4x the budget (the comparison's, or the variant's mean training seconds under --epochs).
    Where the points cannot carry a fit, the estimates are None and `note` says why."""
    out: dict[str, dict[str, Any]] = {}
    for variant, runs in time_series(folder, summaries).items():
        summary = next(s for s in summaries if s["variant"] == variant)
        points = [p for run in runs for p in run]
        spent = float(budget or summary.get("train_seconds") or max((p[0] for p in points), default=0.0))
        fit = fit_saturating([p[0] for p in points], [p[1] for p in points]) if points else None
        entry: dict[str, Any] = {"budget_seconds": spent, "points": len(points), "fit": None,
                                 "first_seconds": min((p[0] for p in points), default=None),
                                 "measured_val_accuracy": summary.get("val_accuracy")}
        measured = summary.get("val_accuracy")
        if fit is None or spent <= 0:
            entry.update({f"{f:g}x": None for f in FACTORS})
            epochs = max((len(run) for run in runs), default=0)
            entry["note"] = (f"not estimated: {epochs} epoch{'s' if epochs != 1 else ''} per run, too few points "
                             f"in time to fit a curve (it needs {MIN_POINTS} or more, spread over at least "
                             f"{MIN_SPAN:g}x in seconds)")
        else:
            entry.update(extrapolate(fit, spent, anchor=measured))
            entry["fit"] = fit.to_dict()
            entry["fit_at_budget"] = float(fit(spent))
            entry["note"] = ("estimate: the accuracy measured at the budget plus the gain a curve fitted to the run's "
                             "validation accuracy predicts")
        entry["val_images"] = val_images(folder / "runs" / summary["run_names"][0])
        depths = [d for d in (partial_depth(folder / "runs" / name) for name in summary["run_names"]) if d]
        if depths and entry["fit"]:
            depth, groups = min(depths)
            entry["floor"] = True
            entry["note"] += (f"; a floor: in this budget it unfroze {depth} of {groups} layer groups, and a "
                              "longer one unfreezes more, a step the curve cannot foresee")
        out[variant] = entry
    return out


def _curves(entry: Mapping[str, Any]) -> tuple[Curve, Curve]:
    """A variant's curve within its measured budget (the fit) and past it (the fit anchored at the accuracy
    measured at the budget); a variant without a fit is flat at that accuracy in both."""
    measured = entry.get("measured_val_accuracy")
    if not entry.get("fit"):
        level = float(measured or 0.0)
        flat: Curve = lambda t: np.full_like(np.asarray(t, dtype=float), level)  # noqa: E731
        return flat, flat
    fit = SaturatingFit.from_dict(entry["fit"])
    shift = 0.0 if measured is None else float(measured) - float(fit(entry["budget_seconds"]))
    return fit, shifted(fit, shift)


def crossing_text(estimates: Mapping[str, Mapping[str, Any]]) -> str:
    """Where the first two variants' curves cross within the measured budget (their fits), whether they would
    cross up to 4x the budget (the anchored estimates), or that one leads throughout. A variant without a fit
    counts as flat at its measured validation accuracy."""
    if len(estimates) < 2:
        return ""
    (na, ea), (nb, eb) = list(estimates.items())[:2]
    if not ea.get("fit") and not eb.get("fit"):
        return "Neither curve has enough points in time to fit, so where they would cross is not estimated."
    flat = "".join(f" ({n} has too few points to fit: taken as flat at its measured "
                   f"{100 * float(e.get('measured_val_accuracy') or 0.0):.0f}%.)" for n, e in ((na, ea), (nb, eb))
                   if not e.get("fit"))
    (raw_a, past_a), (raw_b, past_b) = _curves(ea), _curves(eb)
    tol, noise = level_tolerance(ea, eb)
    budget = max(ea["budget_seconds"], eb["budget_seconds"])
    end = max(FACTORS) * budget
    start = min(max(e.get("first_seconds") or 0.0 for e in (ea, eb)) or budget / 100, budget)  # both measured
    within = crossing(raw_a, raw_b, start, budget, tol) if start < budget else None

    def joined(raw: Curve, past: Curve) -> Curve:  # the fit up to the budget, the anchored estimate past it
        return lambda t: np.where(np.asarray(t) <= budget, raw(t), past(t))

    # searched on the joined curves from the last crossing: curves that meet just at the budget (equal measured
    # accuracies, 25 of 30 photos each) and part after it cross there, which neither piece alone shows
    after = crossing(joined(raw_a, past_a), joined(raw_b, past_b), within if within is not None else start, end,
                     tol)
    beyond = after if after is not None and (within is None or after > 1.01 * within) else None

    def leader(a: Curve, b: Curve, t: float) -> str:
        return na if float(a(np.array([t]))[0]) >= float(b(np.array([t]))[0]) else nb

    parts, ahead = [], None  # ahead: who leads past the budget when the curves do not cross there
    if within is not None:
        parts.append(f"The fitted curves cross at about {within:.0f} s, within the measured budget.")
    if beyond is not None:
        parts.append(f"With more time they would cross at about {beyond:.0f} s (an estimate); after that "
                     f"{leader(past_a, past_b, min(1.5 * beyond, end))} leads.")
    elif within is not None:
        ahead = leader(past_a, past_b, end)
        parts.append(f"From the budget to {max(FACTORS)}x it ({end:.0f} s) {ahead} stays ahead (an estimate).")
    else:
        grid = np.geomspace(max(start, 1e-3), end, 60)
        low, high = grid[grid <= budget], grid[grid >= budget]
        gaps = np.concatenate([raw_a(low) - raw_b(low), past_a(high) - past_b(high)])
        apart = gaps[np.abs(gaps) > tol]
        if not len(apart):
            parts.append(f"The curves run level (within {100 * tol:.1f} points{noise}) from {start:.0f} s to "
                         f"{max(FACTORS)}x the budget ({end:.0f} s): more time does not separate them.")
        else:
            ahead = na if apart[0] > 0 else nb  # where they part by more than the noise, always the same one
            parts.append(f"The curves do not cross between {start:.0f} s and {max(FACTORS)}x the budget "
                         f"({end:.0f} s, past the budget an estimate): {ahead} leads throughout.")
    if ahead is not None and (eb if ahead == na else ea).get("fit"):  # a flat stand-in says nothing of catching up
        parts.append(overtake_text(ahead, nb if ahead == na else na, {na: past_a, nb: past_b}, end, budget, tol))
    floors = [n for n, e in ((na, ea), (nb, eb)) if e.get("floor")]
    if floors:
        parts.append(f"{' and '.join(floors)}'s estimate is a floor: its fine-tuning plan was sized to this budget "
                     "and would unfreeze more layers with more time.")
    return " ".join(parts) + flat


def level_tolerance(ea: Mapping[str, Any], eb: Mapping[str, Any]) -> tuple[float, str]:
    """How far apart two variants' curves must be to count as apart: LEVEL, or NOISE_SE standard errors of a
    difference of two accuracies on the fewer validation images of the two (`val_images`), whichever is larger;
    with the words that say where a noise bound came from."""
    images = min((int(e["val_images"]) for e in (ea, eb) if e.get("val_images")), default=0)
    p = float(np.mean([float(e.get("measured_val_accuracy") or 0.0) for e in (ea, eb)]))
    noise = NOISE_SE * math.sqrt(2 * p * (1 - p) / images) if images else 0.0
    return (noise, f", the noise of {images} validation images") if noise > LEVEL else (LEVEL, "")


def overtake_text(ahead: str, behind: str, curves: Mapping[str, Curve], start: float, budget: float,
                  tolerance: float = LEVEL) -> str:
    """How long the variant `behind` would need to overtake `ahead`, by their anchored `curves`, looking from
    `start` to OVERTAKE_FACTOR x the budget; or that by them it would not, with where each stands there (level:
    within `tolerance`)."""
    end = OVERTAKE_FACTOR * budget
    when = crossing(curves[behind], curves[ahead], start, end, tolerance)
    if when is not None:
        return (f"By the fitted curves {behind} would need about {when:.0f} s of training ({when / budget:.0f}x the "
                f"budget) to overtake {ahead}: a long extrapolation, to be read as an order of magnitude.")
    level = {name: 100 * float(curves[name](np.array([end]))[0]) for name in (ahead, behind)}
    if abs(level[ahead] - level[behind]) <= 100 * tolerance:
        return (f"By the fitted curves {behind} would at most draw level with {ahead} by {OVERTAKE_FACTOR}x the "
                f"budget ({end:.0f} s: about {level[behind]:.0f}% vs {level[ahead]:.0f}%, within "
                f"{100 * tolerance:.1f} points; an extrapolation).")
    return (f"By the fitted curves {behind} would not overtake {ahead} even with {OVERTAKE_FACTOR}x the budget "
            f"({end:.0f} s: about {level[behind]:.0f}% vs {level[ahead]:.0f}%, an extrapolation): on this machine "
            f"and data {ahead} is the better use of the time.")


@figs.styled
def time_curves(series: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
                estimates: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Validation accuracy against training seconds per variant (each seed's run a thin line), the fitted
    curve dashed out to 4x the budget, and the 2x / 4x estimates marked."""
    fig = figs.new_figure(figsize=(9, 4.6))
    ax = fig.subplots()
    budget = max((e["budget_seconds"] for e in estimates.values()), default=0.0)
    # at each factor the leading estimate's label goes above its marker and the others' below, so two close
    # estimates' labels part instead of meeting between them
    fitted = [n for n in series if (estimates.get(n) or {}).get("fit")]
    leader = {f: max(fitted, key=lambda n: estimates[n][f"{f:g}x"]) for f in FACTORS} if fitted else {}
    for i, (name, runs) in enumerate(series.items()):
        color = figs.PALETTE[i % len(figs.PALETTE)]
        est = estimates.get(name) or {}
        for j, run in enumerate(r for r in runs if r):
            xs, ys = zip(*run, strict=True)
            ax.plot(xs, ys, color=color, lw=1.2, alpha=0.75, marker="o", ms=3 if len(run) > 1 else 5,
                    label=None if j else f"{name} (measured{'' if est.get('fit') else '; too few points to fit'})")
        if est.get("fit"):
            fit, past = _curves(est)
            spent = est["budget_seconds"]
            first = min((p[0] for run in runs for p in run), default=1.0)
            t = np.geomspace(max(min(first, spent), 1e-3), spent, 100)
            ax.plot(t, fit(t), color=color, ls="--", lw=1.6, label=f"{name} (fitted)")
            t = np.geomspace(spent, max(FACTORS) * spent, 100)
            ax.plot(t, past(t), color=color, ls=":", lw=2.0,
                    label=f"{name} (estimate: measured at the budget + the fit's gain)")
            for factor in FACTORS:
                x, y = factor * est["budget_seconds"], est[f"{factor:g}x"]
                ax.plot([x], [y], marker="D", ms=6, color=color, mfc="white", mew=1.6)
                ax.annotate(f"{factor}x: ~{100 * y:.0f}%", (x, y), textcoords="offset points",
                            xytext=(-6, 9) if leader[factor] == name else (-6, -16),
                            ha="right" if factor == max(FACTORS) else "left", fontsize=8.5, color=color)
    if budget:
        ax.axvline(budget, color=figs.MUTED, ls=":", lw=1.2)
        ax.annotate("budget", (budget, 0.02), textcoords="offset points", xytext=(3, 0), fontsize=8.5,
                    color=figs.MUTED)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation accuracy")
    ax.set_title("What more time buys (past the budget: an estimate)")
    ax.legend(loc="lower right", fontsize=8.5)
    fig.tight_layout()
    return fig
