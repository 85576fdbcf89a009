"""ImageSet (uint8 N,H,W,3 + labels + class names) and the seeded, per-class splits made from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from imgclf.errors import UserError


@dataclass
class ImageSet:
    """Decoded images in memory: `images` uint8 (N, H, W, 3), `labels` int64 (N,) or, for multi-label data,
    float32 multi-hot (N, C); `classes` in label order."""

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
    """train / val / test of one source; test is None where the source has none. `skipped` names the
    files left out because they are not readable images (relative to the source, printable: bytes that are
    not UTF-8 as \\xNN), so a run can record them; a cache hit restores them."""

    train: ImageSet | FileSet
    val: ImageSet | FileSet
    test: ImageSet | FileSet | None
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def multilabel(self) -> bool:
        """Several labels an image (multi-hot rows, from a multi-label CSV) rather than one class index."""
        return np.ndim(self.train.labels) == 2


def stratified_split(labels: np.ndarray, fraction: float, seed: int,
                     classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): a seeded split that holds out `fraction` of every class.

    Data too thin to split is refused naming the class (from `classes`, else its label), not sklearn's index.
    Multi-hot labels (N, C) have no one class to stratify by: they get a seeded shuffle split.
    """
    if np.ndim(labels) == 2:
        return _shuffle_split(len(labels), fraction, seed)
    _check_splittable(labels, fraction, classes)
    index = np.arange(len(labels))
    try:
        kept, held = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise UserError(f"cannot split {len(labels)} images {fraction:.0%} per class: {exc}") from None
    return np.sort(kept), np.sort(held)


def _shuffle_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) of a seeded shuffle; the held-out side rounds up, as sklearn's does."""
    held = math.ceil(fraction * n)
    if held < 1 or held >= n:
        raise UserError(f"cannot split {n} images {fraction:.0%}: one side would be empty (change --val-fraction "
                        "or add images)")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def _check_splittable(labels: np.ndarray, fraction: float, classes: list[str] | None) -> None:
    """The two conditions a stratified split needs, as user errors: every class has 2 images, and both
    sides of the split hold at least one image per class."""
    present, counts = np.unique(labels, return_counts=True)
    names = [classes[i] if classes is not None else str(i) for i in present]
    thin = [(n, c) for n, c in zip(names, counts, strict=True) if c < 2]
    if thin:
        listed = ", ".join(f"class {n!r} has {c} image" for n, c in thin[:3])
        raise UserError(f"cannot split {len(labels)} images {fraction:.0%} per class: {listed}; each class needs "
                        "at least 2 (add images, or leave the class out)")
    held = math.ceil(fraction * len(labels))  # sklearn's rounding: the held-out side rounds up
    if min(held, len(labels) - held) < len(present):
        raise UserError(f"cannot split {len(labels)} images {fraction:.0%} per class: one side would hold "
                        f"{min(held, len(labels) - held)} images for {len(present)} classes (change --val-fraction "
                        "or add images)")


def stratified_subset(labels: np.ndarray, size: int, seed: int, classes: list[str] | None = None) -> np.ndarray:
    """Indices of a seeded, class-balanced subset of `size` images (all of them when size >= N)."""
    if size >= len(labels):
        return np.arange(len(labels))
    num_classes = len(np.unique(labels)) if np.ndim(labels) == 1 else 1  # multi-hot: a shuffled subset
    if size < num_classes:
        raise UserError(f"subset of {size} images is smaller than the {num_classes} classes")
    kept, _ = stratified_split(labels, 1.0 - size / len(labels), seed, classes)
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


def thin_train(splits: Splits, subset: int | None, fraction: float, seed: int) -> Splits:
    """Training cut to a seeded per-class subset (`subset` images, then `fraction` of them); val and test
    untouched, so runs on less data are scored on the same images."""
    if subset is None and fraction >= 1.0:
        return splits
    size = len(splits.train) if subset is None else min(subset, len(splits.train))
    size = max(1, round(size * fraction))
    return dataclasses.replace(splits, train=splits.train.take(
        stratified_subset(splits.train.labels, size, seed, splits.classes)))
