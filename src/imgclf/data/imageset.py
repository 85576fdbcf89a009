"""ImageSet (uint8 N,H,W,3 + labels + class names) and the seeded, per-class splits made from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from imgclf.errors import UserError


@dataclass
class ImageSet:
    """Decoded images in memory: `images` uint8 (N, H, W, 3), `labels` int64 (N,), `classes` in label order."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


@dataclass
class FileSet:
    """Images left on disk (for data that does not fit in memory): paths decoded by the streaming loader."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    image_size: int = 64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> FileSet:
        return FileSet([self.paths[i] for i in index], self.labels[index], self.classes, self.image_size)


@dataclass
class Splits:
    """train / val / test of one source; test is None where the source has none."""

    train: ImageSet | FileSet
    val: ImageSet | FileSet
    test: ImageSet | FileSet | None
    source: str = ""

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): a seeded split that holds out `fraction` of every class."""
    index = np.arange(len(labels))
    try:
        kept, held = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise UserError(f"cannot split {len(labels)} images {fraction:.0%} per class: {exc}") from None
    return np.sort(kept), np.sort(held)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-balanced subset of `size` images (all of them when size >= N)."""
    if size >= len(labels):
        return np.arange(len(labels))
    num_classes = len(np.unique(labels))
    if size < num_classes:
        raise UserError(f"subset of {size} images is smaller than the {num_classes} classes")
    kept, _ = stratified_split(labels, 1.0 - size / len(labels), seed)
    return kept


def check_usable(splits: Splits) -> Splits:
    """Refuse data a classifier cannot learn from: fewer than two classes or an empty split."""
    if len(splits.classes) < 2:
        raise UserError(f"{splits.source}: need at least 2 classes, found {len(splits.classes)}")
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None and len(part) == 0:
            raise UserError(f"{splits.source}: the {name} split has no readable images")
    return splits
