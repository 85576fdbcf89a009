"""Sequential: a chain of layers with backprop in reverse order, and a self-describing .npz format.

The file holds every parameter and buffer under "<index>.<name>" plus a JSON "__spec__" with each
layer's type and constructor arguments, so `Sequential.load(path)` rebuilds the network without
the code that created it, and an optional JSON "__meta__" (class names, input normalization...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.fileio import write_with
from imgclf.numpy_nn.activations import ReLU  # importing activations registers its layers for `load`
from imgclf.numpy_nn.layers import (
    LAYER_TYPES,
    BatchNorm1d,
    BatchNorm2d,
    Conv2D,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2D,
    Parameter,
)


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse, each turning dL/dy into dL/dx."""

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        self.layers: list[Layer] = list(layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """dL/dx = J_1^T ... J_n^T dL/dy   (the chain rule, last layer first)
        dL/dtheta_i is filled in by layer i's own backward"""
        first = self.layers[0] if self.layers else None
        if first is not None:
            first.compute_input_grad = input_grad  # training passes False: nobody reads dL/d(images)
        try:
            for layer in reversed(self.layers):
                grad = layer.backward(grad)
        finally:
            if first is not None:
                first.compute_input_grad = True
        return grad

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        return [(f"{i}.{p.name}", p) for i, layer in enumerate(self.layers) for p in layer.parameters()]

    def num_params(self) -> int:
        return int(sum(p.value.size for p in self.parameters()))

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def astype(self, dtype: Any) -> Sequential:
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    # ----- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed "<layer index>.<name>"."""
        state = {}
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                state[f"{i}.{p.name}"] = p.value.copy()
            for name, value in layer.buffers().items():
                state[f"{i}.{name}"] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the layers; every key must exist and every shape must match."""
        expected = set()
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                key = f"{i}.{p.name}"
                expected.add(key)
                value = np.asarray(state[key])
                if value.shape != p.value.shape:
                    raise ValueError(f"{key}: shape {value.shape} in the state, {p.value.shape} in the model")
                p.value = value.astype(p.value.dtype, copy=True)
            for name in layer.buffers():
                key = f"{i}.{name}"
                expected.add(key)
                layer.set_buffer(name, state[key])
        unexpected = sorted(set(state) - expected)
        if unexpected:
            raise ValueError(f"unexpected keys in the state: {unexpected[:5]}")

    def spec(self) -> list[dict[str, Any]]:
        return [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers]

    @classmethod
    def from_spec(cls, spec: list[dict[str, Any]]) -> Sequential:
        layers = []
        for entry in spec:
            layer_type = LAYER_TYPES.get(entry["type"])
            if layer_type is None or layer_type is Sequential:
                raise ValueError(f"unknown layer type {entry['type']!r} in the model file")
            layers.append(layer_type(**entry.get("config", {})))
        return cls(*layers)

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write weights + architecture (+ JSON-able `meta`) to `path` (.npz), atomically via a temp file."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = dict(self.state_dict())
        arrays["__spec__"] = np.array(json.dumps(self.spec()))
        arrays["__meta__"] = np.array(json.dumps(meta or {}))
        write_with(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Sequential:
        """Rebuild the network saved by `save` (architecture and weights, float32 unless saved otherwise)."""
        with np.load(path, allow_pickle=False) as data:
            model = cls.from_spec(json.loads(str(data["__spec__"])))
            state = {k: data[k] for k in data.files if not k.startswith("__")}
        dtypes = {a.dtype for a in state.values()}
        if len(dtypes) == 1:
            model.astype(dtypes.pop())
        model.load_state_dict(state)
        return model


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `meta` dict stored by `Sequential.save` (empty when none was given)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__meta__"])) if "__meta__" in data.files else {}


def build_mlp(input_dim: int, hidden: list[int], num_classes: int, dropout: float = 0.0,
              batchnorm: bool = False, seed: int | None = 0) -> Sequential:
    """Linear -> [BatchNorm1d] -> ReLU -> [Dropout] per hidden size, then a Linear classifier (He init)."""
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    width = input_dim
    for h in hidden:
        layers.append(Linear(width, h, bias=not batchnorm, rng=rng))
        if batchnorm:
            layers.append(BatchNorm1d(h))
        layers.append(ReLU())
        if dropout > 0:
            layers.append(Dropout(dropout, rng=rng))
        width = h
    layers.append(Linear(width, num_classes, init="xavier", rng=rng))
    return Sequential(*layers)


def build_cnn(in_channels: int, image_size: int, hidden: list[int], num_classes: int, dropout: float = 0.0,
              channels: tuple[int, ...] = (32, 64), seed: int | None = 0) -> Sequential:
    """A small CNN: per stage Conv3x3 -> BatchNorm2d -> ReLU -> MaxPool2, then the MLP head on the flat map.

    Stages stop early if the map would shrink below 2 x 2 (8 x 8 digits get two stages, CIFAR's 32 x 32 too).
    """
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    c, size = in_channels, image_size
    for out in channels:
        if size // 2 < 2:
            break
        layers += [Conv2D(c, out, 3, padding=1, bias=False, rng=rng), BatchNorm2d(out), ReLU(), MaxPool2D(2)]
        c, size = out, size // 2
    layers.append(Flatten())
    head = build_mlp(c * size * size, hidden, num_classes, dropout=dropout, seed=rng.integers(2**31))
    return Sequential(*layers, *head.layers)
