"""Shared fixtures: a private decode cache, synthetic image folders, and the real data's location."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "imgclf-cache"
    monkeypatch.setenv("IMGCLF_CACHE", str(cache))
    return cache


def class_image(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A learnable synthetic image: a class-specific colour and stripe orientation, plus noise."""
    base = np.zeros((size, size, 3), dtype=np.float32)
    base[..., label % 3] = 160
    stripes = (np.arange(size) // 2 % 2) * 80
    base += stripes[:, None, None] if label % 2 else stripes[None, :, None]
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16, splits: bool = False,
                seed: int = 0) -> Path:
    """root/<class>/<i>.png (or root/{train,test}/<class>/...) with learnable synthetic images."""
    rng = np.random.default_rng(seed)
    parts = {"train": per_class, "test": max(2, per_class // 3)} if splits else {"": per_class}
    for part, count in parts.items():
        for c in range(classes):
            folder = root / part / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(class_image(c, rng, size)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "imgs", splits=True, per_class=30)


def require_cifar() -> Path:
    if not SHARED_CIFAR.is_file():
        pytest.skip(f"real data not present: {SHARED_CIFAR} (shared datasets folder absent)")
    return SHARED_CIFAR


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


def imgclf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgclf", *args], capture_output=True, text=True, timeout=300)


def tiny_checkpoint(base: Path) -> Path:
    """A tiny model trained once per session (a file under the session's temp root, shared by modules)."""
    from imgclf.config import TrainConfig
    from imgclf.training.run import train

    root = base / "inference-shared"
    ckpt = root / "run" / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        data = make_folder(root / "imgs", classes=3, per_class=20, splits=True)
        train(TrainConfig(data=str(data), model="tiny", epochs=2, batch_size=16, quiet=True, device="cpu",
                          out=str(root / "run")))
    return ckpt


def real_images(folder: Path) -> dict[str, Path]:
    """Real photos from scikit-image: a PNG, a JPEG and a grayscale PNG, larger than the model input."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"png": folder / "chelsea.png", "jpeg": folder / "coffee.jpg", "gray": folder / "camera.png"}
    if not paths["png"].is_file():
        Image.fromarray(data.chelsea()).save(paths["png"])
        Image.fromarray(data.coffee()).save(paths["jpeg"], quality=90)
        Image.fromarray(data.camera()).save(paths["gray"])
    return paths


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return real_images(tmp_path_factory.getbasetemp() / "photos")


def free_port() -> int:
    """A loopback port nothing listens on now (for servers started by tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
