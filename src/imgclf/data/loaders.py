"""Loaders that feed the Trainer float [0, 1] NCHW batches on the training device.

Small square images (CIFAR-sized) live on the device as one uint8 tensor (TensorLoader) and are augmented
on whole batches (one kernel per augmentation instead of one PIL call per image). Photos of any shape,
in memory or streamed from disk, go through PhotoLoader: a random-resized crop and an automatic policy per
image (imgclf.data.photos).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from imgclf.data.imageset import FileSet, ImageSet
from imgclf.data.photos import PhotoDataset, PhotoSet, Preprocess, iterate_photos, seeded_batches
from imgclf.defaults import EVAL_BATCH_SIZE, EVAL_CPU_MIN_BATCH, EVAL_CPU_PIXELS, NUM_WORKERS
from imgclf.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class BatchAugment:
    """Random translate (reflect padding), horizontal flip and cutout, each switchable, on a whole batch."""

    crop_pad: int  # no defaults here: config.resolve decides them from the data (digits get neither)
    flip: bool
    cutout: int = 0

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip or self.cutout > 0

    def draw(self, n: int, h: int, w: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch's random numbers, from `gen` (CPU) so runs replay exactly. Drawing them alone advances `gen`
        as augmenting the batch would, which is how a mid-epoch resume skips the batches already trained."""
        draws = {}
        if self.crop_pad > 0:
            draws["dy"] = torch.randint(0, 2 * self.crop_pad + 1, (n,), generator=gen)
            draws["dx"] = torch.randint(0, 2 * self.crop_pad + 1, (n,), generator=gen)
        if self.flip:
            draws["flip"] = torch.rand(n, generator=gen) < 0.5
        if self.cutout > 0:
            draws["cy"] = torch.randint(0, h, (n,), generator=gen)
            draws["cx"] = torch.randint(0, w, (n,), generator=gen)
        return draws

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: float (N, C, H, W), augmented with the numbers `draw` takes from `gen`."""
        n, _, h, w = x.shape
        d = {k: v.to(x.device) for k, v in self.draw(n, h, w, gen).items()}
        if self.crop_pad > 0:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p), mode="reflect")
            rows = (d["dy"][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (d["dx"][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        if self.flip:
            x = torch.where(d["flip"][:, None, None, None], x.flip(3), x)
        if self.cutout > 0:
            ys = torch.arange(h, device=x.device)[None, :, None]
            xs = torch.arange(w, device=x.device)[None, None, :]
            half = self.cutout // 2
            hole = ((ys - d["cy"][:, None, None]).abs() <= half) & ((xs - d["cx"][:, None, None]).abs() <= half)
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
        self.epoch, self.start = 0, 0
        self.rank, self.world_size = 0, 1
        self.draw_weights: torch.Tensor | None = None  # set by balance(): per-image draw probabilities

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Passes yield `epoch`'s batches from batch `start` on (a mid-epoch resume), with the same order and
        augmentation those batches get in a whole pass; len() stays the whole epoch's."""
        self.epoch, self.start = epoch, start

    def balance(self, labels: np.ndarray) -> None:
        """--sampler balanced: each epoch draws as many images as there are, with replacement, each with
        probability 1 / its class's size (every class equally often), from the same (seed, epoch) generator
        as the shuffle, so a resume and any number of workers or ranks replay the same draws."""
        labels = np.asarray(labels, dtype=np.int64)
        self.draw_weights = torch.from_numpy(1.0 / np.bincount(labels)[labels])

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
        if self.draw_weights is not None:
            return torch.multinomial(self.draw_weights, n, replacement=True, generator=gen)
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
            if b < self.start:  # not yielded; its random numbers are drawn all the same, so that the later
                if self.augment is not None and self.augment.active:  # batches get those of a whole pass
                    self.augment.draw(len(idx), self.images.shape[1], self.images.shape[2], gen)
                continue
            x, y = self._finish(self.images[idx], gen), self.labels[idx]
            if self.world_size > 1:
                part = self._slice(len(idx))
                x, y = x[part], y[part]
            yield x, y


class PhotoLoader(_EpochSeeded):
    """Photos of any shape (in memory or on disk), each cropped and augmented on its own (see
    imgclf.data.photos); batches arrive as float NCHW at the input size, like TensorLoader's."""

    def __init__(self, data: PhotoSet | FileSet, batch_size: int, device: torch.device | str = "cpu", *,
                 preprocess: Preprocess, augment: v2.Compose | None = None, shuffle: bool = False, seed: int = 0,
                 channels_last: bool = True, drop_last: bool = False, num_workers: int = 0) -> None:
        super().__init__(batch_size, shuffle, None, seed, preprocess.input_size, channels_last, drop_last)
        self.dataset = PhotoDataset(data, preprocess, augment)
        self.device, self.num_workers = torch.device(device), num_workers
        self.augmenting = augment is not None

    def __len__(self) -> int:
        return self._num_batches(len(self.dataset))

    @property
    def unreadable(self) -> list[str]:
        """Streamed files met so far that did not decode (their header opened when the data was listed)."""
        return sorted(self.dataset.unreadable)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(len(self.dataset), self._generator()).tolist()
        batches = seeded_batches(order, self.batch_size, len(self), self.seed if self.augmenting else None,
                                 self.epoch)
        # under DDP this rank's slice, decoded here only; each image's augmentation has its own seed, so
        # starting at batch `start` leaves the later batches as they are in a whole pass
        mine = [b[self._slice(len(b))] for b in batches[self.start:]]
        yield from iterate_photos(self.dataset, mine, self.device, self.channels_last, self.num_workers)


def eval_batch_size(input_size: int | None, device: torch.device | str) -> int:
    """EVAL_BATCH_SIZE images on a GPU; on a CPU as many as hold EVAL_CPU_PIXELS (256 at 32x32, 16 at 128 px,
    at least EVAL_CPU_MIN_BATCH):
    big fp32 activations are mapped and unmapped by the allocator at every layer, and the page faults cost
    more than the batch saves (Lite0 at 128 px evaluated at 44 img/s with batches of 256)."""
    if torch.device(device).type == "cuda" or not input_size:
        return EVAL_BATCH_SIZE
    return max(EVAL_CPU_MIN_BATCH, min(EVAL_BATCH_SIZE, EVAL_CPU_PIXELS // (input_size * input_size)))


def endless(loader: Iterable[Batch]) -> Iterator[Batch]:
    """Batches forever (probes that need more steps than a small set has in one epoch); loaders with
    set_epoch get a fresh seeded order each pass."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        got = False
        for batch in loader:
            got = True
            yield batch
        if not got:
            raise UserError("the training loader yielded no batches (is the training split empty?)")
        epoch += 1


def make_loader(data: ImageSet | PhotoSet | FileSet, batch_size: int, device: torch.device | str, *, train: bool,
                augment: BatchAugment | None = None, seed: int = 0, input_size: int | None = None,
                channels_last: bool = True, num_workers: int = NUM_WORKERS, preprocess: Preprocess | None = None,
                photo_augment: v2.Compose | None = None) -> TensorLoader | PhotoLoader:
    """The right loader for the data's form; training loaders shuffle, augment and drop a ragged last batch.

    Small squares (ImageSet) take `augment` on whole batches; photos take `photo_augment` per image and
    `preprocess` for evaluation (default: the centre crop at `input_size`).
    """
    drop_last = train and len(data) > batch_size
    if isinstance(data, ImageSet):
        return TensorLoader(data, batch_size, device, shuffle=train, augment=augment if train else None, seed=seed,
                            input_size=input_size, channels_last=channels_last, drop_last=drop_last)
    preprocess = preprocess or Preprocess(input_size or data.image_size)
    return PhotoLoader(data, batch_size, device, preprocess=preprocess, augment=photo_augment if train else None,
                       shuffle=train, seed=seed, channels_last=channels_last, drop_last=drop_last,
                       num_workers=num_workers if isinstance(data, FileSet) else 0)
