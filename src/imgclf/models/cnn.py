"""From-scratch CNNs: a fast net for small images, a ResNet-18 adapted to 32x32, and a tiny test net."""

from __future__ import annotations

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import register


def _load_user_weights(model: ImageClassifier, weights: str | None) -> ImageClassifier:
    """Load a user's state dict (a whole model's, or the backbone's); the head may differ in size."""
    if weights is None:
        return model
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"weights file not found: {weights}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read weights file {weights}: {exc.__class__.__name__}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith("head.")}
    backbone = [k for k in own if not k.startswith("head.") and k not in ("mean", "std")]
    missing = [k for k in backbone if k not in usable]
    if missing:
        raise UserError(f"weights file {weights} does not match the model: {len(missing)} of {len(backbone)} "
                        f"backbone tensors missing or of another shape (first: {missing[0]})")
    model.load_state_dict(usable, strict=False)
    return model


BN_MOMENTUM = 0.4  # running statistics that keep up with fast early training (torch's default 0.1 lags
                   # so far behind that eval-mode logits after the first epoch are 10-100x the training ones)


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM), nn.GELU())


class FastBlock(nn.Module):
    """conv -> 2x2 max-pool -> conv (+ residual conv): the airbench-style stage, cheap at low resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM)
        self.conv2 = conv_bn(c_out, c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return x + self.conv2(x)


def _widths(base: tuple[int, ...], width: float) -> list[int]:
    return [max(8, int(round(c * width / 8)) * 8) for c in base]


class Scale(nn.Module):
    """Multiplies by a constant: keeps max-pooled features (mean about 1.5 over hundreds of channels) from
    giving the head an effective learning rate so large that the first steps overshoot."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@register("fastcnn", "fast small CNN for 32x32 images (airbench-style stages); the from-scratch default",
          min_input_size=8)  # three 2x2 max-pools
def fastcnn(num_classes: int, *, pretrained: bool = False, weights: str | None = None, dropout: float = 0.0,
            width: float = 1.0) -> ImageClassifier:
    # Sized for 2 CPU cores: channels are cheap at 4x4, so the last stage is wide (0.8 M parameters, 1,550 img/s
    # in bf16; with 128 there it was 2,100 img/s but 1 point less in 600 s). --set width=2 or 4 on a GPU.
    c0, c1, c2, c3 = _widths((16, 32, 64, 256), width)
    stem = conv_bn(3, c0)
    stages = [FastBlock(c0, c1), FastBlock(c1, c2), FastBlock(c2, c3)]
    features = nn.Sequential(stem, *stages, nn.AdaptiveMaxPool2d(1), nn.Flatten(), Scale(1 / 8))
    model = ImageClassifier(features, c3, num_classes, dropout, groups=[stem, *stages])
    return _load_user_weights(model, weights)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a (projected when needed) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@register("resnet18", "ResNet-18 adapted to 32x32 (3x3 stem, no max-pool)")
def resnet18(num_classes: int, *, pretrained: bool = False, weights: str | None = None, dropout: float = 0.0,
             width: float = 1.0) -> ImageClassifier:
    c = _widths((64, 128, 256, 512), width)
    stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
    layers, c_in = [], c[0]
    for i, c_out in enumerate(c):
        stride = 1 if i == 0 else 2
        layers.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)))
        c_in = c_out
    features = nn.Sequential(stem, *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ImageClassifier(features, c[-1], num_classes, dropout, groups=[stem, *layers])
    return _load_user_weights(model, weights)


@register("tiny", "a tiny CNN for tests and smoke runs", min_input_size=2)
def tiny(num_classes: int, *, pretrained: bool = False, weights: str | None = None, dropout: float = 0.0,
         width: float = 1.0) -> ImageClassifier:
    c0, c1 = _widths((8, 16), width)
    stem = conv_bn(3, c0)
    body = nn.Sequential(nn.MaxPool2d(2), conv_bn(c0, c1))
    features = nn.Sequential(stem, body, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = ImageClassifier(features, c1, num_classes, dropout, groups=[stem, body])
    return _load_user_weights(model, weights)
