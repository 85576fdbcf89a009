"""`--model timm:NAME`: any timm architecture as the backbone, with the user's own `--weights FILE` or, with
`--pretrained`, timm's hub weights once `imgclf weights fetch timm:NAME` has cached them (`imgclf.models.hub`).

The backbone is `timm.create_model(NAME, pretrained=False, num_classes=0)` (its forward gives the pooled
feature vector); building a model never downloads: hub weights come from imgclf's cache or not at all.
Normalization and the default input size come from timm's `pretrained_cfg` for NAME (ImageNet mean/std
where it names none), so they travel with the checkpoint like every other model's. The file loads strictly
into the backbone; a classifier in it (timm's, named by `pretrained_cfg['classifier']`, or an imgclf model's
`head.*`) is ignored, since the task's head is new.

Layer groups (discriminative LRs, freezing): timm's own coarse `group_matcher` (stem, then one group per
stage or block, the final conv/norm with the last), or where a model has none, its parameters by top-level
attribute in order; then merged into at most five contiguous groups, input side first, the extra ones
merged toward the head so the stem stays alone. Measured shares of the backbone's parameters, input side
first: resnet18 stem | layer1 | 2 | 3 | 4 = 0.1, 1.3, 4.7, 18.8, 75.1 %; vit_tiny_patch16_224 stem + block 0 |
1-3 | 4-6 | 7-9 | 10-11 + norm = 11.4, 16.1, 24.2, 24.2, 24.2 %; convnext_atto 0.1, 0.9, 3.7, 39.6, 55.8 %;
efficientnet_lite0 stem | stage 0 | 1-2 | 3-4 | 5-6 + head conv (the hand-made split in
`imgclf.models.pretrained` is one stage later from stage 1 on).
"""

from __future__ import annotations

import difflib
from functools import lru_cache, partial
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.models import hub
from imgclf.models.base import ImageClassifier
from imgclf.models.entry import TIMM_PREFIX, ModelEntry
from imgclf.models.weights import load_strict, read_state_dict

MAX_GROUPS = 5


def _check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + n for n in near)}?" if near else ""
        raise UserError(f"unknown timm model {arch!r}{hint} (timm.list_models() lists them)")


def _cfg(arch: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def _image_size(cfg: dict) -> int | None:
    size = cfg.get("input_size")
    return int(max(size[1:])) if size and len(size) == 3 else None


def _norm(cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The cfg's mean/std for 3-channel input, else ImageNet's."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    return tuple(mean), tuple(std)


def cached_status(arch: str) -> str:
    """'cached' or how to get them, for `imgclf models`; touches no network and reads no weights."""
    try:
        hub.cached_weights(arch, verify=False)
    except UserError:
        return f"not cached (`{hub.fetch_command(arch)}`)"
    return "cached"


@lru_cache(maxsize=32)
def timm_entry(arch: str) -> ModelEntry:
    """A registry entry for timm's `arch`, made on demand; an unknown name is a one-line UserError.

    `has_pretrained` says timm names hub weights for it; whether they are cached is asked at build time
    (`registry.check_pretrained`), since a fetch may come after this entry was made."""
    _check_arch(arch)
    cfg = _cfg(arch)
    on_hub = bool(cfg.get("hf_hub_id"))
    summary = f"timm's {arch}: " + ("hub weights with --pretrained once fetched, or " if on_hub else "") \
        + "your own --weights FILE"
    return ModelEntry(partial(build_timm, arch), summary, has_pretrained=on_hub, default_image_size=_image_size(cfg),
                      weights_status=partial(cached_status, arch) if on_hub else None)


def _top_level(net: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped by top-level attribute (child module or a bare parameter), in registration order."""
    return [[p for _, p in items] for _, items in groupby(net.named_parameters(), key=lambda kv: kv[0].split(".")[0])]


def timm_groups(net: nn.Module, max_groups: int = MAX_GROUPS) -> list[nn.Module]:
    """At most `max_groups` contiguous parameter groups, input side first (see the module docstring).

    Each is a ParameterList holding the network's own Parameter objects; ImageClassifier keeps them in a
    plain list, so they add no state-dict keys.
    """
    from timm.models import group_parameters

    try:
        matcher = net.group_matcher(coarse=True)
        by_id = group_parameters(net, matcher, return_values=True)
        ordered = [by_id[k] for k in sorted(by_id)]
    except (AttributeError, NotImplementedError):
        ordered = _top_level(net)
    ordered = [g for g in ordered if g]
    n = min(max_groups, len(ordered))
    # sizes ascending from the input side: len(ordered) = 9, n = 5 -> 1, 2, 2, 2, 2
    sizes = [len(ordered) // n + (i >= n - len(ordered) % n) for i in range(n)]
    out, start = [], 0
    for size in sizes:
        out.append(nn.ParameterList([p for g in ordered[start:start + size] for p in g]))
        start += size
    return out


def _classifier_prefixes(net: nn.Module) -> tuple[str, ...]:
    name = getattr(net, "pretrained_cfg", {}).get("classifier") or ()
    return (name,) if isinstance(name, str) else tuple(name)


def _user_backbone(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """The file's backbone tensors: an imgclf model's `features.*`, else the file less timm's classifier."""
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    own = net.state_dict()
    heads = _classifier_prefixes(net)
    return {k: v for k, v in state.items()
            if k in own or not any(k == h or k.startswith(h + ".") for h in heads)}


def load_timm_weights(model: ImageClassifier, arch: str, path: str | Path,
                      origin: str | None = None) -> ImageClassifier:
    """Load a user's weights file into `model.features` (timm's `arch`), strictly; the head stays as built.
    `origin` names the file in a mismatch message (default: its path)."""
    tensors = _user_backbone(read_state_dict(path), model.features)
    load_strict(model.features, tensors, origin or f"weights file {path}", f"timm's {arch} backbone")
    return model


def build_timm(arch: str, num_classes: int, *, pretrained: bool = False, weights: str | None = None,
               dropout: float = 0.0, width: float = 1.0) -> ImageClassifier:
    """timm's `arch` with a fresh `num_classes` head; backbone from --weights FILE, else with `pretrained` the
    cached hub weights (sha256 checked again; never a download), else random."""
    import timm

    if width != 1.0:
        raise UserError(f"--width applies to the from-scratch CNNs only; {TIMM_PREFIX}{arch} has a fixed width")
    if pretrained and weights is None:
        weights = str(hub.cached_weights(arch)[0])
    _check_arch(arch)
    net = timm.create_model(arch, pretrained=False, num_classes=0)
    num_features = getattr(net, "head_hidden_size", None) or net.num_features
    mean, std = _norm(dict(net.pretrained_cfg))
    model = ImageClassifier(net, num_features, num_classes, dropout, mean=mean, std=std, groups=timm_groups(net))
    if weights is not None:
        load_timm_weights(model, arch, weights)
    return model


def check_hub_file(arch: str, path: Path, origin: str) -> None:
    """A fetched file must load strictly into timm's `arch` backbone (the file's classifier aside)."""
    load_timm_weights(build_timm(arch, 2), arch, path, origin)


def fetch_weights(name: str, hub_url: str | None = None, force: bool = False) -> tuple[dict[str, Any], bool]:
    """`imgclf weights fetch timm:NAME`: download, check and cache NAME's hub weights (see `imgclf.models.hub`)."""
    if not name.startswith(TIMM_PREFIX):
        raise UserError(f"weights fetch takes {TIMM_PREFIX}NAME (a timm model with hub weights), got {name!r}")
    arch = name.removeprefix(TIMM_PREFIX)
    _check_arch(arch)
    return hub.fetch(arch, partial(check_hub_file, arch), hub_url=hub_url, force=force)


def pretrained_record(arch: str) -> dict[str, Any]:
    """What config.yaml records of the cached hub weights a `--pretrained` run starts from."""
    path, record = hub.cached_weights(arch, verify=False)
    keep = ("model", "repo_id", "filename", "revision", "commit", "url", "sha256", "size", "fetched_at")
    return {**{k: record[k] for k in keep if k in record}, "path": str(path)}
