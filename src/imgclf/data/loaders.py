"""Loaders that feed the Trainer float [0, 1] NCHW batches on the training device.

Both loaders hand uint8 batches to the same BatchAugment, which works on whole batches on the device
(one kernel per augmentation instead of one PIL call per image): the in-memory TensorLoader keeps the
whole uint8 set on the device; the StreamingLoader decodes files with DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from imgclf.data.decode import decode_image, resize_square
from imgclf.data.imageset import FileSet, ImageSet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class BatchAugment:
    """Random translate (reflect padding), horizontal flip and cutout, each switchable, on a whole batch."""

    crop_pad: int = 4
    flip: bool = True
    cutout: int = 0

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip or self.cutout > 0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: float (N, C, H, W); random numbers come from `gen` (CPU) so runs replay exactly."""
        n, _, h, w = x.shape
        if self.crop_pad > 0:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p), mode="reflect")
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(flip, x.flip(3), x)
        if self.cutout > 0:
            cy = torch.randint(0, h, (n,), generator=gen).to(x.device)[:, None, None]
            cx = torch.randint(0, w, (n,), generator=gen).to(x.device)[:, None, None]
            ys = torch.arange(h, device=x.device)[None, :, None]
            xs = torch.arange(w, device=x.device)[None, None, :]
            half = self.cutout // 2
            hole = ((ys - cy).abs() <= half) & ((xs - cx).abs() <= half)
            x = x * (~hole)[:, None].to(x.dtype)
        return x


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float [0, 1] (N, 3, H, W)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def resize_batch(x: torch.Tensor, input_size: int | None, channels_last: bool) -> torch.Tensor:
    """Bring a float batch to the model's input size (bilinear) and memory format."""
    if input_size and x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > input_size)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_model_input(images: torch.Tensor, input_size: int | None, channels_last: bool = True) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> model input; the one conversion shared by training, evaluation and inference."""
    return resize_batch(to_float(images), input_size, channels_last)


class _EpochSeeded:
    """Shared by both loaders: shuffling and augmentation drawn from (seed, epoch), so resume is exact."""

    def __init__(self, batch_size: int, shuffle: bool, augment: BatchAugment | None, seed: int,
                 input_size: int | None, channels_last: bool, drop_last: bool) -> None:
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.input_size, self.channels_last, self.drop_last = seed, input_size, channels_last, drop_last
        self.epoch = 0
        self.rank, self.world_size = 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> None:
        """Under DDP every rank draws the same global batches and keeps its own slice of each, so a
        step sees exactly the images (and augmentations) a single process with the same batch sees."""
        self.rank, self.world_size = rank, world_size

    def _slice(self, n: int) -> slice:
        per = -(-n // self.world_size)
        return slice(self.rank * per, (self.rank + 1) * per)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def _order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)

    def _num_batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _finish(self, images_nhwc: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = to_float(images_nhwc)
        if self.augment is not None and self.augment.active:
            x = self.augment(x, gen)
        return resize_batch(x, self.input_size, self.channels_last)


class TensorLoader(_EpochSeeded):
    """The whole uint8 ImageSet resident on the device; batches are sliced, augmented and resized there."""

    def __init__(self, data: ImageSet, batch_size: int, device: torch.device | str = "cpu", *,
                 shuffle: bool = False, augment: BatchAugment | None = None, seed: int = 0,
                 input_size: int | None = None, channels_last: bool = True, drop_last: bool = False) -> None:
        super().__init__(batch_size, shuffle, augment, seed, input_size, channels_last, drop_last)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.labels = torch.from_numpy(data.labels).to(device)

    def __len__(self) -> int:
        return self._num_batches(len(self.labels))

    def __iter__(self) -> Iterator[Batch]:
        gen = self._generator()
        order = self._order(len(self.labels), gen).to(self.images.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = self._finish(self.images[idx], gen), self.labels[idx]
            if self.world_size > 1:
                part = self._slice(len(idx))
                x, y = x[part], y[part]
            yield x, y


class FileDataset(Dataset):
    """A custom Dataset over image files: decodes one file per item to uint8 (H, W, 3)."""

    def __init__(self, files: FileSet) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        array = resize_square(decode_image(self.files.paths[i], self.files.image_size), self.files.image_size)
        return torch.from_numpy(array.copy()), int(self.files.labels[i])


class StreamingLoader(_EpochSeeded):
    """Files decoded by DataLoader workers, for data too large to hold; augmentation as in TensorLoader."""

    def __init__(self, data: FileSet, batch_size: int, device: torch.device | str = "cpu", *,
                 shuffle: bool = False, augment: BatchAugment | None = None, seed: int = 0,
                 input_size: int | None = None, channels_last: bool = True, drop_last: bool = False,
                 num_workers: int = 2) -> None:
        super().__init__(batch_size, shuffle, augment, seed, input_size, channels_last, drop_last)
        self.dataset, self.device, self.num_workers = FileDataset(data), torch.device(device), num_workers

    def __len__(self) -> int:
        return self._num_batches(len(self.dataset))

    def __iter__(self) -> Iterator[Batch]:
        gen = self._generator()
        order = self._order(len(self.dataset), gen).tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)][:len(self)]
        mine = [b[self._slice(len(b))] for b in batches]  # under DDP: this rank's slice, decoded here only
        loader = DataLoader(self.dataset, batch_sampler=mine, num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield self._finish(images, gen), labels.to(self.device, non_blocking=True)


def eval_batch_size(input_size: int | None, device: torch.device | str) -> int:
    """256 images on a GPU; on a CPU as many as hold the pixels of 256 at 32x32 (16 at 128 px, at least 8):
    big fp32 activations are mapped and unmapped by the allocator at every layer, and the page faults cost
    more than the batch saves (Lite0 at 128 px evaluated at 44 img/s with batches of 256)."""
    if torch.device(device).type == "cuda" or not input_size:
        return 256
    return max(8, min(256, 256 * 32 * 32 // (input_size * input_size)))


def make_loader(data: ImageSet | FileSet, batch_size: int, device: torch.device | str, *, train: bool,
                augment: BatchAugment | None = None, seed: int = 0, input_size: int | None = None,
                channels_last: bool = True, num_workers: int = 2) -> TensorLoader | StreamingLoader:
    """The right loader for the data's form; training loaders shuffle, augment and drop a ragged last batch."""
    common = dict(shuffle=train, augment=augment if train else None, seed=seed, input_size=input_size,
                  channels_last=channels_last, drop_last=train and len(data) > batch_size)
    if isinstance(data, FileSet):
        return StreamingLoader(data, batch_size, device, num_workers=num_workers, **common)
    return TensorLoader(data, batch_size, device, **common)
