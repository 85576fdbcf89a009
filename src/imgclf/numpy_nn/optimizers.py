"""Optimizers with PyTorch's update rules, so a step here equals a step of torch.optim on the same state.

Weight decay is skipped for parameters marked `decay=False` (biases, norm scales and shifts): decaying
those only fights the normalization and costs accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from imgclf.numpy_nn.layers import Parameter


class Optimizer:
    """Holds the parameters and the learning rate (`lr`, changed by schedules between steps)."""

    def __init__(self, params: Iterable[Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.lr = lr
        self.weight_decay = weight_decay

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = np.zeros_like(p.value)

    def step(self) -> None:
        raise NotImplementedError

    def _decayed_grad(self, p: Parameter) -> np.ndarray:
        """L2 regularization folded into the gradient: g + wd * w."""
        if self.weight_decay and p.decay:
            return p.grad + self.weight_decay * p.value
        return p.grad


class SGD(Optimizer):
    """SGD, optionally with (Nesterov) momentum:  b = mu b + g;  w -= lr (g + mu b if nesterov else b)."""

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self._buf: list[np.ndarray | None] = [None] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = self._decayed_grad(p)
            if self.momentum:
                buf = self._buf[i]
                if buf is None:
                    buf = self._buf[i] = np.array(g, dtype=p.value.dtype, copy=True)
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p.value -= self.lr * g


class Adam(Optimizer):
    """Adam with bias correction; `decoupled=True` gives AdamW (decay applied to the weights, not the gradient)."""

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps, self.decoupled = eps, decoupled
        self.t = 0
        self._m = [np.zeros_like(p.value) for p in self.params]
        self._v = [np.zeros_like(p.value) for p in self.params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step_size = self.lr / (1.0 - b1 ** self.t)
        root_bc2 = math.sqrt(1.0 - b2 ** self.t)
        for p, m, v in zip(self.params, self._m, self._v, strict=True):
            if self.decoupled:
                if self.weight_decay and p.decay:
                    p.value *= 1.0 - self.lr * self.weight_decay
                g = p.grad
            else:
                g = self._decayed_grad(p)
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            denom = np.sqrt(v)
            denom /= root_bc2
            denom += self.eps
            p.value -= step_size * (m / denom)
