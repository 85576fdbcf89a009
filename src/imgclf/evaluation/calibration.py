"""Calibration: does a confidence of 90 % mean right 90 % of the time? Reliability bins, ECE, temperature.

Accuracy says how often the model is right; calibration says whether its confidence can be trusted
(for thresholds, abstaining, or ranking). Temperature scaling (one scalar fitted on validation logits)
is the standard cheap fix, so the report shows what it would buy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclf.mathutil import softmax


@dataclass
class Reliability:
    """Per-bin mean confidence, accuracy and count over equal-width confidence bins, and the summary errors."""

    edges: list[float]
    confidence: list[float]  # NaN for empty bins
    accuracy: list[float]
    counts: list[int]
    ece: float  # expected calibration error: count-weighted mean |accuracy - confidence|
    mce: float  # maximum calibration error over non-empty bins
    mean_confidence: float
    accuracy_overall: float


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Reliability:
    """Bin the top-1 confidence of `probs` (N, C) and compare each bin's confidence with its accuracy."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins; 0 into the first
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
        mean_acc = np.where(counts > 0, acc_sum / counts, np.nan)
    filled = counts > 0
    diffs = np.abs(mean_acc[filled] - mean_conf[filled])
    n = max(len(labels), 1)
    ece = float((diffs * counts[filled]).sum() / n)
    mce = float(diffs.max()) if diffs.size else 0.0
    return Reliability(edges.tolist(), mean_conf.tolist(), mean_acc.tolist(), counts.astype(int).tolist(), ece, mce,
                       float(conf.mean()) if conf.size else float("nan"),
                       float(correct.mean()) if correct.size else float("nan"))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15,
                               temperature: float = 1.0) -> float:
    """ECE of softmax(logits / temperature) with equal-width bins."""
    return reliability(softmax(logits, temperature), labels, bins).ece


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), each term capped at
    -log(1e-12) so one hopeless sample cannot decide the fitted temperature."""
    probs = softmax(logits, temperature)
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature that minimizes NLL on (validation) logits: golden-section search over log T.

    NLL is unimodal in log T for a fixed set of logits, so a bracketing search is exact enough and needs
    no optimizer state or gradients.
    """
    labels = np.asarray(labels)
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2.0))


def describe(rel: Reliability) -> str:
    """One or two sentences on what the reliability diagram shows."""
    over = rel.mean_confidence - rel.accuracy_overall
    ece = 100 * rel.ece
    if ece < 2.0:
        tone = "well calibrated"
    elif over > 0:
        tone = "overconfident"
    else:
        tone = "underconfident"
    text = (f"The model is {tone}: expected calibration error {ece:.1f} points (mean confidence "
            f"{100 * rel.mean_confidence:.1f}% vs accuracy {100 * rel.accuracy_overall:.1f}%).")
    worst = _worst_bin(rel)
    if worst is not None and tone != "well calibrated":
        conf, acc, count = worst
        text += (f" In the worst well-filled bin, predictions made with about {100 * conf:.0f}% confidence were "
                 f"right {100 * acc:.0f}% of the time ({count} images).")
    return text


def _worst_bin(rel: Reliability, min_share: float = 0.02) -> tuple[float, float, int] | None:
    total = max(sum(rel.counts), 1)
    best: tuple[float, float, int] | None = None
    worst_diff = -1.0
    for conf, acc, count in zip(rel.confidence, rel.accuracy, rel.counts, strict=True):
        if count / total < min_share or not np.isfinite(conf):
            continue
        if abs(acc - conf) > worst_diff:
            worst_diff, best = abs(acc - conf), (conf, acc, count)
    return best
