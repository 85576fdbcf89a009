"""Multi-label scores (several labels an image, sigmoid outputs) from saved logits and multi-hot labels: mean
average precision, per-class AP, precision, recall and F1 at each class's threshold, micro and macro F1, the
exact-match ratio; and those thresholds, chosen on the validation split to maximise each class's F1.

A threshold per class, not one 0.5 for all: a rare class's probabilities rarely reach 0.5 after training on
mostly negatives, and the label smoothing of the targets moves every probability towards 0.5. Chosen on the
split that also picked the best epoch, the F1 they promise is a little optimistic; test scores them fairly.

NumPy and scikit-learn only (as evaluation.scores), so training, `imgclf evaluate` and the report count alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imgclf.mathutil import sigmoid

DEFAULT_THRESHOLD = 0.5  # a class whose validation images are all positive or all negative keeps this


def positives(targets: np.ndarray) -> np.ndarray:
    """Multi-hot targets (smoothed or not) as booleans."""
    return np.asarray(targets) > 0.5


def choose_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the probability threshold with the best F1 on these images: calling the k highest-scored
    images positive for every k (ties kept together), the best k's threshold set halfway to the next score
    (so it does not sit on one image's exact score). The first best k wins: the fewest positives at equal F1."""
    probs, y = np.asarray(probs, dtype=np.float64), positives(targets)
    n, num_classes = probs.shape
    chosen = np.full(num_classes, DEFAULT_THRESHOLD)
    for c in range(num_classes):
        total = int(y[:, c].sum())
        if total in (0, n):
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        scores, hits = probs[order, c], np.cumsum(y[order, c])
        f1 = 2 * hits / (np.arange(1, n + 1) + total)
        f1[np.append(scores[1:] == scores[:-1], False)] = -1.0  # a cut inside a tie cannot be made
        best = int(np.argmax(f1))
        chosen[c] = (scores[best] + (scores[best + 1] if best + 1 < n else 0.0)) / 2
    return chosen


def threshold_calibration(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """What a multi-label checkpoint keeps of its validation split: the per-class thresholds (plain floats, so
    the checkpoint loads with weights_only=True and the ONNX metadata holds them as JSON)."""
    return {"thresholds": [round(float(t), 6) for t in choose_thresholds(sigmoid(logits), targets)]}


def average_precisions(probs: np.ndarray, targets: np.ndarray) -> list[float | None]:
    """Each class's average precision (area under its precision-recall curve, sklearn's step-wise sum); None for
    a class without a positive image, where it is undefined."""
    from sklearn.metrics import average_precision_score

    y = positives(targets)
    return [float(average_precision_score(y[:, c], probs[:, c])) if y[:, c].any() else None
            for c in range(y.shape[1])]


def mean_average_precision(probs: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean of the defined per-class APs (0.0 when none is). Ranks only, so logits do as well."""
    defined = [ap for ap in average_precisions(probs, targets) if ap is not None]
    return float(np.mean(defined)) if defined else 0.0


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.shape(a), dtype=np.float64), where=np.asarray(b) > 0)


def multilabel_scores(probs: np.ndarray, targets: np.ndarray, classes: list[str],
                      thresholds: np.ndarray) -> dict[str, Any]:
    """mAP, micro and macro F1, exact match (every class of an image right), label accuracy (the share of
    image-class decisions right) and per class: AP, precision, recall, F1, support and its threshold. Macro F1
    averages the classes present or predicted, as `scores.macro_f1` does."""
    probs, y = np.asarray(probs, dtype=np.float64), positives(targets)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    pred = probs >= thresholds
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    precision, recall, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)
    aps = average_precisions(probs, y)
    counted = (tp + fp + fn) > 0
    defined = [ap for ap in aps if ap is not None]
    return {
        "map": float(np.mean(defined)) if defined else None,
        "micro_f1": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "macro_f1": float(f1[counted].mean()) if counted.any() else None,
        "exact_match": float((pred == y).all(axis=1).mean()) if len(y) else None,
        "label_accuracy": float((pred == y).mean()) if len(y) else None,
        "per_class": {c: {"ap": aps[i], "precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(y[:, i].sum()), "threshold": float(thresholds[i])}
                      for i, c in enumerate(classes)},
    }
