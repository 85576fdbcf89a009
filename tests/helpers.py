"""Helpers the tests share (imported as `from helpers import ...`): synthetic folders, real photos, a tiny
checkpoint, the real data's location, a CLI runner, loopback ports."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"


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


def require_cifar() -> Path:
    if not SHARED_CIFAR.is_file():
        pytest.skip(f"real data not present: {SHARED_CIFAR} (shared datasets folder absent)")
    return SHARED_CIFAR


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


def free_port() -> int:
    """A loopback port nothing listens on now (for the servers the tests start)."""
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


PHOTO_SHAPES = [(48, 36), (36, 60), (40, 40), (80, 45)]  # (width, height): landscape, portrait, square, wide


def make_photo_folder(root: Path, per_class: int = 8) -> Path:
    """root/{train,test}/<class>/<i>.jpg of several aspect ratios, learnable colours and stripes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        for c in range(3):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = PHOTO_SHAPES[i % len(PHOTO_SHAPES)]
                tile = class_image(c, rng, size=max(w, h))[:h, :w]
                Image.fromarray(tile).save(folder / f"{i}.jpg", quality=95)
    return root


def benchmark_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], script: str,
                   *args: str) -> dict:
    """Run benchmarks/SCRIPT.py's main(args) in this process and parse what it printed: exactly one JSON
    object on stdout (json.loads fails on anything more)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))  # the scripts import their siblings (_common)
    spec = importlib.util.spec_from_file_location(f"{script}_benchmark", bench / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(list(args))
    return json.loads(capsys.readouterr().out)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main() in this process (parse errors and --help exit through SystemExit): (code, stdout, stderr)."""
    from imgclf.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
