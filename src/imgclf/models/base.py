"""ImageClassifier: the shape every model in the registry shares.

Models take float images in [0, 1] (N, 3, H, W) and normalize inside, so the exact preprocessing of the
weights travels with the checkpoint and the ONNX file, and inference needs no separate constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def classifier(num_features: int, num_classes: int) -> nn.Linear:
    """A zero-initialised linear head: every class starts equally likely (loss = ln C), so the first
    steps are not spent undoing large random logits."""
    linear = nn.Linear(num_features, num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class ImageClassifier(nn.Module):
    """normalize -> features (backbone, N x C feature vector) -> head (dropout + linear).

    `layer_groups` lists the backbone's parameters from the input side to the output side; fine-tuning
    uses it to freeze and to give early layers lower learning rates.
    """

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25),
                 groups: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.features = features
        self.num_features = num_features
        self.head = nn.Sequential(nn.Dropout(dropout), classifier(num_features, num_classes))
        self._groups = list(groups) if groups is not None else [features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature vector (N, num_features) of [0, 1] images: what the head sees."""
        return self.features((x - self.mean) / self.std)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Backbone parameter groups, input side first (the head is not among them)."""
        return [list(g.parameters()) for g in self._groups]
