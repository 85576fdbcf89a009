"""The bundled flowers-mini photos: found by name, credited photo by photo, small, and shipped in the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from imgclf.data.sources import BUNDLED, bundled_path, load_splits

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "src" / "imgclf" / "datasets" / "flowers_mini"
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def shipped_photos() -> list[str]:
    return sorted(p.relative_to(FOLDER).as_posix() for p in FOLDER.glob("*/*/*.jpg"))


def test_loads_by_name_with_photos_of_several_shapes() -> None:
    assert bundled_path("flowers-mini") == FOLDER and bundled_path("digits") is None and "flowers-mini" in BUNDLED
    splits = load_splits("flowers-mini")
    assert splits.classes == CLASSES
    assert len(splits.train) + len(splits.val) == 300 and len(splits.test) == 100
    assert all((splits.test.labels == c).sum() == 20 for c in range(5))
    images = [a for part in (splits.train, splits.val, splits.test) for a in part.images]
    ratios = {round(a.shape[1] / a.shape[0], 2) for a in images}
    assert len(ratios) >= 5 and min(ratios) < 1 < max(ratios)  # portrait, landscape and more: not squares


def test_every_photo_is_credited() -> None:
    photos = shipped_photos()
    assert len(photos) == 400
    lines = (FOLDER / "ATTRIBUTION.txt").read_text(encoding="utf-8").splitlines()
    credited = [line.split("  <-  ")[0] for line in lines if "  <-  " in line]
    assert sorted(credited) == photos  # each photo has its line, and no line names a photo not shipped
    assert all("CC-BY" in line and "https://www.flickr.com/photos/" in line for line in lines if "  <-  " in line)
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    assert "https://creativecommons.org/licenses/by/2.0/" in readme and "downscaled" in readme


def test_folder_is_small() -> None:
    total = sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file())
    assert total < 5_000_000, f"{total / 1e6:.2f} MB"


def test_loads_from_an_installed_wheel(tmp_path: Path) -> None:
    """Built from a copy of the checkout (so the build's build/ and egg-info never land in it, and no stale
    build/lib file from an earlier build can slip into the wheel), installed into a folder, and imported
    from there by a fresh interpreter in another folder: only the wheel's own files can be loaded."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels),
                    str(source)], check=True, env=env, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("imgclf-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], check=True,
                   env=env, capture_output=True, timeout=300)
    installed = site / "imgclf" / "datasets" / "flowers_mini"
    assert (installed / "ATTRIBUTION.txt").is_file() and (installed / "README.md").is_file()  # the licence travels
    assert len(list(installed.glob("*/*/*.jpg"))) == 400

    code = ("import imgclf, pathlib; from imgclf.data.sources import load_splits; "
            f"assert pathlib.Path(imgclf.__file__).resolve().is_relative_to({str(site.resolve())!r}), imgclf.__file__; "
            "s = load_splits('flowers-mini'); print(len(s.classes), len(s.train) + len(s.val), len(s.test), s.source)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    classes, train_val, test, where = run.stdout.split()
    assert (classes, train_val, test) == ("5", "300", "100")
    assert Path(where).resolve() == installed.resolve()
