"""Shared fixtures: a private decode cache, one-thread fixtures, a tiny checkpoint and real photos per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers import make_folder, real_images, tiny_checkpoint

# Every run in the suite at torch's own thread count, as OMP_NUM_THREADS fixes it, rather than the count the plan
# measures (1 when other work keeps the cores busy): two runs a test compares bit for bit must not differ because
# the machine was busier during one. tests/test_threads.py unsets it to test the measurement.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "imgclf-cache"
    monkeypatch.setenv("IMGCLF_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True)
def outside_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own temp folder, so default output paths (runs/..., lr_find/) never land in the
    checkout; tests name their files by absolute path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "imgs", splits=True, per_class=30)


@pytest.fixture
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread within a test (restored afterwards): the NumPy network's matrices are small, and
    on a busy 2-core machine OpenBLAS threads spin-wait on each other (the digits test ran 30x slower)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for small tensors: on a busy 2-core machine libgomp's spin-waiting at each
    parallel region made a 4-image Lite0 forward take ~2.8 s instead of ~0.02 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return real_images(tmp_path_factory.getbasetemp() / "photos")
