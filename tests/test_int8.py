"""`imgclf export --int8`: static int8 through ONNX Runtime's quantization tools, metadata as fp32's plus
`precision: int8`, scored beside fp32 on the validation split, refused (exit 2, one line, no file) when it
loses more than --max-accuracy-drop; `predict --onnx` runs the int8 file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from helpers import imgclf
from imgclf import cli
from imgclf.inference import export as export_mod
from imgclf.inference.predictor import Predictor


@pytest.fixture(scope="module")
def int8_export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    result = imgclf("export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                    "--calibration-images", "32", "--max-accuracy-drop", "100")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_int8_file_metadata_and_report(int8_export: tuple[Path, dict], checkpoint: Path) -> None:
    out, report = int8_export
    assert out.is_file() and report["onnx"] == str(out) and report["precision"] == "int8"
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == "int8" and props["format"] == export_mod.ONNX_FORMAT
    assert json.loads(props["classes"]) == report["classes"] and "preprocess" in props
    assert props["checkpoint_sha256"] == export_mod.sha256_file(checkpoint)
    ops = {node.op_type for node in model.graph.node}
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and int8_weights
    assert 0 < report["calibration_images"] <= 32 and report["calibration_split"] == "train"
    assert report["scored_split"] == "val" and report["scored_images"] > 0
    for key in ("fp32_accuracy", "int8_accuracy", "top1_agreement"):
        assert 0.0 <= report[key] <= 1.0
    assert report["accuracy_drop_points"] <= 100
    assert report["size_ratio"] == pytest.approx(report["bytes"] / report["fp32_bytes"], abs=1e-3)
    assert report["single_latency_ratio"] > 0 and report["batch_latency_ratio"] > 0


def test_predict_onnx_runs_int8(int8_export: tuple[Path, dict], image_folder: Path) -> None:
    out, report = int8_export
    files = sorted(str(p) for p in image_folder.rglob("*.png"))[:3]
    result = imgclf("predict", "--onnx", str(out), *files)
    assert result.returncode == 0, result.stderr
    assert all(any(c in line for c in report["classes"]) for line in result.stdout.strip().splitlines()[-3:])
    predictor = Predictor.load(onnx=str(out))
    probs = predictor.probabilities(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert np.allclose(np.asarray(probs).sum(1), 1.0, atol=1e-4)


def test_int8_refused_when_it_loses_more_than_the_tolerance(checkpoint: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    real_score = export_mod._score
    calls = []

    def lossy(session, images, labels, batch):  # noqa: ANN001, ANN202 - the second model scored is int8
        result = real_score(session, images, labels, batch)
        calls.append(1)
        if len(calls) == 2:
            result["accuracy"] -= 0.5
        return result

    monkeypatch.setattr(export_mod, "_score", lossy)
    out = tmp_path / "refused.onnx"
    code = cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                     "--calibration-images", "16", "--max-accuracy-drop", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "int8 loses 50.00 accuracy points" in err and "not written" in err
    assert list(tmp_path.iterdir()) == []


def test_int8_options_need_int8(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                     "--max-accuracy-drop", "2"])
    assert code == 2 and "go with --int8" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
