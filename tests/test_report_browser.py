"""The HTML reports in a real headless browser: they render, and the embedded figures actually show."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_folder
from imgclf.config import TrainConfig
from imgclf.experiments.compare import run_compare
from imgclf.reporting.report import write_report
from test_report import fake_run

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: apt-get install -y chromium")


def screenshot(html: Path, png: Path, height: int = 3000) -> np.ndarray:
    """Render `html` headless (no network, throwaway profile) and return the screenshot's RGB pixels."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size=1200,{height}",
               html.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.is_file(), done.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


def _looks_rendered(pixels: np.ndarray) -> None:
    """Not a blank or broken page: plenty of non-white pixels and the figures' own colours."""
    non_white = (pixels < 240).any(axis=2).mean()
    assert non_white > 0.08, f"only {non_white:.1%} of the page is drawn"
    blue = (np.abs(pixels.astype(int) - [0x35, 0x63, 0xA8]).sum(axis=2) < 40).mean()  # figures.TRAIN
    assert blue > 0.0002, "the figures' train colour is nowhere on the page: images did not render"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200  # anti-aliased plots, not flat boxes


def test_run_report_renders_in_a_browser(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    html = write_report(run)
    pixels = screenshot(html, run / "screenshot.png", height=5200)
    _looks_rendered(pixels)


def test_comparison_report_renders_in_a_browser(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=16, splits=True)
    cfg = TrainConfig(data=str(data), model="tiny", epochs=2, batch_size=16, lr=0.05, device="cpu", quiet=True,
                      subset=30)
    run_compare(cfg, tmp_path / "reg", preset="regularization")
    pixels = screenshot(tmp_path / "reg" / "report.html", tmp_path / "reg" / "screenshot.png", height=4200)
    _looks_rendered(pixels)
