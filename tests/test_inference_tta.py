"""Test-time augmentation at inference: `predict --tta` and `serve --tta` (off by default), with its cost
printed once. The averaged logits are checked against `evaluate --tta`'s own `tta_logits`, run view by view
on the network, independently of the Predictor's batched views."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from helpers import imgclf, make_folder
from imgclf.evaluation.metrics import tta_logits
from imgclf.inference.predictor import TTA_VIEWS, Predictor, predict_command, tta_views
from imgclf.mathutil import softmax

COST_LINE = "imgclf: --tta: 6 views an image,"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = make_folder(tmp_path_factory.mktemp("tta") / "imgs", classes=3, per_class=4, size=20)
    return sorted(root.rglob("*.png"))


def run_predict(images: list[Path], checkpoint: Path, **options: object) -> tuple[list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_command([str(p) for p in images], checkpoint=str(checkpoint), device="cpu", top_k=3, out=out,
                           err=err, batch_size=5, **options)
    assert code == 0, err.getvalue()
    return [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def test_views_match_evaluate_tta(checkpoint: Path) -> None:
    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    x = torch.rand(3, 3, predictor.input_size, predictor.input_size)
    assert tta_views(x).shape == (TTA_VIEWS * 3, *x.shape[1:])
    with torch.inference_mode():
        want = tta_logits(predictor.model.eval(), x).numpy()
    predictor.tta = True
    np.testing.assert_allclose(predictor.logits(x), want, rtol=1e-4, atol=1e-5)


def test_predict_tta_top_label_is_argmax_of_averaged_views(checkpoint: Path, images: list[Path]) -> None:
    results, err = run_predict(images, checkpoint, tta=True)
    assert len(results) == len(images)
    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")  # tta off: the views by hand
    model = predictor.model.eval()
    for path, result in zip(images, results, strict=True):
        x = predictor.preprocess([path])
        with torch.inference_mode():
            averaged = tta_logits(model, x).numpy()[0]
        probs = softmax(averaged[None])[0]
        assert result["label"] == predictor.classes[int(np.argmax(averaged))]
        assert result["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
        listed = [t["probability"] for t in result["top_k"]]
        assert len(listed) == 3 and all(0 <= p <= 1 for p in listed) and sum(listed) == pytest.approx(1, abs=1e-4)
    cost = [line for line in err.splitlines() if line.startswith(COST_LINE)]
    assert len(cost) == 1, err  # once, not once a batch
    assert "ms an image vs" in cost[0] and "measured on the first batch" in cost[0]


def test_predict_without_tta_is_unchanged(checkpoint: Path, images: list[Path]) -> None:
    results, err = run_predict(images, checkpoint)
    assert "--tta" not in err
    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    assert predictor.tta is False
    plain = predictor.predict(images, top_k=3)
    for result, want in zip(results, plain, strict=True):
        assert result["label"] == want["label"]
        assert result["probability"] == pytest.approx(want["probability"], abs=1e-6)
    with torch.inference_mode():
        logits = predictor.model.eval()(predictor.preprocess(images)).numpy()
    assert [r["label"] for r in results] == [predictor.classes[i] for i in logits.argmax(1)]


def test_predict_tta_cli_prints_the_cost(checkpoint: Path, images: list[Path]) -> None:
    result = imgclf("predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--tta", *map(str, images[:2]))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert sum(line.startswith(COST_LINE) for line in result.stderr.splitlines()) == 1, result.stderr


def test_onnx_tta_runs_the_views_as_one_batch(checkpoint: Path, images: list[Path],
                                              tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "model.onnx"
    exported = imgclf("export", "--checkpoint", str(checkpoint), "--out", str(onnx_path))
    assert exported.returncode == 0, exported.stderr
    predictor = Predictor.load(onnx=str(onnx_path), tta=True)
    batches = []
    backend = predictor.backend
    predictor.backend = lambda x: batches.append(len(x)) or backend(x)
    x = predictor.preprocess(images[:4])
    got = predictor.logits(x)
    assert batches == [TTA_VIEWS * 4]
    torch_predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu", tta=True)
    np.testing.assert_allclose(got, torch_predictor.logits(x), atol=1e-4)


def test_serve_tta_metadata_and_cost_line(checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from helpers import stop_process
    from test_server import start_server

    log = tmp_path / "serve.log"
    proc, base = start_server(["--checkpoint", str(checkpoint), "--device", "cpu", "--tta"], log)
    try:
        assert httpx.get(f"{base}/metadata").json()["tta"] is True
        r = httpx.post(f"{base}/predict", files={"file": (images[0].name, images[0].read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu", tta=True)
        assert r.json()["label"] == predictor.predict([images[0]])[0]["label"]
    finally:
        stop_process(proc)
    text = log.read_text()
    assert sum(line.startswith(COST_LINE) for line in text.splitlines()) == 1, text
    assert "warm-up" in text and "Traceback" not in text


def test_create_app_reports_tta_off_by_default(checkpoint: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgclf.cli import build_parser
    from imgclf.inference.server import create_app
    from imgclf.inference.settings import ServerSettings

    assert build_parser().parse_args(["serve", "--checkpoint", str(checkpoint)]).tta is False
    assert build_parser().parse_args(["serve", "--checkpoint", str(checkpoint), "--tta"]).tta is True
    assert build_parser().parse_args(["predict", "x.png"]).tta is False
    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    with TestClient(create_app(predictor, ServerSettings())) as client:
        meta = client.get("/metadata").json()
    assert meta["tta"] is False and "tta" not in meta["limits"]
