"""What the registry holds for a model name: its builder and what the plan needs to know about it.

Its own module, below both the registry and `imgclf.models.timm_any` (which makes entries on demand for
`timm:NAME`), so the registry can ask timm_any for an entry without timm_any importing the registry back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgclf.models.base import ImageClassifier

Builder = Callable[..., ImageClassifier]
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelEntry:
    builder: Builder
    summary: str
    has_pretrained: bool = False
    default_image_size: int | None = None  # input size the pretrained weights expect, when they have one
    weights_status: Callable[[], str] | None = None  # 'installed' or why not, for models with has_pretrained
    min_input_size: int = 1  # the smallest square input its stride-2 stages and pools accept (the plan never
                             # trains or evaluates it below this: 8x8 digits at --low-res 0.5 would be 6x6)
