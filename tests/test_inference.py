"""Inference: ONNX export (metadata, dynamic batch, verified, atomic), ONNX vs torch on real photos,
`predict --onnx`, ONNX metadata checked against the graph at load, `predict` with bad files among good
ones, the micro-batcher, and the ONNX backend served over real HTTP."""

from __future__ import annotations

import asyncio
import io
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
from imgclf.inference.predictor import Predictor, load_onnx_predictor, predict_command


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


def _edited(source: Path, out: Path, **props: str) -> Path:
    """A copy of an exported file with some metadata_props replaced by hand."""
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in props:
            entry.value = props[entry.key]
    onnx.save(model, str(out))
    return out


def test_onnx_metadata_must_match_the_graph(tmp_path: Path, exported: tuple[Path, dict]) -> None:
    """A file whose metadata does not describe its graph is refused at load, in one line (it used to load,
    then every prediction failed, or quietly used the wrong class names)."""
    source = exported[0]
    def view(size: int) -> str:
        return json.dumps({"input_size": size, "resize": "crop", "crop_fraction": 0.875})

    cases = [  # (metadata edits, the error)
        ({"classes": json.dumps(list("abcd"))}, "names 4 classes but the graph gives 1x3"),  # a 3-wide head
        ({"classes": json.dumps(list("ab"))}, "names 2 classes but the graph gives 1x3"),
        ({"input_size": "32", "preprocess": view(32)},  # a graph that takes 16 x 16
         r"metadata says input \(batch, 3, 32, 32\) but the graph takes input \['batch', 3, 16, 16\]"),
        ({"preprocess": view(24)}, "input_size 16, preprocess input_size 24"),
    ]
    for i, (props, message) in enumerate(cases):
        with pytest.raises(UserError, match=message):
            load_onnx_predictor(_edited(source, tmp_path / f"{i}.onnx", **props))
    served = imgclf("serve", "--onnx", str(tmp_path / "0.onnx"), "--port", "0")  # refused before it listens
    assert served.returncode == 2 and served.stderr.count("\n") == 1, served.stderr
    assert "names 4 classes but the graph gives 1x3" in served.stderr


def test_predict_keeps_good_results_and_names_bad_files(tmp_path: Path, checkpoint: Path,
                                                        photos: dict[str, Path]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(photos["png"].read_bytes()[:2000])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    files = [str(photos["png"]), str(broken), str(photos["jpeg"]), str(tmp_path / "missing.png"), str(text),
             str(photos["gray"])]
    out, err = io.StringIO(), io.StringIO()
    code = predict_command(files, checkpoint=str(checkpoint), top_k=2, device="cpu", out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    good = [files[0], files[2], files[5]]
    assert code == 2 and [line["file"] for line in lines] == good
    expected = Predictor.load(checkpoint=str(checkpoint), device="cpu").predict(good, top_k=2)
    assert [line["label"] for line in lines] == [e["label"] for e in expected]
    assert all(len(line["top_k"]) == 2 for line in lines)
    problems = err.getvalue().splitlines()
    assert len(problems) == 3 and all(p.startswith("imgclf: error: ") for p in problems)
    assert "broken.png: not a readable image" in problems[0] and "image not found" in problems[1]
    assert "notes.jpg: not a readable image" in problems[2]


@pytest.mark.parametrize("top_k", [0, -1])
def test_predict_top_k_below_one_is_an_error(checkpoint: Path, photos: dict[str, Path], top_k: int) -> None:
    with pytest.raises(UserError, match=f"--top-k must be at least 1, got {top_k}"):
        predict_command([str(photos["png"])], checkpoint=str(checkpoint), top_k=top_k)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        Predictor.load(checkpoint=str(checkpoint), device="cpu").predict([photos["png"]], top_k=top_k)


def test_predict_cli_bad_file_and_top_k(tmp_path: Path, checkpoint: Path, photos: dict[str, Path]) -> None:
    """The same through `imgclf predict`: good results on stdout, the bad file named, exit 2."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = imgclf("predict", "--checkpoint", str(checkpoint), "--device", "cpu", str(photos["png"]), str(bad),
                    str(photos["jpeg"]))
    assert result.returncode == 2
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(photos["png"]),
                                                                                str(photos["jpeg"])]
    assert result.stderr.strip() == f"imgclf: error: {bad}: not a readable image (UnidentifiedImageError)"
    for top_k in ("0", "-1"):
        result = imgclf("predict", "--checkpoint", str(checkpoint), "--top-k", top_k, str(photos["png"]))
        assert result.returncode == 2 and not result.stdout and result.stderr.count("\n") == 1, result.stderr
        assert "top-k" in result.stderr or "top_k" in result.stderr


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
