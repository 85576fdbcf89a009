"""Inference: ONNX export (metadata, dynamic batch, verified, atomic), ONNX vs torch on real photos,
`predict --onnx`, the micro-batcher, and the ONNX backend served over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import free_port, imgclf
from imgclf.errors import UserError
from imgclf.inference import export as export_mod
from imgclf.inference.batching import MicroBatcher
from imgclf.inference.onnx_backend import load_onnx_predictor
from imgclf.inference.predictor import Predictor


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`imgclf export` through the CLI: stdout is one JSON report."""
    out = tmp_path_factory.mktemp("onnx") / "sub" / "model.onnx"
    result = imgclf("export", "--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_export_report_metadata_and_dynamic_batch(exported: tuple[Path, dict], checkpoint: Path) -> None:
    out, report = exported
    assert report["verified"] is True and report["max_abs_diff"] <= 1e-4 and report["max_abs_prob_diff"] <= 1e-4
    assert report["classes"] == ["class_0", "class_1", "class_2"] and report["input_size"] == 16
    assert not list(out.parent.glob(".*.tmp"))  # the temp file was renamed, nothing left behind

    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["classes"]) == report["classes"] and props["input_size"] == "16"
    assert json.loads(props["input_format"])["layout"] == "NCHW" and "RGB" in props["input_format"]
    assert json.loads(props["normalization"])["where"].startswith("inside the model")
    assert props["checkpoint_sha256"] == export_mod.sha256_file(checkpoint)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        logits = session.run(None, {"image": np.random.rand(n, 3, 16, 16).astype(np.float32)})[0]
        assert logits.shape == (n, 3)


def test_onnx_and_torch_agree_on_real_images(exported: tuple[Path, dict], checkpoint: Path,
                                             photos: dict[str, Path]) -> None:
    torch_p = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    onnx_p = Predictor.load(onnx=str(exported[0]))
    assert onnx_p.classes == torch_p.classes and onnx_p.input_size == torch_p.input_size
    assert onnx_p.metadata["checkpoint_sha256"] == torch_p.metadata["checkpoint_sha256"]
    synthetic = sorted((checkpoint.parents[2] / "imgs" / "test").rglob("*.png"))[:6]
    batch = torch_p.preprocess([*photos.values(), *synthetic])
    np.testing.assert_allclose(onnx_p.backend(batch), torch_p.backend(batch), atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_p.probabilities(batch), torch_p.probabilities(batch), atol=1e-4, rtol=0)
    one = torch_p.preprocess([photos["jpeg"]])  # batch of one through the dynamic axis
    np.testing.assert_allclose(onnx_p.backend(one), torch_p.backend(one), atol=1e-4, rtol=0)


def test_predict_cli_with_onnx(exported: tuple[Path, dict], checkpoint: Path, photos: dict[str, Path]) -> None:
    files = [str(p) for p in photos.values()]
    result = imgclf("predict", "--onnx", str(exported[0]), *files, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Predictor.load(checkpoint=str(checkpoint), device="cpu").predict(files, top_k=3)
    assert [line["file"] for line in lines] == files
    assert [line["label"] for line in lines] == [e["label"] for e in expected]
    for line, e in zip(lines, expected, strict=True):
        assert len(line["top_k"]) == 3
        assert line["probability"] == pytest.approx(e["probability"], abs=1e-4)


def test_export_and_onnx_user_errors(tmp_path: Path, checkpoint: Path, exported: tuple[Path, dict]) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        export_mod.export_onnx(tmp_path / "nope.pt", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="is a folder"):
        export_mod.export_onnx(checkpoint, tmp_path)
    with pytest.raises(UserError, match="ONNX file not found"):
        load_onnx_predictor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_onnx_predictor(junk)
    bare = onnx.load(str(exported[0]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(UserError, match="without imgclf metadata"):
        load_onnx_predictor(tmp_path / "bare.onnx")


def test_export_writes_nothing_when_verification_fails(tmp_path: Path, checkpoint: Path, exported: tuple[Path, dict],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good file")
    monkeypatch.setattr(export_mod, "verify", lambda *a, **k: {"max_abs_diff": 0.5, "max_abs_prob_diff": 0.1,
                                                                  "max_abs_logit": 3.0})
    monkeypatch.setattr(export_mod, "_to_onnx", lambda model, example, opset: (onnx.load(str(exported[0])), "stub"))
    with pytest.raises(UserError, match="does not match torch"):
        export_mod.export_onnx(checkpoint, out)
    assert out.read_bytes() == b"previous good file" and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_image_is_a_user_error(tmp_path: Path, checkpoint: Path, photos: dict[str, Path]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(photos["png"].read_bytes()[:2000])
    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    with pytest.raises(UserError, match="broken.png: not a readable image"):
        predictor.predict_files([photos["png"], broken])


# ----------------------------------------------------------------------------------------- micro-batcher

def test_microbatcher_gathers_concurrent_items_in_order() -> None:
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        time.sleep(0.02)  # a forward pass: items keep arriving meanwhile
        seen.append(items)
        return [i * 10 for i in items]

    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8, max_wait_ms=20)
        await batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(50))))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [i * 10 for i in range(50)]
    assert max(map(len, seen)) == 8 and len(seen) < 50 and sorted(sum(seen, [])) == list(range(50))


def test_microbatcher_deadline_errors_and_workers() -> None:
    calls: list[int] = []

    def run(items: list[int]) -> list[int]:
        calls.append(len(items))
        if -1 in items:
            raise RuntimeError("bad batch")
        return items

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=64, max_wait_ms=30, workers=2)
        await batcher.start()
        try:
            t0 = time.perf_counter()
            assert await batcher.submit(7) == 7  # alone: leaves after max_wait, not never
            assert time.perf_counter() - t0 < 2.0
            with pytest.raises(RuntimeError, match="bad batch"):
                await batcher.submit_many([1, -1])
            assert await batcher.submit_many([3, 4, 5]) == [3, 4, 5]  # the worker survived the failure
        finally:
            await batcher.close()

    asyncio.run(main())
    assert calls[0] == 1 and 2 in calls and 3 in calls
    with pytest.raises(ValueError):
        MicroBatcher(run, max_batch_size=0)


# ------------------------------------------------------------------------------------------- ONNX served

@pytest.fixture
def onnx_server(exported: tuple[Path, dict]) -> Iterator[str]:
    """The app on an ONNX Runtime Predictor, uvicorn in a thread on a free loopback port."""
    import uvicorn

    from imgclf.inference.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_onnx_predictor(exported[0])), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_onnx_backend_over_http(onnx_server: str, checkpoint: Path, photos: dict[str, Path]) -> None:
    expected = Predictor.load(checkpoint=str(checkpoint), device="cpu").predict([photos["png"]])[0]
    with httpx.Client(base_url=onnx_server, timeout=30) as client:
        meta = client.get("/metadata").json()
        assert meta["backend"] == "onnxruntime" and meta["onnx_sha256"]
        r = client.post("/predict", files={"file": ("cat.png", photos["png"].read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == expected["label"]
    assert r.json()["probability"] == pytest.approx(expected["probability"], abs=1e-4)
