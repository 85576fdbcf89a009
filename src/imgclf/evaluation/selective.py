"""Selective prediction: answer only when the calibrated top probability is high enough, and say "I don't know"
otherwise.

Training fits a temperature on the validation logits (`calibrate`) and keeps the validation split's
coverage-accuracy curve: for each threshold on the top probability, the share of images kept and the accuracy
on them. `threshold_for_accuracy` reads a threshold for a target accuracy off that curve, so predict, serve
and the Python API can pick one without the data. It is chosen on the split the temperature was fitted on (and
the best epoch picked by), so the kept accuracy it promises is a little optimistic; the report checks it on the
test split. A confident answer on an image of a class the model never saw is still possible: the threshold
bounds the in-distribution accuracy, and rejects unseen classes only as far as their top probability is low.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.defaults import CALIBRATION_MIN_ERRORS, SELECTIVE_CURVE_POINTS, SELECTIVE_MIN_KEPT
from imgclf.evaluation.calibration import fit_temperature
from imgclf.mathutil import softmax


@dataclass(frozen=True)
class SelectiveCurve:
    """Points of the coverage-accuracy curve, most confident first: keeping the images whose top probability is
    at least threshold[i] keeps coverage[i] of them, and accuracy[i] of those are right."""

    threshold: np.ndarray
    coverage: np.ndarray
    accuracy: np.ndarray
    images: int

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (a checkpoint loads with weights_only=True; ONNX metadata holds it as JSON)."""
        return {"images": self.images, "threshold": [round(float(v), 6) for v in self.threshold],
                "coverage": [round(float(v), 6) for v in self.coverage],
                "accuracy": [round(float(v), 6) for v in self.accuracy]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SelectiveCurve:
        return cls(*(np.asarray(values[k], dtype=np.float64) for k in ("threshold", "coverage", "accuracy")),
                   int(values["images"]))


def selective_curve(confidence: np.ndarray, correct: np.ndarray,
                    points: int | None = SELECTIVE_CURVE_POINTS) -> SelectiveCurve:
    """The curve of top probabilities `confidence` (N,) and whether each answer was right `correct` (N,): one
    point wherever the kept set changes (ties kept together), thinned to at most `points` (the full-coverage
    point always stays), so a stored curve is small whatever the split's size."""
    confidence = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    ends = np.flatnonzero(np.append(sorted_conf[1:] < sorted_conf[:-1], True))  # last index of each tie group
    if points is not None and len(ends) > points:
        ends = ends[np.unique(np.linspace(0, len(ends) - 1, points).round().astype(int))]
    kept = ends + 1
    n = max(len(confidence), 1)
    return SelectiveCurve(sorted_conf[ends], kept / n, hits[ends] / kept, len(confidence))


def top_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Each row's highest probability under softmax(logits / temperature)."""
    return softmax(logits, temperature).max(axis=1)


def threshold_for_accuracy(curve: SelectiveCurve, target: float, min_kept: int = SELECTIVE_MIN_KEPT) -> float:
    """The lowest threshold (the most images kept) whose kept accuracy on the curve's split is at least
    `target`, keeping at least `min_kept` of its images; 0.0 when every image may be kept. ValueError when no
    threshold reaches it."""
    enough = curve.coverage * curve.images >= min(min_kept, curve.images) - 1e-9
    reach = enough & (curve.accuracy >= target - 1e-12)
    if not reach.any():
        best = int(np.argmax(np.where(enough, curve.accuracy, -1.0)))
        raise ValueError(f"no threshold reaches {target:.2%} accuracy on the {curve.images} validation images "
                         f"(at best {curve.accuracy[best]:.2%}, keeping {curve.coverage[best]:.1%} of them, at least "
                         f"{min_kept} images)")
    i = int(np.flatnonzero(reach)[np.argmax(curve.coverage[reach])])
    return 0.0 if curve.coverage[i] >= 1.0 else float(curve.threshold[i])


def kept_at(curve: SelectiveCurve, threshold: float) -> tuple[float, float]:
    """(coverage, accuracy on the kept images) at `threshold`: the curve's point that keeps exactly the images at
    or above it (its nearest stored point below that where the curve was thinned); (0, nan) when none is kept."""
    at = np.flatnonzero(curve.threshold >= threshold)
    if not len(at):
        return 0.0, float("nan")
    return float(curve.coverage[at[-1]]), float(curve.accuracy[at[-1]])


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What a checkpoint keeps from its validation logits: the temperature (1.0, with the reason, where the
    split has fewer than CALIBRATION_MIN_ERRORS mistakes: with none, NLL only falls as T -> 0 and every
    probability would become 1) and the coverage-accuracy curve under it."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    mistakes = int((logits.argmax(axis=1) != labels).sum())
    note = None
    if mistakes >= CALIBRATION_MIN_ERRORS:
        temperature = fit_temperature(logits, labels)
    else:
        temperature = 1.0
        note = (f"{mistakes} mistake(s) on {len(labels)} validation images, fewer than {CALIBRATION_MIN_ERRORS}: "
                "too few to fit a temperature, so T = 1")
    probs = softmax(logits, temperature)
    curve = selective_curve(probs.max(axis=1), probs.argmax(axis=1) == labels)
    return {"temperature": round(float(temperature), 6),
            "selective": {"split": "val", **curve.to_dict(), **({"note": note} if note else {})}}
