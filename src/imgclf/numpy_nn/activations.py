"""Element-wise nonlinearities; each caches what its derivative needs (the input or the output)."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgclf.numpy_nn.layers import Layer


class ReLU(Layer):
    """max(x, 0): cheap, and its gradient does not vanish for positive inputs."""

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = np.maximum(x, 0)
        return self._y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * [x > 0]   (read off the output: y > 0 exactly where x > 0)
        (no parameters)"""
        return np.where(self._y > 0, grad, 0).astype(grad.dtype, copy=False)


class LeakyReLU(Layer):
    """x for x > 0, slope * x otherwise: keeps a small gradient for negative inputs (PyTorch default 0.01)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = negative_slope
        self._slope: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._slope = np.where(x > 0, 1.0, self.negative_slope).astype(x.dtype)
        return x * self._slope

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * (1 if x > 0 else negative_slope)
        (no parameters)"""
        return grad * self._slope

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 so it never overflows."""

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = 0.5 * (1.0 + np.tanh(0.5 * x))
        return self._y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * y * (1 - y)
        (no parameters)"""
        return grad * self._y * (1.0 - self._y)


class Tanh(Layer):
    """tanh(x): a zero-centred squashing function."""

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = np.tanh(x)
        return self._y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * (1 - y^2)
        (no parameters)"""
        return grad * (1.0 - self._y * self._y)


_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715


class GELU(Layer):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    This is PyTorch's `nn.GELU(approximate="tanh")`, not the exact erf form (NumPy has no erf).
    """

    def __init__(self) -> None:
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        t = np.tanh(_GELU_C * (x + _GELU_A * x * x * x))
        self._cache = (x, t)
        return 0.5 * x * (1.0 + t)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
        with t = tanh(sqrt(2/pi) (x + 0.044715 x^3)); no parameters"""
        x, t = self._cache
        du = _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)
        return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
