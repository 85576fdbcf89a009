"""Layers written in plain NumPy: each forward caches what its backward needs.

Conventions:
- weights use PyTorch's layouts, so they compare and copy one to one: Linear (out, in), Conv2D
  (out, in, kh, kw);
- image activations are channels-last, NHWC, like the uint8 images the data layer hands over: im2col
  then copies runs of contiguous channels and a convolution's output needs no transpose (measured: a
  32 -> 64 channel 3x3 convolution on 16x16 maps, forward + backward, 1.6x faster than NCHW). Flatten
  therefore orders features H, W, C; the tests permute to compare with PyTorch's NCHW.
- `backward(dL/dy)` returns dL/dx and stores each parameter's gradient in `Parameter.grad`
  (overwritten, not accumulated: a layer appears once in a Sequential, so nothing needs summing);
- float32 for training, float64 for gradient checks (`Layer.astype`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from imgclf.numpy_nn.init import get_initializer


class Parameter:
    """A trainable array with its gradient; `decay` says whether weight decay applies (not to biases/norms)."""

    __slots__ = ("value", "grad", "name", "decay")

    def __init__(self, value: np.ndarray, name: str, decay: bool = True) -> None:
        self.value = value
        self.grad = np.zeros_like(value)
        self.name = name
        self.decay = decay

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={self.value.shape}, dtype={self.value.dtype})"


LAYER_TYPES: dict[str, type[Layer]] = {}


class Layer:
    """Base class: forward / backward / parameters, plus the bits save/load and gradcheck rely on."""

    training: bool = True
    # False: backward may skip dL/dx and return None (set by Sequential for its first layer in training,
    # where nothing consumes it; for a first Conv2D that saves the whole col2im).
    compute_input_grad: bool = True
    buffer_names: ClassVar[tuple[str, ...]] = ()  # non-trainable state saved with the weights

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            LAYER_TYPES[cls.__name__] = cls

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def parameters(self) -> list[Parameter]:
        return []

    def buffers(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.buffer_names}

    def set_buffer(self, name: str, value: np.ndarray) -> None:
        if name not in self.buffer_names:
            raise KeyError(f"{type(self).__name__} has no buffer {name!r}")
        setattr(self, name, np.array(value, dtype=getattr(self, name).dtype))

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer (weights excluded); saved in model files."""
        return {}

    def train(self, mode: bool = True) -> Layer:
        self.training = mode
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def astype(self, dtype: Any) -> Layer:
        """Cast parameters and buffers (float64 for gradient checks, float32 for speed)."""
        for p in self.parameters():
            p.value = p.value.astype(dtype)
            p.grad = np.zeros_like(p.value)
        for name in self.buffer_names:
            setattr(self, name, getattr(self, name).astype(dtype))
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Linear(Layer):
    """y = x @ W.T + b, the fully connected layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he",
                 rng: np.random.Generator | int | None = None, dtype: Any = np.float32) -> None:
        self.in_features, self.out_features, self.init = in_features, out_features, init
        w = get_initializer(init)((out_features, in_features), in_features, out_features, _rng(rng))
        self.weight = Parameter(w.astype(dtype), "weight")
        self.bias = Parameter(np.zeros(out_features, dtype=dtype), "bias", decay=False) if bias else None
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        y = x @ self.weight.value.T
        if self.bias is not None:
            y += self.bias.value
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy @ W
        dL/dW = (dL/dy).T @ x,  dL/db = sum over the batch of dL/dy"""
        self.weight.grad = grad.T @ self._x
        if self.bias is not None:
            self.bias.grad = grad.sum(axis=0)
        return grad @ self.weight.value if self.compute_input_grad else None

    def parameters(self) -> list[Parameter]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "init": self.init}


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> tuple[np.ndarray, int, int]:
    """Unfold NHWC patches into rows, (N*oh*ow, kh*kw*C), so a convolution becomes one matrix product.

    Built with kh*kw strided slice copies into one buffer: each copy moves whole runs of C contiguous
    values, which is far faster in NumPy than gathering through a 6-D transposed window view.
    """
    if padding:
        x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit a {h}x{w} input (padding {padding})")
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
    return cols.reshape(n * oh * ow, kh * kw * c), oh, ow


def col2im(cols: np.ndarray, x_shape: tuple[int, ...], kh: int, kw: int, stride: int, padding: int,
           oh: int, ow: int) -> np.ndarray:
    """The adjoint of im2col: add every patch row back onto the NHWC pixels it was read from."""
    n, h, w, c = x_shape
    patches = cols.reshape(n, oh, ow, kh, kw, c)
    dx = np.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] += patches[:, :, :, i, j, :]
    if padding:
        dx = dx[:, padding:padding + h, padding:padding + w, :]
    return dx


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) of NHWC images by im2col + one matrix product.

    Weights keep PyTorch's (out, in, kh, kw) layout, so they compare and copy one to one; only the
    activations are channels-last (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, init: str = "he", rng: np.random.Generator | int | None = None,
                 dtype: Any = np.float32) -> None:
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.init = stride, padding, init
        fan_in = in_channels * kernel_size * kernel_size
        fan_out = out_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        w = get_initializer(init)(shape, fan_in, fan_out, _rng(rng))
        self.weight = Parameter(w.astype(dtype), "weight")
        self.bias = Parameter(np.zeros(out_channels, dtype=dtype), "bias", decay=False) if bias else None
        self._cache: tuple[np.ndarray, tuple[int, ...], int, int] | None = None

    def _w_mat(self) -> np.ndarray:
        """(out, in, kh, kw) -> (kh*kw*in, out), the row order im2col produces."""
        return self.weight.value.transpose(2, 3, 1, 0).reshape(-1, self.out_channels)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[3] != self.in_channels:
            raise ValueError(f"Conv2D expects NHWC input (N, H, W, {self.in_channels}), got {x.shape}")
        k = self.kernel_size
        cols, oh, ow = im2col(x, k, k, self.stride, self.padding)
        self._cache = (cols, x.shape, oh, ow)
        y = cols @ self._w_mat()  # (N*oh*ow, Cout)
        if self.bias is not None:
            y += self.bias.value
        return y.reshape(x.shape[0], oh, ow, self.out_channels)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = col2im(dL/dy @ W_mat.T)   (W_mat = W as a (kh*kw*Cin, Cout) matrix)
        dL/dW = im2col(x).T @ dL/dy,  dL/db = sum over batch and positions of dL/dy"""
        cols, x_shape, oh, ow = self._cache
        g = grad.reshape(-1, self.out_channels)  # (N*oh*ow, Cout)
        k = self.kernel_size
        dw_mat = cols.T @ g  # (kh*kw*Cin, Cout)
        self.weight.grad = dw_mat.reshape(k, k, self.in_channels, self.out_channels).transpose(3, 2, 0, 1)
        if self.bias is not None:
            self.bias.grad = g.sum(axis=0)
        if not self.compute_input_grad:
            return None
        return col2im(g @ self._w_mat().T, x_shape, k, k, self.stride, self.padding, oh, ow)

    def parameters(self) -> list[Parameter]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "bias": self.bias is not None, "init": self.init}


class MaxPool2D(Layer):
    """Max over k x k windows of NHWC maps (floor mode, no padding).

    The gradient goes to the first maximum of each window in row-major order, as in PyTorch.
    """

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size
        self._cache: tuple[np.ndarray, tuple[int, ...]] | None = None

    def _offsets(self, oh: int, ow: int) -> list[tuple[slice, slice]]:
        k, s = self.kernel_size, self.stride
        return [(slice(i, i + s * oh, s), slice(j, j + s * ow, s)) for i in range(k) for j in range(k)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        k, s = self.kernel_size, self.stride
        oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"MaxPool2D({k}) does not fit an input of shape {x.shape} (NHWC)")
        offsets = self._offsets(oh, ow)
        best = x[:, offsets[0][0], offsets[0][1], :].copy()
        idx = np.zeros(best.shape, dtype=np.int8 if k * k < 128 else np.int32)
        for n, (rows, cols) in enumerate(offsets[1:], start=1):
            v = x[:, rows, cols, :]
            better = v > best  # strict: ties keep the earlier position
            np.copyto(best, v, where=better)
            idx[better] = n
        self._cache = (idx, x.shape)
        return best

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy routed to the arg-max of each window, 0 elsewhere
        (no parameters)"""
        idx, x_shape = self._cache
        dx = np.zeros(x_shape, dtype=grad.dtype)
        for n, (rows, cols) in enumerate(self._offsets(*idx.shape[1:3])):
            dx[:, rows, cols, :] += np.where(idx == n, grad, 0)
        return dx

    def config(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "stride": self.stride}


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)), in C order like torch.flatten(x, 1)."""

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy reshaped back to the input's shape
        (no parameters)"""
        return grad.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout: zero each unit with probability p in training and scale the rest by 1/(1-p).

    `frozen` makes forward reuse the last mask, so a gradient check sees one deterministic function.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = _rng(rng)
        self.frozen = False
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        if not (self.frozen and self._mask is not None and self._mask.shape == x.shape):
            keep = self.rng.random(x.shape) >= self.p
            self._mask = keep.astype(x.dtype) / np.asarray(1.0 - self.p, dtype=x.dtype)
        return x * self._mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = dL/dy * mask / (1 - p)   (identity in eval mode)
        (no parameters)"""
        return grad if self._mask is None else grad * self._mask

    def config(self) -> dict[str, Any]:
        return {"p": self.p}


class _BatchNorm(Layer):
    """Normalize each channel over all other axes, then scale by gamma and shift by beta.

    Training uses the batch statistics (biased variance) and updates running estimates with the unbiased
    variance, exactly as PyTorch does; eval uses the running estimates.
    """

    buffer_names = ("running_mean", "running_var")
    expected_ndim: tuple[int, ...] = (2,)
    channel_axis = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: Any = np.float32) -> None:
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.gamma = Parameter(np.ones(num_features, dtype=dtype), "gamma", decay=False)
        self.beta = Parameter(np.zeros(num_features, dtype=dtype), "beta", decay=False)
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)
        self._cache: tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...], bool] | None = None

    def _axes(self, x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(axes reduced over, broadcast shape of a per-channel vector)."""
        axis = self.channel_axis % x.ndim
        if x.ndim not in self.expected_ndim or x.shape[axis] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input of shape {x.shape}")
        shape = [1] * x.ndim
        shape[axis] = self.num_features
        return tuple(a for a in range(x.ndim) if a != axis), tuple(shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        axes, shape = self._axes(x)
        if self.training:
            mean = x.mean(axis=axes)
            xc = x - mean.reshape(shape)
            var = np.mean(xc * xc, axis=axes)
            m = x.size // self.num_features
            mom = self.momentum
            self.running_mean = ((1 - mom) * self.running_mean + mom * mean).astype(self.running_mean.dtype)
            unbiased = var * (m / max(m - 1, 1))
            self.running_var = ((1 - mom) * self.running_var + mom * unbiased).astype(self.running_var.dtype)
        else:
            xc = x - self.running_mean.reshape(shape).astype(x.dtype)
            var = self.running_var
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        xhat = xc * inv_std.reshape(shape)
        self._cache = (xhat, inv_std, axes, shape, self.training)
        return xhat * self.gamma.value.reshape(shape) + self.beta.value.reshape(shape)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """dL/dx = gamma/sigma * (g - mean(g) - xhat * mean(g * xhat)), g = dL/dy (eval: gamma/sigma * g)
        dL/dgamma = sum(dL/dy * xhat),  dL/dbeta = sum(dL/dy)   (sums over all axes but the channel)"""
        xhat, inv_std, axes, shape, training = self._cache
        self.gamma.grad = (grad * xhat).sum(axis=axes)
        self.beta.grad = grad.sum(axis=axes)
        scale = (self.gamma.value * inv_std).reshape(shape)
        if not training:
            return grad * scale
        m = grad.size // self.num_features
        mean_g = (self.beta.grad / m).reshape(shape)
        mean_gx = (self.gamma.grad / m).reshape(shape)
        return scale * (grad - mean_g - xhat * mean_gx)

    def parameters(self) -> list[Parameter]:
        return [self.gamma, self.beta]

    def config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs (after Linear layers), as torch.nn.BatchNorm1d."""

    expected_ndim = (2, 3)
    channel_axis = 1


class BatchNorm2d(_BatchNorm):
    """Batch normalization of NHWC maps (after Conv2D layers): statistics per channel over N, H and W."""

    expected_ndim = (4,)
    channel_axis = -1
