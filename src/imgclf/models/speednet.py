"""SpeedNet: the from-scratch net of the CIFAR speed run (training/speedrun.py), as a registry model.

The speed run trains it with its own engine; wrapped in `SpeedClassifier` (standardization inside, like
every registry model) its checkpoint serves, predicts and exports like any other. `speednet` is the fast
preset's architecture and `speednet_long` the long one's; --width scales the channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from imgclf.errors import UserError
from imgclf.models.registry import register

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
ARCHITECTURES = {"speednet": {"widths": (64, 256, 256), "depth": 2},
                 "speednet_long": {"widths": (128, 512, 512), "depth": 3}}


def patch_whitening(x: torch.Tensor, kernel: int, eps: float) -> torch.Tensor:
    """Conv filters (2 * C*k*k, C, k, k) that whiten k x k patches of `x`: the eigenvectors of the patches'
    second-moment matrix scaled by 1/sqrt(eigenvalue + eps), and their negatives (GELU keeps both signs).
    The input is standardized, so the second moment is close to the covariance."""
    c = x.shape[1]
    patches = x.float().unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel).double()
    moment = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending: flip so the strongest come first
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
    filters = filters.reshape(-1, c, kernel, kernel).float()
    return torch.cat([filters, -filters])


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1 (only the bias learns) and whose statistics move fast."""

    def __init__(self, channels: int, keep: float) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - keep)
        self.weight.requires_grad_(False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 conv whose first c_in filters start as the identity (dirac), so a fresh block passes its input."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(c_in, c_out)])
    return conv


class ConvBlock(nn.Module):
    """conv -> max-pool -> BN -> GELU, then (depth - 1) x (conv -> BN -> GELU); a residual when depth >= 3."""

    def __init__(self, c_in: int, c_out: int, depth: int, bn_keep: float) -> None:
        super().__init__()
        self.first = nn.Sequential(conv3x3(c_in, c_out), nn.MaxPool2d(2), FrozenScaleBatchNorm(c_out, bn_keep),
                                   nn.GELU())
        rest: list[nn.Module] = []
        for _ in range(depth - 1):
            rest += [conv3x3(c_out, c_out), FrozenScaleBatchNorm(c_out, bn_keep), nn.GELU()]
        self.rest = nn.Sequential(*rest)
        self.residual = depth >= 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        return x + self.rest(x) if self.residual else self.rest(x)


class SpeedNet(nn.Module):
    """whitening conv -> GELU -> three ConvBlocks -> global max-pool -> linear head scaled down. Takes
    standardized images (see `SpeedClassifier` for [0, 1] ones)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), depth: int = 2,
                 bn_keep: float = 0.6, whiten_kernel: int = 2, head_scale: float = 1 / 9) -> None:
        super().__init__()
        k = whiten_kernel
        self.whiten = nn.Conv2d(3, 2 * 3 * k * k, k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        w1, w2, w3 = widths
        self.blocks = nn.Sequential(ConvBlock(self.whiten.out_channels, w1, depth, bn_keep),
                                    ConvBlock(w1, w2, depth, bn_keep), ConvBlock(w2, w3, depth, bn_keep))
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.head_scale = head_scale

    def init_whitening(self, x: torch.Tensor, eps: float) -> None:
        with torch.no_grad():
            self.whiten.weight.copy_(patch_whitening(x, self.whiten.kernel_size[0], eps))
            self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.gelu(self.whiten(x)))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.head_scale


class SpeedClassifier(nn.Module):
    """A SpeedNet behind the registry's interface: [0, 1] images in, standardized with the CIFAR-10
    statistics inside, so predict, serve and ONNX need no constants of their own. Not an ImageClassifier:
    it has no pretrained backbone to freeze or fine-tune."""

    def __init__(self, net: SpeedNet) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def scaled_widths(name: str, width: float) -> tuple[int, int, int]:
    w1, w2, w3 = (max(8, round(w * width)) for w in ARCHITECTURES[name]["widths"])
    return w1, w2, w3


def _builder(name: str):  # noqa: ANN202 - a registry builder
    def build(num_classes: int, *, pretrained: bool = False, weights: str | None = None, dropout: float = 0.0,
              width: float = 1.0) -> SpeedClassifier:
        if weights is not None:
            raise UserError(f"{name} is trained from scratch by the speed run; --weights is not supported for it")
        return SpeedClassifier(SpeedNet(num_classes, scaled_widths(name, width), ARCHITECTURES[name]["depth"]))
    return build


SPEEDNET_MIN_INPUT = 9  # a 2x2 patch conv, then three 2x2 pools
register("speednet", "the CIFAR speed run's net (whitened 2x2 patches, 3 conv blocks); train it with "
         "--recipe speedrun", min_input_size=SPEEDNET_MIN_INPUT)(_builder("speednet"))
register("speednet_long", "the long speed run's wider, residual net; train it with --recipe speedrun-long",
         min_input_size=SPEEDNET_MIN_INPUT)(_builder("speednet_long"))
