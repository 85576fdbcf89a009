"""imgclf.numpy_nn: every gradient against finite differences and against PyTorch autograd on the same
weights and inputs (float64), optimizers step for step against torch.optim, and save/load."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgclf import numpy_nn as nn
from imgclf.numpy_nn.gradcheck import TOLERANCE

RTOL, ATOL = 1e-9, 1e-11
PACKAGE_DIR = Path(nn.__file__).parent


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def close(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
    if isinstance(a, torch.Tensor):
        a = a.detach().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().numpy()
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ----- the package stays NumPy-only ------------------------------------------------------------------------

def test_no_torch_import_in_numpy_nn() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path.name} imports torch"


def test_every_backward_documents_its_derivative() -> None:
    layer_types = [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, nn.Layer)]
    loss_types = [nn.SoftmaxCrossEntropy, nn.MSELoss]
    for cls in layer_types + loss_types:
        if cls in (nn.Layer,):
            continue
        doc = cls.backward.__doc__
        assert doc and len(doc.strip().splitlines()) == 2, f"{cls.__name__}.backward needs a two-line docstring"
        assert "dL/d" in doc, cls.__name__


# ----- finite differences ----------------------------------------------------------------------------------

def test_standard_gradient_checks_pass() -> None:
    results = nn.standard_checks()
    names = {r.name for r in results}
    for required in ["Linear", "Conv2D(k3, s1, p1)", "MaxPool2D(2)", "Flatten", "Dropout(0.3, train)",
                     "BatchNorm1d(train)", "BatchNorm2d(train)", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
                     "GELU(tanh)", "SoftmaxCrossEntropy", "MSELoss", "MLP + cross-entropy", "CNN + MSE"]:
        assert required in names
    worst = max(results, key=lambda r: r.worst)
    assert worst.worst <= TOLERANCE, (worst.name, worst.errors)


def test_gradcheck_catches_a_wrong_backward(rng: np.random.Generator) -> None:
    class BrokenTanh(nn.Tanh):
        def backward(self, grad: np.ndarray) -> np.ndarray:
            """dL/dx = dL/dy * (1 - y)   (deliberately wrong)
            (no parameters)"""
            return grad * (1.0 - self._y)

    assert nn.check_layer(BrokenTanh(), rng.standard_normal((3, 4))).worst > 1e-2


def test_numerical_gradient_of_a_known_function() -> None:
    x = np.array([0.5, -1.5, 2.0])
    g = nn.numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    np.testing.assert_array_equal(x, [0.5, -1.5, 2.0])  # restored


def test_cli_gradcheck(capsys: pytest.CaptureFixture[str]) -> None:
    from imgclf.cli import main

    assert main(["scratch-nn", "--gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "worst relative error" in out
    worst = float(out.split("worst relative error: ")[1].split()[0])
    assert worst <= 1e-6


# ----- PyTorch autograd on the same weights and inputs ----------------------------------------------------

def run_numpy(layer: nn.Layer, x: np.ndarray, upstream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    layer.astype(np.float64)
    y = layer.forward(x)
    return y, layer.backward(upstream)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(rng: np.random.Generator, bias: bool) -> None:
    layer = nn.Linear(7, 4, bias=bias, rng=rng).astype(np.float64)
    if bias:
        layer.bias.value = rng.standard_normal(4)
    x, up = rng.standard_normal((5, 7)), rng.standard_normal((5, 4))
    y, dx = run_numpy(layer, x, up)
    tx, tw = t(x, True), t(layer.weight.value, True)
    tb = t(layer.bias.value, True) if bias else None
    ty = F.linear(tx, tw, tb)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.weight.grad, tw.grad)
    if bias:
        close(layer.bias.grad, tb.grad)


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "padding", "size"),
                         [(3, 4, 3, 1, 1, 8), (2, 5, 3, 2, 0, 9), (3, 2, 5, 2, 2, 10), (4, 3, 1, 1, 0, 5),
                          (2, 3, 3, 3, 1, 7)])
def test_conv2d_matches_torch(rng: np.random.Generator, cin: int, cout: int, k: int, stride: int, padding: int,
                              size: int) -> None:
    layer = nn.Conv2D(cin, cout, k, stride=stride, padding=padding, rng=rng).astype(np.float64)
    layer.bias.value = rng.standard_normal(cout)
    x = rng.standard_normal((2, size, size, cin))  # NHWC
    tx, tw, tb = t(x, True), t(layer.weight.value, True), t(layer.bias.value, True)
    ty = nhwc(F.conv2d(nchw(tx), tw, tb, stride=stride, padding=padding))
    up = rng.standard_normal(tuple(ty.shape))
    y, dx = run_numpy(layer, x, up)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.weight.grad, tw.grad)
    close(layer.bias.grad, tb.grad)


@pytest.mark.parametrize(("k", "stride", "size"), [(2, 2, 8), (2, 2, 7), (3, 2, 9), (3, 1, 6)])
def test_maxpool_matches_torch(rng: np.random.Generator, k: int, stride: int, size: int) -> None:
    x = rng.standard_normal((2, size, size, 3))
    tx = t(x, True)
    ty = nhwc(F.max_pool2d(nchw(tx), k, stride))
    up = rng.standard_normal(tuple(ty.shape))
    y, dx = run_numpy(nn.MaxPool2D(k, stride), x, up)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)


def test_maxpool_ties_route_like_torch(rng: np.random.Generator) -> None:
    x = rng.integers(0, 3, size=(2, 6, 6, 2)).astype(np.float64)  # many ties in every window
    tx = t(x, True)
    ty = nhwc(F.max_pool2d(nchw(tx.contiguous()), 2))
    up = rng.standard_normal(tuple(ty.shape))
    _, dx = run_numpy(nn.MaxPool2D(2), x, up)
    ty.backward(t(up))
    close(dx, tx.grad)


def test_flatten_matches_torch_on_channels_last(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 4, 5))
    tx = t(x, True)
    ty = torch.flatten(tx, 1)
    up = rng.standard_normal(tuple(ty.shape))
    y, dx = run_numpy(nn.Flatten(), x, up)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)


def test_dropout_matches_torch_given_the_mask(rng: np.random.Generator) -> None:
    layer = nn.Dropout(0.4, rng=rng)
    x = rng.standard_normal((50, 40)) + 3.0  # no zeros, so the mask can be read off y / x
    up = rng.standard_normal(x.shape)
    y, dx = run_numpy(layer, x, up)
    mask = y / x
    assert set(np.round(np.unique(mask), 12)) == {0.0, round(1 / 0.6, 12)}
    assert abs((mask == 0).mean() - 0.4) < 0.05
    tx = t(x, True)
    (tx * t(mask)).backward(t(up))
    close(dx, tx.grad)
    layer.eval()
    close(layer.forward(x), torch.nn.Dropout(0.4).eval()(t(x)))


def assert_batchnorm_matches(layer: nn.Layer, ref: torch.nn.Module, x: np.ndarray, training: bool,
                             rng: np.random.Generator,
                             through_torch: Callable[..., torch.Tensor] = lambda ref, tx: ref(tx)) -> None:
    """Same affine parameters and running statistics in both; then outputs, gradients and the updated
    statistics must agree. `through_torch` maps the NumPy layout to torch's and back where they differ."""
    c = ref.num_features
    gamma, beta = 1 + 0.3 * rng.standard_normal(c), 0.2 * rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    layer.astype(np.float64)
    layer.gamma.value, layer.beta.value = gamma.copy(), beta.copy()
    layer.running_mean, layer.running_var = mean.copy(), var.copy()
    ref.double()
    with torch.no_grad():
        for tensor, value in ((ref.weight, gamma), (ref.bias, beta), (ref.running_mean, mean), (ref.running_var, var)):
            tensor.copy_(t(value))
    layer.train(training)
    ref.train(training)
    up = rng.standard_normal(x.shape)
    tx = t(x, True)
    ty = through_torch(ref, tx)
    y, dx = run_numpy(layer, x, up)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)
    close(layer.gamma.grad, ref.weight.grad)
    close(layer.beta.grad, ref.bias.grad)
    close(layer.running_mean, ref.running_mean)
    close(layer.running_var, ref.running_var)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_matches_torch(rng: np.random.Generator, shape: tuple[int, ...], training: bool) -> None:
    x = 2 * rng.standard_normal(shape) + 1
    assert_batchnorm_matches(nn.BatchNorm1d(shape[1]), torch.nn.BatchNorm1d(shape[1]), x, training, rng)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_torch(rng: np.random.Generator, training: bool) -> None:
    x = rng.standard_normal((4, 5, 5, 3))  # NHWC, as the NumPy Conv2D lays out its maps
    assert_batchnorm_matches(nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3), x, training, rng,
                             through_torch=lambda ref, tx: nhwc(ref(nchw(tx))))


@pytest.mark.parametrize(("layer", "ref"), [
    (nn.ReLU(), torch.nn.ReLU()),
    (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
    (nn.LeakyReLU(), torch.nn.LeakyReLU()),
    (nn.Sigmoid(), torch.nn.Sigmoid()),
    (nn.Tanh(), torch.nn.Tanh()),
    (nn.GELU(), torch.nn.GELU(approximate="tanh")),
], ids=lambda v: type(v).__name__)
def test_activations_match_torch(rng: np.random.Generator, layer: nn.Layer, ref: torch.nn.Module) -> None:
    x = 3 * rng.standard_normal((6, 9))
    x[0, :3] = [40.0, -40.0, 0.5]  # saturated regions too
    up = rng.standard_normal(x.shape)
    tx = t(x, True)
    ty = ref(tx)
    y, dx = run_numpy(layer, x, up)
    ty.backward(t(up))
    close(y, ty)
    close(dx, tx.grad)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(rng: np.random.Generator, smoothing: float) -> None:
    logits = 4 * rng.standard_normal((7, 5))
    logits[0] += 1000.0  # stable with huge logits
    labels = rng.integers(0, 5, 7)
    loss = nn.SoftmaxCrossEntropy(smoothing)
    value = loss.forward(logits, labels)
    tz = t(logits, True)
    ref = F.cross_entropy(tz, torch.tensor(labels), label_smoothing=smoothing)
    ref.backward()
    assert np.isfinite(value)
    np.testing.assert_allclose(value, ref.item(), rtol=RTOL)
    close(loss.backward(), tz.grad)


def test_mse_matches_torch(rng: np.random.Generator) -> None:
    pred, target = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    loss = nn.MSELoss()
    value = loss.forward(pred, target)
    tp = t(pred, True)
    ref = F.mse_loss(tp, t(target))
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=RTOL)
    close(loss.backward(), tp.grad)


def torch_twin(model: nn.Sequential) -> torch.nn.Sequential:
    """The same network in torch (float64, NCHW inside, same weights), fed and returning what numpy sees."""

    class ToNCHW(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nchw(x)

    class ToNHWC(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nhwc(x)

    modules: list[torch.nn.Module] = []
    spatial = False
    for layer in model:
        if isinstance(layer, nn.Conv2D | nn.MaxPool2D | nn.BatchNorm2d) and not spatial:
            modules.append(ToNCHW())
            spatial = True
        if isinstance(layer, nn.Flatten) and spatial:
            modules.append(ToNHWC())  # numpy flattens H, W, C
            spatial = False
        if isinstance(layer, nn.Linear):
            m = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        elif isinstance(layer, nn.Conv2D):
            m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                layer.padding, bias=layer.bias is not None)
        elif isinstance(layer, nn.BatchNorm1d):
            m = torch.nn.BatchNorm1d(layer.num_features)
        elif isinstance(layer, nn.BatchNorm2d):
            m = torch.nn.BatchNorm2d(layer.num_features)
        elif isinstance(layer, nn.MaxPool2D):
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride)
        else:
            m = {nn.ReLU: torch.nn.ReLU(), nn.Tanh: torch.nn.Tanh(), nn.Flatten: torch.nn.Flatten(),
                 nn.GELU: torch.nn.GELU(approximate="tanh"), nn.Sigmoid: torch.nn.Sigmoid()}[type(layer)]
        params = layer.parameters()
        with torch.no_grad():
            for p, tp in zip(params, m.parameters(), strict=True):
                tp.copy_(t(p.value))
        modules.append(m.double())
    return torch.nn.Sequential(*modules)


def test_mlp_and_loss_match_torch_end_to_end(rng: np.random.Generator) -> None:
    model = nn.Sequential(nn.Linear(10, 16, bias=False, rng=rng), nn.BatchNorm1d(16), nn.GELU(),
                          nn.Linear(16, 8, rng=rng), nn.Tanh(), nn.Linear(8, 4, init="xavier", rng=rng))
    model.astype(np.float64)
    ref = torch_twin(model)
    x, y = rng.standard_normal((12, 10)), rng.integers(0, 4, 12)
    loss = nn.SoftmaxCrossEntropy(0.1)
    value = loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    tx = t(x, True)
    ref_loss = F.cross_entropy(ref(tx), torch.tensor(y), label_smoothing=0.1)
    ref_loss.backward()
    np.testing.assert_allclose(value, ref_loss.item(), rtol=RTOL)
    close(dx, tx.grad)
    for p, tp in zip(model.parameters(), ref.parameters(), strict=True):
        close(p.grad, tp.grad)


def test_cnn_matches_torch_end_to_end(rng: np.random.Generator) -> None:
    model = nn.build_cnn(3, 8, [12], 5, seed=3).astype(np.float64)
    ref = torch_twin(model)
    x, y = rng.standard_normal((6, 8, 8, 3)), rng.integers(0, 5, 6)
    loss = nn.SoftmaxCrossEntropy()
    value = loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    tx = t(x, True)
    ref_loss = F.cross_entropy(ref(tx), torch.tensor(y))
    ref_loss.backward()
    np.testing.assert_allclose(value, ref_loss.item(), rtol=RTOL)
    close(dx, tx.grad)
    for (name, p), tp in zip(model.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_training_backward_skips_only_the_unused_input_gradient(rng: np.random.Generator) -> None:
    model = nn.build_cnn(3, 8, [6], 3, seed=0).astype(np.float64)
    x, y = rng.standard_normal((4, 8, 8, 3)), rng.integers(0, 3, 4)
    loss = nn.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    full = model.backward(loss.backward())
    grads = [p.grad.copy() for p in model.parameters()]
    loss.forward(model.forward(x), y)
    assert model.backward(loss.backward(), input_grad=False) is None
    for g, p in zip(grads, model.parameters(), strict=True):
        close(g, p.grad)
    assert full.shape == x.shape and model[0].compute_input_grad


# ----- optimizers against torch.optim ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "make_np", "make_torch"), [
    ("sgd", lambda ps: nn.SGD(ps, lr=0.1, weight_decay=0.01),
     lambda groups: torch.optim.SGD(groups, lr=0.1)),
    ("momentum", lambda ps: nn.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
     lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9)),
    ("nesterov", lambda ps: nn.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)),
    ("adam", lambda ps: nn.Adam(ps, lr=0.01, weight_decay=0.01),
     lambda groups: torch.optim.Adam(groups, lr=0.01)),
    ("adamw", lambda ps: nn.Adam(ps, lr=0.01, weight_decay=0.1, decoupled=True),
     lambda groups: torch.optim.AdamW(groups, lr=0.01)),
])
def test_optimizers_match_torch(rng: np.random.Generator, name: str, make_np, make_torch) -> None:  # noqa: ANN001
    model = nn.Sequential(nn.Linear(5, 6, rng=rng), nn.Tanh(), nn.Linear(6, 3, rng=rng)).astype(np.float64)
    ref = torch_twin(model)
    opt = make_np(model.parameters())
    wd = opt.weight_decay
    # torch applies decay per group: weights decay, biases do not (numpy: Parameter.decay)
    decay = [tp for p, tp in zip(model.parameters(), ref.parameters(), strict=True) if p.decay]
    no_decay = [tp for p, tp in zip(model.parameters(), ref.parameters(), strict=True) if not p.decay]
    ref_opt = make_torch([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}])
    loss = nn.SoftmaxCrossEntropy()
    for step in range(6):
        x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
        if step == 3:  # a schedule changes lr between steps
            opt.lr *= 0.5
            for g in ref_opt.param_groups:
                g["lr"] *= 0.5
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        ref_opt.zero_grad()
        F.cross_entropy(ref(t(x)), torch.tensor(y)).backward()
        ref_opt.step()
    for p, tp in zip(model.parameters(), ref.parameters(), strict=True):
        close(p.value, tp)


def test_optimizer_rejects_bad_settings() -> None:
    p = [nn.Parameter(np.zeros(3), "w")]
    with pytest.raises(ValueError):
        nn.SGD(p, lr=0.0)
    with pytest.raises(ValueError):
        nn.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        nn.Adam(p, weight_decay=-1.0)


# ----- init, save / load -----------------------------------------------------------------------------------

def test_initializers_have_the_intended_scale() -> None:
    rng = np.random.default_rng(0)
    w = nn.he_normal((400, 300), 300, 400, rng)
    assert abs(w.std() - np.sqrt(2 / 300)) < 0.002
    v = nn.xavier_uniform((400, 300), 300, 400, rng)
    bound = np.sqrt(6 / 700)
    assert v.max() <= bound and v.min() >= -bound and abs(v.std() - bound / np.sqrt(3)) < 0.002


def test_save_load_roundtrip(tmp_path: Path, rng: np.random.Generator) -> None:
    model = nn.build_cnn(3, 8, [10], 4, dropout=0.2, seed=1)
    x = rng.standard_normal((5, 8, 8, 3)).astype(np.float32)
    model.train()
    for _ in range(2):  # move the BatchNorm running statistics away from their defaults
        model.forward(x)
    model.eval()
    expected = model.forward(x)
    path = model.save(tmp_path / "model.npz", meta={"classes": ["a", "b", "c", "d"]})
    loaded = nn.Sequential.load(path).eval()
    assert [type(layer) for layer in loaded] == [type(layer) for layer in model]
    np.testing.assert_array_equal(loaded.forward(x), expected)
    assert loaded.num_params() == model.num_params()
    assert nn.read_meta(path)["classes"] == ["a", "b", "c", "d"]
    assert loaded.parameters()[0].value.dtype == np.float32
    with pytest.raises(ValueError):
        nn.build_mlp(5, [3], 2).load_state_dict(model.state_dict())
