"""The photo path: images of any shape kept with their aspect ratio, cropped per image.

Chosen by the data, not by a flag: a set whose images are all one small square (CIFAR's 32x32, digits'
8x8) keeps the fast path of whole-batch augmentation (imgclf.data.loaders.TensorLoader); anything else
is a photo set. Photos are decoded once at a working size (short side = input / PHOTO_CROP_FRACTION, so a
training crop can come from anywhere in the photo) and then:

- training: random-resized crop (ImageNet ranges), horizontal flip and an automatic policy
  (TrivialAugmentWide or RandAugment), per image, seeded by (seed, epoch, position in the epoch), so a run
  and its resume draw the same views whatever the worker count;
- evaluation, prediction, serving and ONNX: `Preprocess.view`, the one deterministic view (resize the short
  side and centre-crop, or pad, or squash), whose settings travel in the checkpoint and the ONNX metadata.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from imgclf.data.decode import decode_image, printable_name
from imgclf.defaults import PHOTO_CROP_FRACTION
from imgclf.errors import UserError

SMALL_SQUARE_MAX = 64  # a set of one square size up to this side takes the fast whole-batch path
RESIZE_MODES = ("crop", "pad", "squash")
POLICIES = ("trivial", "rand", "none")


def working_side(input_size: int, crop_fraction: float = PHOTO_CROP_FRACTION) -> int:
    """The short side photos are decoded and cached at for a given model input size."""
    return math.ceil(input_size / crop_fraction)


def is_small_square_set(shapes: Sequence[tuple[int, ...]]) -> bool:
    """True for data of one square size no larger than SMALL_SQUARE_MAX (the fast path)."""
    sizes = {s[:2] for s in shapes}
    if len(sizes) != 1:
        return False
    h, w = next(iter(sizes))
    return h == w and h <= SMALL_SQUARE_MAX


@dataclass(frozen=True)
class Preprocess:
    """The deterministic view a model sees at evaluation and inference, from an RGB uint8 image.

    crop:   resize the short side to input_size / crop_fraction, centre-crop input_size x input_size
            (crop_fraction 1.0 on small square data: the whole image, as in training)
    pad:    resize the long side to input_size and pad the rest with grey (the whole photo, undistorted)
    squash: resize to input_size x input_size (the whole photo, distorted)
    """

    input_size: int
    resize: str = "crop"
    crop_fraction: float = PHOTO_CROP_FRACTION

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    @property
    def decode_side(self) -> int:
        """The short side to decode at: what the photo cache holds, so inference decodes identically."""
        return working_side(self.input_size, self.crop_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        return cls(int(values["input_size"]), str(values.get("resize", "crop")),
                   float(values.get("crop_fraction", PHOTO_CROP_FRACTION)))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Preprocess:
        """The view a checkpoint was evaluated with; checkpoints from before the photo path cropped the
        centre square (crop fraction 1.0)."""
        if "preprocess" in ckpt:
            return cls.from_dict(ckpt["preprocess"])
        return cls(int(ckpt["input_size"]), "crop", 1.0)

    def view(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float [0, 1] (3, S, S); the same arithmetic for every caller."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        s = self.input_size
        h, w = x.shape[-2:]
        if self.resize == "squash":
            return _resize(x, s, s)
        if self.resize == "pad":
            scale = s / max(h, w)
            x = _resize(x, max(1, round(h * scale)), max(1, round(w * scale)))
            top, left = (s - x.shape[1]) // 2, (s - x.shape[2]) // 2
            return F.pad(x, (left, s - x.shape[2] - left, top, s - x.shape[1] - top), value=0.5)
        short = s / self.crop_fraction
        scale = short / min(h, w)
        x = _resize(x, max(s, round(h * scale)), max(s, round(w * scale)))
        top, left = (x.shape[1] - s) // 2, (x.shape[2] - s) // 2
        return x[:, top:top + s, left:left + s]

    def decode(self, source: bytes | str | Path) -> np.ndarray:
        return decode_image(source, self.decode_side)


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear on float (3, H, W), antialiased when shrinking; a no-op at the same size."""
    if x.shape[-2:] == (h, w):
        return x
    shrink = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)[0]


@dataclass
class PhotoSet:
    """Decoded photos of any shape in memory: `images` a list of uint8 (H, W, 3) at the working size."""

    images: list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    image_size: int  # the model input size the working size was chosen for

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> PhotoSet:
        return PhotoSet([self.images[i] for i in index], self.labels[index], self.classes, self.image_size)

    def packed(self) -> dict[str, np.ndarray]:
        """Flat arrays for an .npz cache: all pixels in one buffer, and each image's shape."""
        shapes = np.asarray([a.shape for a in self.images], dtype=np.int64).reshape(-1, 3)
        pixels = np.concatenate([a.reshape(-1) for a in self.images]) if self.images else np.zeros(0, np.uint8)
        return {"pixels": pixels, "shapes": shapes, "labels": self.labels}

    @classmethod
    def unpack(cls, pixels: np.ndarray, shapes: np.ndarray, labels: np.ndarray, classes: list[str],
               image_size: int) -> PhotoSet:
        ends = np.cumsum(shapes.prod(axis=1))
        starts = ends - shapes.prod(axis=1)
        images = [pixels[a:b].reshape(shape) for a, b, shape in zip(starts, ends, shapes, strict=True)]
        return cls(images, labels, classes, image_size)


def train_transform(input_size: int, policy: str = "trivial", min_scale: float = 0.08,
                    flip: bool = True) -> v2.Compose:
    """Random-resized crop (scale min_scale..1, ratio 3/4..4/3, as in the ImageNet recipes), flip, and
    an automatic policy, on a uint8 (3, H, W) tensor."""
    if policy not in POLICIES:
        raise UserError(f"augmentation policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    steps: list[Any] = [v2.RandomResizedCrop(input_size, scale=(min_scale, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if policy == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif policy == "rand":
        steps.append(v2.RandAugment())
    return v2.Compose(steps)


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one image's augmentation: a function of the run's seed, the epoch and the position
    in that epoch's order, so resumes and any number of workers draw the same views."""
    return (seed * 1_000_003 + epoch * 7_919 + position * 104_729) % (2**63 - 1)


class PhotoDataset(Dataset):
    """Item (index, seed or None) -> (uint8 or float (3, S, S), label); seed None is the evaluation view.

    The images come from memory (PhotoSet) or are decoded from their files (FileSet), in DataLoader
    workers where there are any. `unreadable` collects (in the main process) the files that failed to decode.
    """

    def __init__(self, data: Any, preprocess: Preprocess, augment: v2.Compose | None) -> None:
        self.data, self.preprocess, self.augment = data, preprocess, augment
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return len(self.data)

    def image(self, i: int) -> np.ndarray:
        if isinstance(self.data, PhotoSet):
            return self.data.images[i]
        return self.preprocess.decode(self.data.paths[i])

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[torch.Tensor, torch.Tensor] | str:
        """The file's name for a file that does not decode (streamed data whose header opened but whose
        pixels do not, a truncated file): the batch goes on without it, and iterate_photos names it once.
        The label is a class index, or a multi-hot row for multi-label data."""
        i, seed = item
        label = torch.as_tensor(self.data.labels[i])
        try:
            image = self.image(i)
        except Exception:  # noqa: BLE001 - PIL raises many types for a corrupt or non-image file
            return printable_name(self.data.paths[i])
        if seed is None or self.augment is None:
            return self.preprocess.view(image), label
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.augment(chw)
        return out.float().div_(255.0), label


def seeded_batches(order: list[int], batch_size: int, num_batches: int, seed: int | None, epoch: int,
                   ) -> list[list[tuple[int, int | None]]]:
    """Batches of (index, augmentation seed) in `order`; seed None for evaluation."""
    items = [(i, None if seed is None else item_seed(seed, epoch, pos)) for pos, i in enumerate(order)]
    return [items[b * batch_size:(b + 1) * batch_size] for b in range(num_batches)]


def _collate_readable(items: list[tuple[torch.Tensor, torch.Tensor] | str],
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, list[str]]:
    """(the batch of readable items or None, the names of the unreadable ones)."""
    kept = [item for item in items if not isinstance(item, str)]
    return (default_collate(kept) if kept else None), [item for item in items if isinstance(item, str)]


def iterate_photos(dataset: PhotoDataset, batches: list[list[tuple[int, int | None]]], device: torch.device,
                   channels_last: bool, num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float NCHW batches on `device`; decoding and augmentation in `num_workers` processes (0: here)."""
    # a private generator for the workers' base seed: by default each pass draws it from the global torch RNG,
    # which would shift dropout's random numbers after a mid-epoch resume (the pass starts at another moment)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate_readable,
                        pin_memory=device.type == "cuda", persistent_workers=False, generator=torch.Generator())
    for batch, unreadable in loader:
        for name in unreadable:
            if name not in dataset.unreadable:  # named once, not once an epoch
                dataset.unreadable.add(name)
                print(f"imgclf: warning: skipped {name}: not a readable image", file=sys.stderr)
        if batch is None:  # every file of the batch was unreadable
            continue
        x, y = batch
        x = x.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        yield x, y.to(device, non_blocking=True)
