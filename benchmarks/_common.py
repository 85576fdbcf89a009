"""Shared by the benchmark scripts: the real data's location, an extracted image folder, medians."""

from __future__ import annotations

import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

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
