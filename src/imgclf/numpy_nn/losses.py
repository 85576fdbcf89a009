"""Losses: a scalar from predictions and targets, and its gradient with respect to the predictions."""

from __future__ import annotations

import numpy as np


class Loss:
    """forward(pred, target) -> float caches; backward() -> dL/dpred."""

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.forward(pred, target)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """z - logsumexp(z), shifted by the row max first so exp never overflows."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class SoftmaxCrossEntropy(Loss):
    """Mean cross-entropy of softmax(logits) against integer labels, with optional label smoothing.

    Fusing softmax with the loss gives the simple, stable gradient softmax - target; it matches
    `torch.nn.CrossEntropyLoss(label_smoothing=...)`.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def _target(self, labels: np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        n, k = shape
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ValueError(f"expected {n} integer labels, got shape {labels.shape}")
        q = np.full(shape, self.label_smoothing / k, dtype=dtype)
        q[np.arange(n), labels] += 1.0 - self.label_smoothing
        return q

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        logp = log_softmax(pred)
        q = self._target(target, pred.shape, pred.dtype)
        self._cache = (np.exp(logp), q)
        return float(-(q * logp).sum() / pred.shape[0])

    def backward(self) -> np.ndarray:
        """dL/dz = (softmax(z) - q) / N, q = one-hot labels (smoothed: (1 - s) one-hot + s / K)
        (no parameters)"""
        p, q = self._cache
        return (p - q) / np.asarray(p.shape[0], dtype=p.dtype)


class MSELoss(Loss):
    """Mean squared error over all elements, like `torch.nn.MSELoss()`."""

    def __init__(self) -> None:
        self._diff: np.ndarray | None = None

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        target = np.asarray(target, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(f"MSE target shape {target.shape} differs from prediction shape {pred.shape}")
        self._diff = pred - target
        return float(np.mean(self._diff * self._diff))

    def backward(self) -> np.ndarray:
        """dL/dpred = 2 (pred - target) / number of elements
        (no parameters)"""
        return self._diff * np.asarray(2.0 / self._diff.size, dtype=self._diff.dtype)
