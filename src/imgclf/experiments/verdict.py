"""A comparison's verdict in words: who wins and by how much against the noise (`ranking`), or how much of
the reference's train/val gap each variant closes (`gap`).

With --seeds N each variant ran N times; the verdict reads the means over seeds, and its standard error
counts both the spread over seeds and the binomial noise of the evaluation images.

The verdict is judged here, where the runs are made, and stored in comparison.json; the report only
shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from imgclf.reporting.comparison import score, summarize_seeds


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def gap_shares(records: list[dict[str, Any]], reference: str) -> None:
    """Add gap_closed (share of the reference's gap each variant removed) and test_gain, per fraction, each
    run against the reference's run with the same seed."""
    for fraction, seed in sorted({(r["train_fraction"], r.get("seed") or 0) for r in records}):
        group = [r for r in records if r["train_fraction"] == fraction and (r.get("seed") or 0) == seed]
        ref = next((r for r in group if r["variant"] == reference), None)
        if ref is None:
            continue
        for r in group:
            gap0 = ref["train_val_gap"]
            r["gap_closed"] = (gap0 - r["train_val_gap"]) / gap0 if gap0 > 1e-9 else None
            test_key = "test_accuracy" if r["test_accuracy"] is not None else "val_accuracy"
            r["test_gain"] = r[test_key] - ref[test_key]


def _noise(a: float, b: float, n: int) -> float:
    """Standard error of a difference of two accuracies measured on n images each (binomial)."""
    a, b = (a * n + 1) / (n + 2), (b * n + 1) / (n + 2)  # plus-two: no zero error at 0 % or 100 %
    return math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


def difference_se(win: dict[str, Any], lose: dict[str, Any], split: str, n_eval: int) -> float:
    """Standard error of the difference of two seed means (summaries from `summarize_seeds`): the variance of
    each mean over its seeds (std^2 / seeds; none with one seed) plus the binomial variance of the difference
    of two accuracies on `n_eval` images, which repeating seeds on the same images does not average away."""
    seed_var = sum((s["std"] or 0.0) ** 2 / s["runs"] for s in (win, lose) if s.get("std") is not None)
    return math.sqrt(seed_var + _noise(score(win, split), score(lose, split), n_eval) ** 2)


def seeds_phrase(summaries: Sequence[dict[str, Any]]) -> str:
    """'3 seeds each', '3 and 2 seeds' (a run diverged), or '1 seed each'."""
    counts = sorted({s["runs"] for s in summaries}, reverse=True)
    if len(counts) == 1:
        return f"{counts[0]} seed{'s' if counts[0] > 1 else ''} each"
    return " and ".join(str(c) for c in counts) + " seeds"


def verdict_text(records: list[dict[str, Any]], judge: str, reference: str, split: str, n_eval: int,
                 combined: Sequence[str] = ()) -> str:
    """A few plain sentences: who wins, by how much (against the noise of `n_eval` images), at what cost.

    `judge` is the study's (`ranking` or `gap`); `combined` names variants left out of "the best single one".
    Runs that repeat a variant with other seeds are read as their mean (`summarize_seeds`).
    """
    records = list(summarize_seeds(records, split).values())
    repeated = max(r["runs"] for r in records) > 1
    if judge == "gap":
        text = _gap_verdict(records, reference, split, n_eval, combined)
        return text + (f" Means over {seeds_phrase(records)}." if repeated else "")
    full = max(r["train_fraction"] for r in records)
    group = sorted([r for r in records if r["train_fraction"] == full], key=lambda r: -score(r, split))
    if len(group) < 2:
        r = group[0]
        return (f"Only one variant ({r['name']}): {_pts(score(r, split))}% {split} accuracy in "
                f"{r['train_seconds']:.0f} s ({seeds_phrase(group)}).")
    win, lose = group[0], group[1]
    a, b = score(win, split), score(lose, split)
    diff = a - b
    se = difference_se(win, lose, split, n_eval)
    if repeated:
        spread = " and ".join(f"±{_pts(r['std'])}" for r in (win, lose) if r["std"] is not None)
        seeds = (f", means over {seeds_phrase(group)}" + (f" (spread {spread} points)" if spread else ""))
        against = f"counting seed variance and the noise of {n_eval:,} {split} images"
    else:
        seeds, against = "", f"on {n_eval:,} images"
    speed = win["train_seconds"] / max(lose["train_seconds"], 1e-9)
    cost = (f"at {speed:.1f}x the training time ({win['train_seconds']:.0f} s vs {lose['train_seconds']:.0f} s)"
            if speed >= 1.1 else f"and it trained faster ({win['train_seconds']:.0f} s vs "
            f"{lose['train_seconds']:.0f} s)" if speed <= 0.9 else "in about the same training time")
    label = {"scratch": "from scratch", "finetune": "fine-tuned", "linear_probe": "as a linear probe"}
    if diff < 2 * se:
        text = (f"{win['variant']} and {lose['variant']} are within noise of each other: {_pts(a)}% vs {_pts(b)}% "
                f"{split} accuracy{seeds}, a {_pts(diff)}-point difference against a standard error of about "
                f"{_pts(se)} points {against}. They trained for {win['train_seconds']:.0f} s and "
                f"{lose['train_seconds']:.0f} s.")
    else:
        text = (f"{win['variant']} ({win['model']}, {label[win['approach']]}) wins: {_pts(a)}% {split} accuracy vs "
                f"{_pts(b)}% for {lose['variant']} ({lose['model']}, {label[lose['approach']]}){seeds}, "
                f"+{_pts(diff)} points (about {diff / se:.0f} standard errors {against}), {cost}.")
    if len(group) > 2:
        text += " Ranking: " + ", ".join(f"{r['variant']} {_pts(score(r, split))}%" for r in group) + "."
    fractions = sorted({r["train_fraction"] for r in records})
    if len(fractions) > 1:
        low = fractions[0]
        at_low = sorted([r for r in records if r["train_fraction"] == low], key=lambda r: -score(r, split))
        text += (f" With {100 * low:g}% of the training data ({at_low[0]['train_images']:,} images), "
                 + ", ".join(f"{r['variant']} reaches {_pts(score(r, split))}%" for r in at_low) + ".")
        best_low = at_low[0]
        low_score = score(best_low, split)
        beaten = [r for r in group if r["variant"] != best_low["variant"] and score(r, split) < low_score]
        if beaten:
            text += (f" {best_low['variant']} on {100 * low:g}% of the data beats {beaten[0]['variant']} on "
                     f"{100 * full:g}%.")
    if not repeated:
        text += " 1 seed each: the spread over seeds is not measured (--seeds 3 measures it)."
    return text


def _gap_verdict(records: list[dict[str, Any]], reference: str, split: str, n_eval: int,
                 combined: Sequence[str]) -> str:
    full = max(r["train_fraction"] for r in records)
    group = [r for r in records if r["train_fraction"] == full]
    ref = next((r for r in group if r["variant"] == reference), None)
    if ref is None:
        return "No baseline run, so the gap each regularizer closes cannot be measured."
    gap0 = ref["train_val_gap"]
    text = (f"Without regularization ({reference}) the model reaches {_pts(ref['train_accuracy'])}% on its training "
            f"images but {_pts(ref['val_accuracy'])}% on validation: a gap of {_pts(gap0)} points.")
    if gap0 <= 0.02:
        return text + " There is hardly a gap to close; this setup does not overfit (train longer or on less data)."
    noise = 2 * _noise(score(ref, split), score(ref, split), n_eval)
    others = sorted([r for r in group if r is not ref], key=lambda r: -(r.get("gap_closed") or 0))
    parts, fitted_less = [], []
    for r in others:
        closed, gain = r.get("gap_closed") or 0.0, r.get("test_gain") or 0.0
        gap_part = (f"closed {100 * closed:.0f}% of it (gap {_pts(r['train_val_gap'])})" if closed >= 0
                    else f"widened it (gap {_pts(r['train_val_gap'])})")
        change = f"{100 * gain:+.1f}" if round(100 * gain, 1) != 0 else "±0.0"
        parts.append(f"{r['variant']} {gap_part}, {split} accuracy {change}{' (noise)' if abs(gain) < noise else ''}")
        if closed > 0.1 and gain < noise:
            fitted_less.append(r["variant"])
    text += " " + "; ".join(parts) + "."
    if fitted_less:
        names = ", ".join(fitted_less[:-1]) + (" and " if len(fitted_less) > 1 else "") + fitted_less[-1]
        text += (f" {names} closed the gap by fitting the training images less, not by generalizing better; "
                 "regularizers that slow fitting down usually need a longer schedule to pay off (more --epochs).")
    singles = [r for r in others if r["variant"] not in combined]
    helpful = [r for r in singles if (r.get("test_gain") or 0.0) >= noise]
    if helpful:
        best = max(helpful, key=lambda r: r["test_gain"])
        text += (f" The single most useful regularizer here is {best['variant']} "
                 f"({_pts(score(best, split))}% {split} accuracy, {100 * best['test_gain']:+.1f} points).")
    elif singles:
        text += (f" No single regularizer raised {split} accuracy beyond noise (±{_pts(noise)} points on "
                 f"{n_eval:,} images).")
    return text


def comparison_verdict(comparison: dict[str, Any], combined: Sequence[str] = ()) -> str:
    """The verdict on a comparison's successful runs, naming the runs that diverged."""
    ok = [r for r in comparison["runs"] if not r.get("error")]
    text = verdict_text(ok, comparison["judge"], comparison["reference"], comparison["split"],
                        comparison["eval_images"], combined)
    failed = [r["name"] for r in comparison["runs"] if r.get("error")]
    if failed:
        text += f" Left out because training diverged: {', '.join(failed)}."
    return text
