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
from imgclf.models.checkpoint import calibration_of, load_checkpoint, model_from_checkpoint, task_of

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
        "output": "logits (batch, num_classes); " + (
            "sigmoid(logits) gives each class's probability in the order of `classes`, a class answered where it "
            "reaches its entry of `thresholds`" if task_of(ckpt) == "multilabel" else
            "softmax(logits / temperature) gives calibrated probabilities in the order of `classes`"),
        "task": task_of(ckpt),  # multiclass | multilabel
        "checkpoint_sha256": checkpoint_sha256,
        # the temperature fitted on validation logits (1.0 when none was) and, where kept, that split's
        # coverage-accuracy curve, from which `--target-accuracy` picks a reject threshold (JSON)
        **{key: json.dumps(value) for key, value in calibration_of(ckpt).items() if value is not None},
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


def _verified_fp32(checkpoint: str | Path, out: Path, opset: int) -> dict[str, Any]:
    """The fp32 graph with metadata, checked against torch: the file `export_onnx` writes, and `export_int8`'s
    starting point."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if opset < 7:
        raise UserError(f"--opset {opset} is too old; use 17 or newer")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).float().eval()
    size = int(ckpt["input_size"])
    proto, exporter = _to_onnx(model, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)), opset)

    meta = onnx_metadata(ckpt, model, sha256_file(checkpoint))
    _set_metadata(proto, meta)
    data = proto.SerializeToString()

    check = verify(model, _ort_session(data), size)
    if not agrees(check):
        raise UserError(f"ONNX export does not match torch (max abs difference: logits {check['max_abs_diff']:.3g} "
                        f"at logit scale {check['max_abs_logit']:.3g}, probabilities "
                        f"{check['max_abs_prob_diff']:.3g}; tolerance {TOLERANCE}); {out} was not written")
    return {"ckpt": ckpt, "proto": proto, "data": data, "meta": meta, "check": check, "exporter": exporter,
            "size": size}


def _set_metadata(proto: Any, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.doc_string = "imgclf", f"imgclf {meta['model']} classifier; see metadata_props"


def _exported(out: Path, checkpoint: str | Path, built: dict[str, Any], proto: Any, opset: int) -> dict[str, Any]:
    """What every export reports about the file it wrote (fp32 or int8)."""
    return {"onnx": str(out), "checkpoint": str(checkpoint), "model": built["meta"]["model"],
            "classes": json.loads(built["meta"]["classes"]), "input_size": built["size"],
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset),
            "exporter": built["exporter"], "dynamic_batch": True}


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> dict[str, Any]:
    """Export a checkpoint to one ONNX file (dynamic batch axis, metadata inside), verified against torch.

    Nothing is written unless ONNX Runtime reproduces the torch logits within TOLERANCE, so a file at
    `out` is always one that was checked.
    """
    import onnx

    started = time.perf_counter()
    out = Path(out)
    built = _verified_fp32(checkpoint, out, opset)
    proto, data, check = built["proto"], built["data"], built["check"]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, data)
    return {
        **_exported(out, checkpoint, built, proto, opset),
        "opset_requested": opset,  # the exporter keeps a newer one when it cannot convert down
        "verified": True,
        **check,
        "tolerance": TOLERANCE,
        "verify_batch_sizes": list(VERIFY_BATCHES),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "onnx_checker": _check(onnx, proto),
        "seconds": round(time.perf_counter() - started, 2),
    }


# -- int8 ----------------------------------------------------------------------------------------------------------

def _split_arrays(ckpt: dict[str, Any], data: str | None, split: str, limit: int | None = None,
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """(images float32 NCHW as the ONNX graph takes them, labels) of a split of the checkpoint's data (or
    `data`), preprocessed as evaluation preprocesses them; None where the source has no such split."""
    from imgclf.config import scored_part
    from imgclf.data.loaders import eval_batch_size, make_loader
    from imgclf.data.photos import Preprocess as _Preprocess
    from imgclf.models.checkpoint import checkpoint_config

    cfg = checkpoint_config(ckpt)
    cfg = cfg.replace(data=data or cfg.data, subset=None, train_fraction=1.0)
    classes = list(ckpt["classes"])
    if split == "train":  # the training images as training saw them: a val carved out of train stays out
        from imgclf.config import data_input_size, load_data
        from imgclf.data.sources import load_part

        own_val = load_part(cfg.data, "val", classes, data_input_size(cfg)) is not None
        part = load_part(cfg.data, "train", classes, data_input_size(cfg)) if own_val else load_data(cfg).train
        if part is None or len(part) == 0:
            return None
    else:
        part = scored_part(cfg, split, classes)
    preprocess = _Preprocess.from_checkpoint(ckpt)
    size = preprocess.input_size
    loader = make_loader(part, eval_batch_size(size, "cpu"), "cpu", train=False, input_size=size,
                         channels_last=False, num_workers=0, preprocess=preprocess)
    xs, ys, n = [], [], 0
    for x, y in loader:
        xs.append(x.float().contiguous().numpy())
        ys.append(y.numpy())
        n += len(y)
        if limit is not None and n >= limit:
            break
    if not xs:
        return None
    images, labels = np.concatenate(xs), np.concatenate(ys)
    return (images[:limit], labels[:limit]) if limit is not None else (images, labels)


def _calibration_reader(images: np.ndarray, batch: int = 8) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    return Reader()


def _quantize(fp32: bytes, calibration: np.ndarray) -> bytes:
    """Static QDQ int8: per-channel int8 weights, uint8 activations (U8S8), MinMax ranges from `calibration`,
    after ONNX Runtime's pre-processing (graph optimisation, ONNX shape inference) where that succeeds.

    U8S8, not S8S8: ONNX Runtime's x86 kernels multiply uint8 by int8 (VPMADDUBSW, VNNI). On CIFAR-10 fastcnn,
    2 cores of an Intel Xeon with AVX-512 VNNI and AMX, median ms at batch 1 / 32: fp32 0.41 / 7.5, S8S8 0.75
    / 11.7 (slower than fp32), U8S8 0.26 / 5.4 (1.6x / 1.4x faster); QOperator was no faster than QDQ.
    Symbolic shape inference is skipped: it fails on the dynamo exporter's Reshape."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="imgclf-int8-") as tmp, _quiet_exporter():
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the plain graph instead
            pre = src
        try:
            quantize_static(str(pre), str(dst), _calibration_reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"int8 quantization failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
                            ) from None
        return dst.read_bytes()


def _score(session: Any, images: np.ndarray, labels: np.ndarray, batch: int) -> dict[str, float]:
    """Accuracy over the split, and mean latency of one image and of one batch of `batch` (warmed up)."""
    logits = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch]})[0]
                             for i in range(0, len(images), batch)])
    accuracy = float((logits.argmax(1) == labels).mean())
    singles = images[:min(len(images), 32)]
    session.run([OUTPUT_NAME], {INPUT_NAME: singles[:1]})
    started = time.perf_counter()
    for i in range(len(singles)):
        session.run([OUTPUT_NAME], {INPUT_NAME: singles[i:i + 1]})
    single = (time.perf_counter() - started) / len(singles)
    full = images[:batch]
    if len(full) < batch:  # a small split: repeat images to a whole batch, so both models time the same shape
        full = np.resize(full, (batch, *full.shape[1:]))
    session.run([OUTPUT_NAME], {INPUT_NAME: full})
    repeats, started = 5, time.perf_counter()
    for _ in range(repeats):
        session.run([OUTPUT_NAME], {INPUT_NAME: full})
    return {"accuracy": accuracy, "single_ms": single * 1e3,
            "batch_ms": (time.perf_counter() - started) / repeats * 1e3, "predictions": logits.argmax(1)}


def _int8_limits(calibration_images: int | None, max_accuracy_drop: float | None) -> tuple[int, float]:
    """The calibration size and accuracy tolerance asked for, else defaults.py's; out of range: one line."""
    from imgclf.defaults import INT8_CALIBRATION_IMAGES, INT8_MAX_ACCURACY_DROP

    calibration_images = INT8_CALIBRATION_IMAGES if calibration_images is None else int(calibration_images)
    max_accuracy_drop = INT8_MAX_ACCURACY_DROP if max_accuracy_drop is None else float(max_accuracy_drop)
    if calibration_images < 1:
        raise UserError(f"--calibration-images must be at least 1, got {calibration_images}")
    if max_accuracy_drop < 0:
        raise UserError(f"--max-accuracy-drop must be 0 or more points, got {max_accuracy_drop}")
    return calibration_images, max_accuracy_drop


def _int8_images(ckpt: dict[str, Any], data: str | None, calibration_images: int) -> tuple[str, Any, str, Any]:
    """(scored split, its (images, labels), calibration split, its images): int8 is scored on val (test where
    there is none) and calibrated on training images, or on the scored ones where no training split is read."""
    scored_split, scored = "val", None
    try:
        scored = _split_arrays(ckpt, data, "val")
    except UserError:
        scored = None
    if scored is None:
        scored_split, scored = "test", _split_arrays(ckpt, data, "test")
    if scored is None:
        raise UserError("no validation or test images to score the int8 model on; give --data")
    calib_split, calib = "train", _split_arrays(ckpt, data, "train", limit=calibration_images)
    if calib is None:
        calib_split, calib = scored_split, (scored[0][:calibration_images], scored[1][:calibration_images])
    return scored_split, scored, calib_split, calib


def export_int8(checkpoint: str | Path, out: str | Path, opset: int = 18, data: str | None = None,
                calibration_images: int | None = None, max_accuracy_drop: float | None = None,
                batch: int = 32) -> dict[str, Any]:
    """Export a checkpoint as a static int8 ONNX model, calibrated on up to `calibration_images` training
    images (validation images where the source has no training split to read), and scored beside the fp32
    export on the validation split (the test split where there is no validation split) with ONNX Runtime.

    Nothing is written when int8 loses more than `max_accuracy_drop` accuracy points: a UserError says
    what it lost.
    """
    import onnx

    calibration_images, max_accuracy_drop = _int8_limits(calibration_images, max_accuracy_drop)
    started = time.perf_counter()
    out = Path(out)
    built = _verified_fp32(checkpoint, out, opset)
    ckpt, fp32 = built["ckpt"], built["data"]
    if task_of(ckpt) == "multilabel":
        raise UserError("--int8 is checked by its top-1 accuracy, which a multi-label model does not have; export "
                        f"it without --int8 ({out} was not written)")

    scored_split, scored, calib_split, calib = _int8_images(ckpt, data, calibration_images)

    quantized = onnx.load_from_string(_quantize(fp32, calib[0]))
    meta = {**built["meta"], "precision": "int8",
            "quantization": json.dumps({"method": "onnxruntime static QDQ", "weights": "int8 per-channel",
                                        "activations": "uint8 (MinMax)", "calibration_split": calib_split,
                                        "calibration_images": int(len(calib[0]))})}
    _set_metadata(quantized, meta)
    int8 = quantized.SerializeToString()

    images, labels = scored
    results = {name: _score(_ort_session(blob), images, labels, batch) for name, blob in
               (("fp32", fp32), ("int8", int8))}
    drop = (results["fp32"]["accuracy"] - results["int8"]["accuracy"]) * 100
    agreement = float((results["fp32"].pop("predictions") == results["int8"].pop("predictions")).mean())
    if drop > max_accuracy_drop + 1e-9:
        raise UserError(f"int8 loses {drop:.2f} accuracy points on the {scored_split} split ({len(labels)} images: "
                        f"fp32 {results['fp32']['accuracy']:.2%}, int8 {results['int8']['accuracy']:.2%}), more "
                        f"than --max-accuracy-drop {max_accuracy_drop:g}; {out} was not written")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, int8)
    ratio = lambda key: round(results["int8"][key] / results["fp32"][key], 3) if results["fp32"][key] else None  # noqa: E731
    return {
        **_exported(out, checkpoint, built, quantized, opset),
        "precision": "int8",
        "fp32_verified": True,
        **{f"fp32_{k}": v for k, v in built["check"].items()},
        "calibration_split": calib_split,
        "calibration_images": int(len(calib[0])),
        "scored_split": scored_split,
        "scored_images": int(len(labels)),
        "fp32_accuracy": round(results["fp32"]["accuracy"], 4),
        "int8_accuracy": round(results["int8"]["accuracy"], 4),
        "accuracy_drop_points": round(drop, 2),
        "max_accuracy_drop": max_accuracy_drop,
        "top1_agreement": round(agreement, 4),
        "fp32_bytes": len(fp32),
        "bytes": len(int8),
        "size_ratio": round(len(int8) / len(fp32), 3),
        "fp32_single_ms": round(results["fp32"]["single_ms"], 3),
        "int8_single_ms": round(results["int8"]["single_ms"], 3),
        "single_latency_ratio": ratio("single_ms"),
        "latency_batch_size": batch,
        "fp32_batch_ms": round(results["fp32"]["batch_ms"], 3),
        "int8_batch_ms": round(results["int8"]["batch_ms"], 3),
        "batch_latency_ratio": ratio("batch_ms"),
        "speedup_single": round(results["fp32"]["single_ms"] / results["int8"]["single_ms"], 2),  # > 1: int8 faster
        "speedup_batch": round(results["fp32"]["batch_ms"] / results["int8"]["batch_ms"], 2),
        "sha256": hashlib.sha256(int8).hexdigest(),
        "onnx_checker": _check(onnx, quantized),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check(onnx: Any, proto: Any) -> str:
    """onnx's structural checker, as a note (ONNX Runtime already ran the model, which is the real test)."""
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001
        return f"warning: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    return "ok"
