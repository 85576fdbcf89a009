"""Shared by the benchmark scripts: the real data's location, an extracted image folder, medians."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the GPU helpers import torch and imgclf when called, so light scripts stay light
    import torch

    from imgclf.data import ImageSet

CIFAR_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"


def require_archive() -> Path:
    if not CIFAR_ARCHIVE.is_file():
        sys.exit(f"benchmark needs {CIFAR_ARCHIVE}")
    return CIFAR_ARCHIVE


def extracted_folder() -> Path:
    """The archive unpacked once per machine (the tutorial pipeline reads files with ImageFolder)."""
    root = Path(tempfile.gettempdir()) / "imgclf-bench-cifar10-jpeg"
    if not (root / "cifar10-jpeg" / "test").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(require_archive()) as tar:
            tar.extractall(root, filter="data")
    return root / "cifar10-jpeg"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# -- shared by the GPU benchmarks (gpu_speedrun, gpu_finetune, gpu_precision) ---------------------------------

LOCAL_ARCHIVE = Path(__file__).resolve().parents[1] / ".gpu" / "cifar10-jpeg.tar.xz"  # carried to a GPU machine


def find_archive(path: str | None) -> Path:
    """--archive PATH when given, else the shared datasets folder, else the copy carried in .gpu/."""
    candidates = [Path(path)] if path else [CIFAR_ARCHIVE, LOCAL_ARCHIVE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    sys.exit(f"benchmark needs the CIFAR-10-JPEG archive; looked at {', '.join(map(str, candidates))}")


def made_up_folder(root: Path, photos: bool) -> Path:
    """train/ and test/ of 3 learnable classes: 16 px squares, or photos of several aspect ratios (the --smoke
    data of the CPU benchmarks)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    shapes = [(48, 36), (36, 60), (80, 45)] if photos else [(16, 16)]
    for split, count in (("train", 40), ("test", 10)):
        for c in range(3):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = shapes[i % len(shapes)]
                image = np.zeros((h, w, 3), dtype=np.float32)
                image[..., c] = 160
                image += rng.normal(0, 30, image.shape)
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@contextmanager
def smoke_threads(smoke: bool) -> Iterator[None]:
    """One torch intra-op thread within a --smoke run (the count restored afterwards; a real run is left alone):
    its tensors are tiny, and on a busy 2-core machine libgomp's spin-waiting at every parallel region made
    photo_finetune's smoke take 317 s instead of 14 s, train_throughput's 16 s instead of 4 s."""
    if not smoke:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def add_budget_args(parser: argparse.ArgumentParser, budget: float) -> None:
    """--budget, --seeds, --archive and --out of the CPU benchmarks that train each variant for a fixed time."""
    parser.add_argument("--budget", type=float, default=budget, help="training seconds per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (seeds 0..N-1)")
    parser.add_argument("--archive", help="cifar10-jpeg.tar.xz (default: ../shared/datasets)")
    parser.add_argument("--out", help="also write the JSON object to this file")


def add_gpu_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", help="cifar10-jpeg.tar.xz (default: ../shared/datasets, then .gpu/)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--smoke", action="store_true", help="a tiny subset on the CPU, in seconds")


def full_train_and_test(archive: Path, smoke: bool = False, smoke_sizes: tuple[int, int] = (1000, 500)
                        ) -> tuple[ImageSet, ImageSet]:
    """All 50,000 training images (imgclf's val split put back) and the 10,000 test images, decoded once
    (cached); with `smoke`, seeded class-balanced subsets of `smoke_sizes`."""
    import numpy as np

    from imgclf.data import ImageSet, load_splits
    from imgclf.data.imageset import stratified_subset

    splits = load_splits(str(archive))
    train = ImageSet(np.concatenate([splits.train.images, splits.val.images]),
                     np.concatenate([splits.train.labels, splits.val.labels]), splits.classes)
    test = splits.test
    if smoke:
        train = train.take(stratified_subset(train.labels, smoke_sizes[0], 0))
        test = test.take(stratified_subset(test.labels, smoke_sizes[1], 0))
    return train, test


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def emit(result: dict[str, Any], out: str | None, echo: bool = True) -> None:
    """Print the one JSON object (unless not `echo`: a partial result written while a benchmark runs on);
    also write it to `out`, atomically, so a timeout never leaves half a file."""
    text = json.dumps(result)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    if echo:
        print(text, flush=True)
