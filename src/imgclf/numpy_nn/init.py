"""Weight initializers: He for layers feeding ReLU-like units, Xavier for saturating ones.

Both keep the activation variance roughly constant through depth, which is why a deep stack of
layers trains at all from random weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Initializer = Callable[[tuple[int, ...], int, int, np.random.Generator], np.ndarray]


def he_normal(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """N(0, 2 / fan_in): ReLU zeroes half the units, so the variance is doubled to compensate."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def xavier_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): balances forward and backward variance."""
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


INITIALIZERS: dict[str, Initializer] = {"he": he_normal, "xavier": xavier_uniform}


def get_initializer(name: str) -> Initializer:
    """Look an initializer up by name ('he' or 'xavier')."""
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}") from None
