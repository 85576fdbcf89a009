"""ONNX export: one self-describing file, verified against torch before it replaces anything.

The file carries everything a consumer needs besides the bytes of an image: class names, input size and
layout, and the fact that normalization happens inside the graph (models take RGB float [0, 1] NCHW).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.data.photos import Preprocess
from imgclf.errors import UserError
from imgclf.fileio import write_bytes
from imgclf.models import ImageClassifier
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint

ONNX_FORMAT = "imgclf-onnx-v1"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TOLERANCE = 1e-4  # max abs difference between torch and ONNX Runtime (see `agrees`)
VERIFY_BATCHES = (1, 3, 8)  # several sizes, so the dynamic batch axis is exercised too
PREPROCESSING = ("decode; EXIF transpose; RGB (alpha composited on white); shrink the short side to "
                 "ceil(input_size / crop_fraction) (bicubic, aspect kept); uint8 -> float32 / 255; then by `resize`: "
                 "crop = bilinear short side to input_size / crop_fraction and centre-crop input_size, pad = long "
                 "side to input_size and pad with 0.5, squash = input_size x input_size; NCHW "
                 "(imgclf.data.photos.Preprocess)")


def sha256_file(path: str | Path) -> str:
    """Streamed, so a large checkpoint is never read into memory at once."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters print progress and deprecation notes; the CLI's stdout must stay one JSON object."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int) -> tuple[Any, str]:
    """torch.export-based exporter first (the maintained one); the TorchScript one when it cannot trace."""
    import onnx

    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=opset, verbose=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        return program.model_proto, "dynamo"
    except Exception as first:  # noqa: BLE001 - any tracing failure: try the other exporter
        buffer = io.BytesIO()
        try:
            with _quiet_exporter():
                torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except Exception as second:  # noqa: BLE001
            raise UserError(f"ONNX export failed: {first.__class__.__name__}: {first}; "
                            f"TorchScript fallback: {second.__class__.__name__}: {second}") from None
        return onnx.load_from_string(buffer.getvalue()), "torchscript"


def onnx_metadata(ckpt: dict[str, Any], model: ImageClassifier, checkpoint_sha256: str) -> dict[str, str]:
    """metadata_props: strings only, so lists and dicts are JSON."""
    mean = [round(float(v), 6) for v in model.mean.flatten()]
    std = [round(float(v), 6) for v in model.std.flatten()]
    size = int(ckpt["input_size"])
    return {
        "format": ONNX_FORMAT,
        "model": str(ckpt["config"]["model"]),
        "classes": json.dumps(list(ckpt["classes"])),
        "input_size": str(size),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_format": json.dumps({"layout": "NCHW", "shape": ["batch", 3, size, size], "color": "RGB",
                                    "dtype": "float32", "range": [0.0, 1.0]}),
        "normalization": json.dumps({"where": "inside the model: (x - mean) / std", "mean": mean, "std": std}),
        "preprocessing": PREPROCESSING,
        "preprocess": json.dumps(Preprocess.from_checkpoint(ckpt).to_dict()),
        "output": "logits (batch, num_classes); softmax gives probabilities in the order of `classes`",
        "checkpoint_sha256": checkpoint_sha256,
    }


def _ort_session(model_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def verify(model: torch.nn.Module, session: Any, input_size: int, seed: int = 0) -> dict[str, float]:
    """Torch vs ONNX Runtime over random batches of several sizes.

    max_abs_diff: of the logits; max_abs_prob_diff: of the softmax probabilities; max_abs_logit: the
    logits' scale, since float32 rounding grows with it (a badly trained net can have logits of 1e4,
    where 1e-4 is below one float32 step).
    """
    gen = torch.Generator().manual_seed(seed)
    worst = {"max_abs_diff": 0.0, "max_abs_prob_diff": 0.0, "max_abs_logit": 0.0}
    for n in VERIFY_BATCHES:
        x = torch.rand(n, 3, input_size, input_size, generator=gen)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            return {**worst, "max_abs_diff": float("inf"), "max_abs_prob_diff": float("inf")}
        probs = [torch.softmax(torch.from_numpy(v).double(), dim=1).numpy() for v in (expected, got)]
        worst["max_abs_diff"] = max(worst["max_abs_diff"], float(np.abs(got - expected).max()))
        worst["max_abs_prob_diff"] = max(worst["max_abs_prob_diff"], float(np.abs(probs[0] - probs[1]).max()))
        worst["max_abs_logit"] = max(worst["max_abs_logit"], float(np.abs(expected).max()))
    return worst


def agrees(check: dict[str, float]) -> bool:
    """Probabilities within TOLERANCE, and logits within TOLERANCE relative to their scale (at least 1)."""
    return (check["max_abs_prob_diff"] <= TOLERANCE
            and check["max_abs_diff"] <= TOLERANCE * max(1.0, check["max_abs_logit"]))


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> dict[str, Any]:
    """Export a checkpoint to one ONNX file (dynamic batch axis, metadata inside), verified against torch.

    Nothing is written unless ONNX Runtime reproduces the torch logits within TOLERANCE, so a file at
    `out` is always one that was checked.
    """
    import onnx

    started = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if opset < 7:
        raise UserError(f"--opset {opset} is too old; use 17 or newer")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).float().eval()
    size = int(ckpt["input_size"])
    proto, exporter = _to_onnx(model, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)), opset)

    meta = onnx_metadata(ckpt, model, sha256_file(checkpoint))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "imgclf", f"imgclf {meta['model']} classifier; see metadata_props"
    data = proto.SerializeToString()

    check = verify(model, _ort_session(data), size)
    if not agrees(check):
        raise UserError(f"ONNX export does not match torch (max abs difference: logits {check['max_abs_diff']:.3g} "
                        f"at logit scale {check['max_abs_logit']:.3g}, probabilities "
                        f"{check['max_abs_prob_diff']:.3g}; tolerance {TOLERANCE}); {out} was not written")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, data)
    return {
        "onnx": str(out),
        "checkpoint": str(checkpoint),
        "model": meta["model"],
        "classes": json.loads(meta["classes"]),
        "input_size": size,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset),
        "opset_requested": opset,  # the exporter keeps a newer one when it cannot convert down
        "exporter": exporter,
        "dynamic_batch": True,
        "verified": True,
        **check,
        "tolerance": TOLERANCE,
        "verify_batch_sizes": list(VERIFY_BATCHES),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "onnx_checker": _check(onnx, proto),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check(onnx: Any, proto: Any) -> str:
    """onnx's structural checker, as a note (ONNX Runtime already ran the model, which is the real test)."""
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        return f"warning: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    return "ok"
