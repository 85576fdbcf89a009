"""Grad-CAM: a map for every registered model, a map that finds the region that decides the class, overlays
from `predict --explain`, the server's explain=true over real HTTP (and its page), and the report's section."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import stop_process
from imgclf.cli import main
from imgclf.errors import UserError
from imgclf.evaluation.gradcam import MIN_SIDE, GradCAM, cam_layer, overlay
from imgclf.inference.predictor import Predictor
from imgclf.models import build_model, list_models
from imgclf.models.timm_any import build_timm
from test_server import start_server

SIDE = 32
SQUARE = 8


def random_head(model: nn.Module) -> nn.Module:
    """Give the zero-initialised head random weights: with a zero head every gradient, so every map, is 0."""
    torch.manual_seed(0)
    nn.init.normal_([m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight)
    return model.eval()


@pytest.mark.parametrize("name", sorted(list_models()))
def test_every_registered_model_gives_a_map_of_the_input_size(name: str, one_torch_thread: None) -> None:
    size = 64 if name.startswith("efficientnet") else SIDE  # Lite's stride 32: a 2x2 map at 64 px
    model = random_head(build_model(name, 3))
    images = torch.rand(2, 3, size, size)
    maps, logits = GradCAM(model, size)(images)
    assert maps.shape == (2, size, size) and maps.dtype == np.float32 and logits.shape == (2, 3)
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0) and maps.std() > 0
    np.testing.assert_allclose(logits, model(images).detach().numpy(), atol=1e-4)  # the ordinary forward


def test_timm_backbones_convolutional_yes_transformer_refused(one_torch_thread: None) -> None:
    model = random_head(build_timm("resnet18", 2))
    assert cam_layer(model, 64) is model.features.layer4  # its last stage, 2x2 at 64 px
    assert cam_layer(model, SIDE) is model.features.layer3  # layer4 is 1x1 at 32 px: nothing to locate
    assert GradCAM(model, 64)(torch.rand(1, 3, 64, 64))[0].shape == (1, 64, 64)
    vit = build_timm("vit_tiny_patch16_224", 2).eval()
    with pytest.raises(UserError, match="token sequences"):
        cam_layer(vit, 224)


def square_images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Grey noise; label 1 has a bright square somewhere, label 0 none: only the square decides the class.
    Returns images (N, 3, SIDE, SIDE), labels and each square's top-left corner."""
    x = torch.from_numpy(rng.uniform(0.2, 0.5, (n, 3, SIDE, SIDE)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 2, n))
    corners = rng.integers(0, SIDE - SQUARE + 1, (n, 2))
    for i in np.flatnonzero(labels.numpy()):
        top, left = corners[i]
        x[i, :, top:top + SQUARE, left:left + SQUARE] = 0.95
    return x, labels, corners


def test_the_map_peaks_on_the_region_that_decides_the_class(one_torch_thread: None) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model("tiny", 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        x, y, _ = square_images(64, rng)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    x, y, corners = square_images(64, rng)
    positives = np.flatnonzero(y.numpy())
    maps, logits = GradCAM(model, SIDE)(x[positives], [1] * len(positives))
    assert (logits.argmax(1) == 1).mean() > 0.9  # the model learnt the square
    assert all(m.std() > 0.05 for m in maps)  # not constant
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    margin = 2  # the map is computed at half resolution and upsampled
    inside = [top - margin <= r < top + SQUARE + margin and left - margin <= c < left + SQUARE + margin
              for (r, c), (top, left) in zip(peaks, corners[positives], strict=True)]
    chance = (SQUARE + 2 * margin) ** 2 / SIDE ** 2  # 0.14
    assert np.mean(inside) > max(0.8, 4 * chance), np.mean(inside)


def test_overlay_is_the_view_blended_with_the_colour_map() -> None:
    image = torch.zeros(3, 16, 16)
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[:8] = 1.0
    out = overlay(image, cam)
    assert out.shape == (16 * -(-MIN_SIDE // 16), 16 * -(-MIN_SIDE // 16), 3) and out.dtype == np.uint8
    hot, cold = out[10, 100].astype(int), out[-10, 100].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where the map is 1, blue where it is 0
    assert overlay(torch.ones(3, 224, 224), np.zeros((224, 224))).shape == (224, 224, 3)  # big views stay


def png_of(path_or_bytes: Path | bytes) -> Image.Image:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


def test_predict_explain_writes_one_overlay_per_image(checkpoint: Path, photos: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    twin = tmp_path / "other" / photos["png"].name  # the same file name from another folder: its own PNG
    twin.parent.mkdir()
    shutil.copy(photos["jpeg"], twin)
    out = tmp_path / "cams"
    code = main(["predict", "--checkpoint", str(checkpoint), "--explain", str(out), "--device", "cpu",
                 str(photos["png"]), str(twin), str(tmp_path / "missing.png")])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and "missing.png" in stderr  # a bad file still costs only itself
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(r["explanation"]).name for r in lines] == ["chelsea.gradcam.png", "chelsea-2.gradcam.png"]
    [plain] = Predictor.load(str(checkpoint), device="cpu").predict([photos["png"]])
    assert {k: v for k, v in lines[0].items() if k not in ("file", "explanation")} == plain
    assert sorted(p.name for p in out.iterdir()) == ["chelsea-2.gradcam.png", "chelsea.gradcam.png"]  # no temp
    first, second = (np.asarray(png_of(Path(r["explanation"]))) for r in lines)
    assert first.shape[0] >= MIN_SIDE and first.shape == second.shape and not np.array_equal(first, second)


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imgclf.inference.export import export_onnx

    out = tmp_path_factory.mktemp("gradcam-onnx") / "tiny.onnx"
    export_onnx(checkpoint, out)
    return out


def test_predict_explain_with_onnx_is_one_line_exit_2(onnx_file: Path, photos: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", "--onnx", str(onnx_file), "--explain", str(tmp_path / "cams"), str(photos["png"])])
    stdout, stderr = capsys.readouterr()
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "--explain needs --checkpoint" in stderr
    assert not (tmp_path / "cams").exists()


@pytest.fixture(scope="module")
def torch_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("gradcam-server") / "serve.log"
    proc, base = start_server(["--checkpoint", str(checkpoint), "--device", "cpu", "--api-key", "k",
                               "--max-pixels", "1000000"], log)
    yield base
    stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_server_explain_returns_a_png_overlay(torch_server: str, photos: dict[str, Path]) -> None:
    files = {"file": ("chelsea.png", photos["png"].read_bytes(), "image/png")}
    key = {"X-API-Key": "k"}
    plain = httpx.post(f"{torch_server}/predict", files=files, headers=key, timeout=60).json()
    explained = httpx.post(f"{torch_server}/predict?explain=true", files=files, headers=key, timeout=60).json()
    assert "explanation" not in plain  # the plain answer is as it was
    assert {k: v for k, v in explained.items() if k != "explanation"} == plain
    assert png_of(base64.b64decode(explained["explanation"])).size[0] >= MIN_SIDE

    batch = [("files", (p.name, p.read_bytes(), "image/png")) for p in (photos["png"], photos["gray"])]
    answer = httpx.post(f"{torch_server}/predict/batch?explain=true", files=batch, headers=key, timeout=60)
    assert answer.status_code == 200 and all(png_of(base64.b64decode(r["explanation"])) for r in answer.json())

    # the same limits as any request: the key first, then the pixel limit
    assert httpx.post(f"{torch_server}/predict?explain=true", files=files, timeout=60).status_code == 401
    big = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(big, format="PNG")
    refused = httpx.post(f"{torch_server}/predict?explain=true", files={"file": ("big.png", big.getvalue())},
                         headers=key, timeout=60)
    assert refused.status_code == 413 and "pixels" in refused.json()["detail"]


def test_onnx_server_refuses_explain_with_json(onnx_file: Path, photos: dict[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from imgclf.inference.server import create_app

    with TestClient(create_app(Predictor.load(onnx=str(onnx_file)))) as client:
        part = ("chelsea.png", photos["png"].read_bytes(), "image/png")
        files = {"file": part}
        for path, form in (("/predict?explain=true", files), ("/predict/batch?explain=true", {"files": part})):
            refused = client.post(path, files=form)
            assert refused.status_code == 422 and "ONNX" in refused.json()["detail"]
        assert client.post("/predict", files=files).status_code == 200


def test_report_has_the_gradcam_section(checkpoint: Path, tmp_path: Path) -> None:
    from imgclf.reporting.report import write_report

    run = tmp_path / "run"
    shutil.copytree(checkpoint.parents[1], run)  # the session's trained tiny run, not touched in place
    html = write_report(run).read_text()
    md = (run / "report.md").read_text()
    assert "## What the model looked at" in md and "Not shown" not in md.split("## What the model looked at")[1]
    for name in ("gradcam_top_losses", "gradcam_correct"):
        assert f"(figures/{name}.png)" in md and png_of(run / "figures" / f"{name}.png").size[0] > 300
    assert "What the model looked at" in html


@pytest.mark.slow
def test_page_shows_the_overlay_when_asked(torch_server: str, photos: dict[str, Path], tmp_path: Path) -> None:
    from test_server_browser import CHROMIUM, DevTools

    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        browser.open_page(f"{torch_server}/")
        browser.evaluate("sessionStorage.setItem('imgclf-key', 'k'); location.reload(); true")
        browser.wait_for("document.readyState === 'complete' && "
                         "document.getElementById('model').textContent.length > 3")
        browser.evaluate("document.getElementById('explain').click(); true")
        browser.set_file("#file", photos["png"])
        browser.wait_for("['done', 'error'].includes(document.body.dataset.state)")
        browser.wait_for("document.getElementById('heat').complete")
        shown = browser.evaluate("""({
            state: document.body.dataset.state, status: document.getElementById('status').textContent,
            explained: document.getElementById('out').classList.contains('explained'),
            heatWidth: document.getElementById('heat').naturalWidth,
            heatVisible: document.getElementById('heat').getBoundingClientRect().width > 0})""")
        browser.screenshot(tmp_path / "page.png")
        print(f"screenshot: {tmp_path / 'page.png'}")
    finally:
        browser.close()
    assert shown["state"] == "done", shown["status"]
    assert shown["explained"] and shown["heatWidth"] >= MIN_SIDE and shown["heatVisible"]
