"""Model registry: name -> builder, in the manner of timm's create_model.

Besides the registered names, `timm:NAME` builds any timm architecture (see `imgclf.models.timm_any`);
those entries are made on demand, not registered one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imgclf.errors import UserError
from imgclf.models.base import ImageClassifier
from imgclf.models.entry import TIMM_PREFIX, Builder, ModelEntry
from imgclf.models.hub import cached_weights
from imgclf.models.timm_any import pretrained_record, timm_entry

_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, summary: str, has_pretrained: bool = False, default_image_size: int | None = None,
             weights_status: Callable[[], str] | None = None, min_input_size: int = 1) -> Callable[[Builder], Builder]:
    """Decorator: make `builder(num_classes, *, pretrained, weights, dropout, width)` buildable by name."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = ModelEntry(builder, summary, has_pretrained, default_image_size, weights_status,
                                     min_input_size)
        return builder

    return wrap


def model_entry(name: str) -> ModelEntry:
    """The registered entry, or for `timm:NAME` one made from timm's own config (unknown NAME: UserError)."""
    if name.startswith(TIMM_PREFIX):
        return timm_entry(name.removeprefix(TIMM_PREFIX))
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}, "
                        f"or {TIMM_PREFIX}NAME for any timm architecture (--weights FILE, or --pretrained once "
                        "fetched)")
    return _REGISTRY[name]


def check_pretrained(name: str, pretrained: bool) -> ModelEntry:
    """The model's entry; asking for ImageNet weights a model does not ship is a user error. For `timm:NAME`
    they must be in imgclf's cache (a run never downloads): else one line naming `imgclf weights fetch`."""
    entry = model_entry(name)
    if pretrained and name.startswith(TIMM_PREFIX):
        cached_weights(name.removeprefix(TIMM_PREFIX), verify=False)
    elif pretrained and not entry.has_pretrained:
        with_weights = sorted(n for n, e in _REGISTRY.items() if e.has_pretrained)
        raise UserError(f"model {name!r} has no local pretrained weights (models with weights: "
                        f"{', '.join(with_weights)}); pass --weights FILE to load your own")
    return entry


def weights_record(name: str, pretrained: bool, weights: str | None) -> dict[str, Any]:
    """What the plan notes (config.extra) of the weights a run starts from: for `timm:NAME --pretrained`, the
    cached hub file's provenance (repository, commit, sha256) under `pretrained_weights`; else nothing."""
    if pretrained and weights is None and name.startswith(TIMM_PREFIX):
        return {"pretrained_weights": pretrained_record(name.removeprefix(TIMM_PREFIX))}
    return {}


def build_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | None = None,
                dropout: float = 0.0, width: float | None = 1.0) -> ImageClassifier:
    """Build a registered model with a head for `num_classes`; pretrained weights only where shipped. Width
    None (a config not yet resolved) is the model's own, 1.0."""
    entry = check_pretrained(name, pretrained)
    return entry.builder(num_classes, pretrained=pretrained, weights=weights, dropout=dropout,
                         width=1.0 if width is None else width)


def list_models() -> dict[str, str]:
    return {name: entry.summary for name, entry in sorted(_REGISTRY.items())}
