"""Scores from saved logits and labels: per-sample loss, the confusion matrix, per-class precision, recall
and F1, the most-confused pairs.

NumPy and scikit-learn only (no torch), so `imgclf evaluate`, the run report and the comparison report
count the same way from a predictions file or from a loader's logits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.mathutil import log_softmax


def per_sample_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of every sample (float64)."""
    return -log_softmax(logits)[np.arange(len(labels)), labels]


def confusion(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(k, k) counts, rows the true class and columns the predicted one; classes absent from both count 0."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, pred, labels=np.arange(num_classes))


@dataclass
class ClassScores:
    """Per-class precision, recall, F1 (0 where undefined) and support, with the confusion they come from."""

    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray  # = per-class accuracy: the share of each class's images called that class
    f1: np.ndarray
    support: np.ndarray


def class_scores(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> ClassScores:
    """Precision, recall, F1 and support of every class in label order."""
    from sklearn.metrics import precision_recall_fscore_support

    classes = np.arange(num_classes)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    return ClassScores(confusion(labels, pred, num_classes), precision, recall, f1, support)


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    """The unweighted mean of the per-class F1 over the classes present or predicted (a class in neither, as a
    small class a split left out of val, does not count): unlike accuracy, a small class weighs as much as a
    large one."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, average="macro", zero_division=0))


def class_report(labels: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The scores a skewed set needs beside accuracy: balanced accuracy (mean recall of the classes present),
    macro-F1 (over the classes present or predicted, so a split that lacks a class is not marked down for
    it) and each class's precision, recall, F1 and support."""
    from sklearn.metrics import balanced_accuracy_score

    scores = class_scores(labels, pred, len(classes))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, and the score is right
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(labels, pred)) if len(labels) else None
    return {"balanced_accuracy": balanced,
            "macro_f1": macro_f1(labels, pred) if len(labels) else None,
            "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                          for c, p, r, f, n in zip(classes, scores.precision, scores.recall, scores.f1,
                                                   scores.support, strict=True)}}


def top_k_accuracy(labels: np.ndarray, logits: np.ndarray, k: int = 5) -> float | None:
    """The share of samples whose class is among the k highest scores; None with k classes or fewer (always 1)."""
    from sklearn.metrics import top_k_accuracy_score

    if logits.shape[1] <= k or not len(labels):
        return None
    return float(top_k_accuracy_score(labels, logits, k=k, labels=np.arange(logits.shape[1])))


def confused_pairs(cm: np.ndarray, top: int = 8) -> list[tuple[int, int, int, float]]:
    """Off-diagonal cells of a confusion matrix, largest first: (true, predicted, count, share of the true class)."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1]
    pairs = []
    for flat in order[:top]:
        i, j = np.unravel_index(flat, cm.shape)
        if off[i, j] == 0:
            break
        pairs.append((int(i), int(j), int(off[i, j]), float(off[i, j] / max(cm[i].sum(), 1))))
    return pairs
