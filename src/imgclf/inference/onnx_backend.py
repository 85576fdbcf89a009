"""ONNX Runtime backend: what a Predictor needs, from an exported file alone (classes and input size from its
metadata); `imgclf.inference.predictor.load_onnx_predictor` makes the Predictor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.data.photos import Preprocess
from imgclf.errors import UserError
from imgclf.inference.export import INPUT_NAME, ONNX_FORMAT, sha256_file


def read_metadata(session: Any, path: str | Path) -> dict[str, str]:
    """The metadata_props `imgclf export` wrote; a file without them cannot be decoded correctly."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    if props.get("format") != ONNX_FORMAT or "classes" not in props or "input_size" not in props:
        raise UserError(f"{path}: an ONNX model without imgclf metadata (class names, input size); "
                        "export it with `imgclf export`")
    return props


def check_graph(path: Path, session: Any, run: Any, classes: list[str], input_size: int,
                preprocess: Preprocess) -> None:
    """The metadata must describe this graph: a mismatch is refused here, at load, in one line, rather
    than found by every prediction (a server whose every /predict is a 500)."""
    if preprocess.input_size != input_size:
        raise UserError(f"{path}: the metadata disagrees with itself: input_size {input_size}, preprocess "
                        f"input_size {preprocess.input_size}")
    shape = list(session.get_inputs()[0].shape)  # ints where fixed, names (or None) where dynamic
    declared = f"the graph takes input {shape}"
    expected = [None, 3, input_size, input_size]
    if len(shape) != 4 or any(isinstance(d, int) and want and d != want for d, want in zip(shape, expected,
                                                                                           strict=True)):
        raise UserError(f"{path}: metadata says input (batch, 3, {input_size}, {input_size}) but {declared}")
    try:
        logits = run(torch.zeros(1, 3, input_size, input_size))
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises for a shape it cannot run
        raise UserError(f"{path}: the graph does not run on (1, 3, {input_size}, {input_size}) as the metadata "
                        f"says ({declared}; {exc.__class__.__name__})") from None
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise UserError(f"{path}: metadata names {len(classes)} classes but the graph gives "
                        f"{'x'.join(map(str, logits.shape))} outputs for one image")


def load_onnx(path: str | Path, threads: int | None = None,
              ) -> tuple[Callable[[torch.Tensor], np.ndarray], list[str], Preprocess, dict[str, Any]]:
    """(backend, classes, preprocessing, metadata): a Predictor's arguments for the ONNX file `path`, opened
    with ONNX Runtime on the CPU, with `threads` intra-op threads (default: torch's setting, so a process sets
    its thread budget once) that sleep rather than spin when idle."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX Runtime is not installed: pip install 'imgclf[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    props = read_metadata(session, path)
    try:
        classes = list(json.loads(props["classes"]))
        input_size = int(props["input_size"])
        preprocess = (Preprocess.from_dict(json.loads(props["preprocess"])) if "preprocess" in props
                      else Preprocess(input_size, "crop", 1.0))
        # files exported before calibration was kept: plain softmax, no validation curve
        calibration = {"temperature": float(json.loads(props.get("temperature", "1.0"))),
                       "selective": json.loads(props["selective"]) if "selective" in props else None,
                       # a multi-label model: sigmoid outputs and each class's threshold (older files: neither)
                       "task": props.get("task", "multiclass"),
                       "thresholds": json.loads(props["thresholds"]) if "thresholds" in props else None}
        if not calibration["temperature"] > 0:
            raise ValueError("temperature")
        if calibration["thresholds"] is not None and len(calibration["thresholds"]) != len(classes):
            raise ValueError("thresholds")
    except (ValueError, TypeError, KeyError, UserError):
        raise UserError(f"{path}: malformed imgclf metadata in the ONNX file") from None
    input_name = props.get("input_name", INPUT_NAME)
    if input_name not in {i.name for i in session.get_inputs()}:
        input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return session.run([output_name], {input_name: batch})[0]

    check_graph(path, session, run, classes, input_size, preprocess)

    metadata = {"model": props.get("model", "unknown"), "source": str(path), "backend": "onnxruntime",
                "checkpoint_sha256": props.get("checkpoint_sha256"), "onnx_sha256": sha256_file(path), **calibration}
    return run, classes, preprocess, metadata
