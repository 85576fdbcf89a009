"""Gradient checking: every analytic backward against central finite differences in float64.

For a layer y = f(x; theta) the check uses the scalar L = sum(y * R) with a fixed random R, so
dL/dy = R exercises every output. Central differences (f(x+h) - f(x-h)) / 2h have O(h^2) truncation
error; with h = 1e-6 in float64 the remaining error is round-off, about 1e-10 relative, far below the
1e-6 the checks accept.

The relative error of two gradient arrays a, n is ||a - n|| / (||a|| + ||n||): scale-free, and not
blown up by single entries that are (near) zero, as an element-wise ratio would be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from imgclf.numpy_nn.layers import Dropout, Layer
from imgclf.numpy_nn.losses import Loss
from imgclf.numpy_nn.model import Sequential

TOLERANCE = 1e-6


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to x, perturbing x in place (and restoring it)."""
    grad = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        f_plus = f()
        x[idx] = old - eps
        f_minus = f()
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """||a - n|| / (||a|| + ||n||); 0 when both are exactly zero."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - n) / denom)


@dataclass
class CheckResult:
    """Relative errors of one check, keyed by what was differentiated ("input", "weight", ...)."""

    name: str
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)

    def passed(self, tolerance: float = TOLERANCE) -> bool:
        return self.worst <= tolerance


def _freeze_randomness(layer: Layer) -> None:
    """Make dropout reuse its mask, so repeated forwards are one deterministic function."""
    layers = layer.layers if isinstance(layer, Sequential) else [layer]
    for inner in layers:
        if isinstance(inner, Dropout):
            inner.frozen = True
            inner._mask = None


def _unfreeze_randomness(layer: Layer) -> None:
    layers = layer.layers if isinstance(layer, Sequential) else [layer]
    for inner in layers:
        if isinstance(inner, Dropout):
            inner.frozen = False


def check_layer(layer: Layer, x: np.ndarray, name: str | None = None, rng: np.random.Generator | None = None,
                eps: float = 1e-6, check_input: bool = True) -> CheckResult:
    """Compare `layer.backward` with finite differences for dL/dx and every parameter (layer cast to float64).

    Works for any Layer, a whole Sequential included; the layer's train/eval mode is used as set.
    """
    rng = rng or np.random.default_rng(0)
    layer.astype(np.float64)
    x = np.array(x, dtype=np.float64, copy=True)
    _freeze_randomness(layer)
    try:
        y = layer.forward(x)
        r = rng.standard_normal(y.shape)
        dx = layer.backward(r.copy())
        params = layer.parameters()
        analytic = [p.grad.copy() for p in params]

        def objective() -> float:
            return float(np.sum(layer.forward(x) * r))

        result = CheckResult(name or type(layer).__name__)
        if check_input:
            result.errors["input"] = relative_error(dx, numerical_gradient(objective, x, eps))
        names = layer.named_parameters() if isinstance(layer, Sequential) else [(p.name, p) for p in params]
        for (pname, p), grad in zip(names, analytic, strict=True):
            result.errors[pname] = relative_error(grad, numerical_gradient(objective, p.value, eps))
    finally:
        _unfreeze_randomness(layer)
    return result


def check_loss(loss: Loss, pred: np.ndarray, target: np.ndarray, name: str | None = None,
               eps: float = 1e-6) -> CheckResult:
    """Compare `loss.backward()` with finite differences of the loss with respect to the predictions."""
    pred = np.array(pred, dtype=np.float64, copy=True)
    loss.forward(pred, target)
    analytic = loss.backward().copy()
    numeric = numerical_gradient(lambda: loss.forward(pred, target), pred, eps)
    return CheckResult(name or type(loss).__name__, {"input": relative_error(analytic, numeric)})


def check_model(model: Sequential, loss: Loss, x: np.ndarray, target: np.ndarray, name: str = "model",
                eps: float = 1e-6) -> CheckResult:
    """End-to-end check of loss(model(x), target): gradients of the input and of every parameter."""
    model.astype(np.float64)
    x = np.array(x, dtype=np.float64, copy=True)
    _freeze_randomness(model)
    try:
        loss.forward(model.forward(x), target)
        dx = model.backward(loss.backward())
        named = model.named_parameters()
        analytic = [p.grad.copy() for _, p in named]

        def objective() -> float:
            return loss.forward(model.forward(x), target)

        result = CheckResult(name, {"input": relative_error(dx, numerical_gradient(objective, x, eps))})
        for (pname, p), grad in zip(named, analytic, strict=True):
            result.errors[pname] = relative_error(grad, numerical_gradient(objective, p.value, eps))
    finally:
        _unfreeze_randomness(model)
    return result


def standard_checks(seed: int = 0) -> list[CheckResult]:
    """Every layer, activation and loss of the package, plus a small MLP and CNN end to end."""
    from imgclf.numpy_nn.activations import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
    from imgclf.numpy_nn.layers import BatchNorm1d, BatchNorm2d, Conv2D, Flatten, Linear, MaxPool2D
    from imgclf.numpy_nn.losses import MSELoss, SoftmaxCrossEntropy

    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape)

    def with_random_bn(layer: Layer) -> Layer:
        # Non-trivial gamma/beta and running stats, so no term of the derivative hides behind 1s and 0s.
        layer.astype(np.float64)
        layer.gamma.value = 1.0 + 0.5 * rng.standard_normal(layer.num_features)
        layer.beta.value = 0.5 * rng.standard_normal(layer.num_features)
        layer.running_mean = 0.3 * rng.standard_normal(layer.num_features)
        layer.running_var = rng.uniform(0.5, 2.0, layer.num_features)
        return layer

    def with_random_bias(layer: Layer) -> Layer:
        layer.astype(np.float64)
        layer.bias.value = 0.1 * rng.standard_normal(layer.bias.shape)
        return layer

    cases: list[tuple[str, Layer, np.ndarray]] = [
        ("Linear", with_random_bias(Linear(7, 5, rng=rng)), normal(4, 7)),
        ("Linear(no bias, xavier)", Linear(6, 3, bias=False, init="xavier", rng=rng), normal(3, 6)),
        ("Conv2D(k3, s1, p1)", with_random_bias(Conv2D(3, 4, 3, padding=1, rng=rng)), normal(2, 6, 6, 3)),
        ("Conv2D(k3, s2, p0)", with_random_bias(Conv2D(2, 3, 3, stride=2, rng=rng)), normal(2, 7, 7, 2)),
        ("Conv2D(k1)", Conv2D(3, 2, 1, bias=False, rng=rng), normal(2, 4, 4, 3)),
        ("MaxPool2D(2)", MaxPool2D(2), normal(2, 6, 6, 3)),
        ("MaxPool2D(3, s2)", MaxPool2D(3, 2), normal(2, 7, 7, 2)),
        ("Flatten", Flatten(), normal(2, 3, 4, 4)),
        ("Dropout(0.3, train)", Dropout(0.3, rng=rng), normal(4, 10)),
        ("Dropout(eval)", Dropout(0.3, rng=rng).eval(), normal(4, 10)),
        ("BatchNorm1d(train)", with_random_bn(BatchNorm1d(5)), normal(6, 5)),
        ("BatchNorm1d(eval)", with_random_bn(BatchNorm1d(5)).eval(), normal(6, 5)),
        ("BatchNorm1d(N,C,L)", with_random_bn(BatchNorm1d(3)), normal(4, 3, 5)),
        ("BatchNorm2d(train)", with_random_bn(BatchNorm2d(3)), normal(3, 4, 4, 3)),
        ("BatchNorm2d(eval)", with_random_bn(BatchNorm2d(3)).eval(), normal(3, 4, 4, 3)),
        ("ReLU", ReLU(), normal(5, 8)),
        ("LeakyReLU", LeakyReLU(0.1), normal(5, 8)),
        ("Sigmoid", Sigmoid(), 3 * normal(5, 8)),
        ("Tanh", Tanh(), 2 * normal(5, 8)),
        ("GELU(tanh)", GELU(), 2 * normal(5, 8)),
    ]
    results = [check_layer(layer, x, name) for name, layer, x in cases]

    labels = rng.integers(0, 6, size=5)
    results.append(check_loss(SoftmaxCrossEntropy(), 3 * normal(5, 6), labels, "SoftmaxCrossEntropy"))
    results.append(check_loss(SoftmaxCrossEntropy(0.1), 3 * normal(5, 6), labels,
                              "SoftmaxCrossEntropy(smoothing 0.1)"))
    big = normal(5, 6) + np.array([800.0, 0, 0, 0, 0, 0])  # exp would overflow without the max shift
    results.append(check_loss(SoftmaxCrossEntropy(), big, labels, "SoftmaxCrossEntropy(large logits)"))
    results.append(check_loss(MSELoss(), normal(4, 3), normal(4, 3), "MSELoss"))

    # No bias right before a BatchNorm: its true gradient is exactly 0 (the mean subtraction removes it),
    # so only round-off would be compared.
    mlp = Sequential(Linear(6, 8, bias=False, rng=rng), BatchNorm1d(8), GELU(), Dropout(0.2, rng=rng),
                     Linear(8, 5, rng=rng), Tanh(), Linear(5, 4, init="xavier", rng=rng))
    results.append(check_model(mlp, SoftmaxCrossEntropy(), normal(6, 6), rng.integers(0, 4, 6),
                               "MLP + cross-entropy"))
    cnn = Sequential(Conv2D(2, 3, 3, padding=1, bias=False, rng=rng), BatchNorm2d(3), ReLU(), MaxPool2D(2),
                     Conv2D(3, 4, 3, padding=1, rng=rng), LeakyReLU(), MaxPool2D(2), Flatten(),
                     Linear(4 * 2 * 2, 3, rng=rng), Sigmoid())
    results.append(check_model(cnn, MSELoss(), normal(3, 8, 8, 2), rng.uniform(size=(3, 3)), "CNN + MSE"))
    return results
