"""Predictor: image bytes or files -> top-k labels, with exactly the training preprocessing."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.data.csvlabels import LABEL_SEPARATOR
from imgclf.data.listing import is_archive
from imgclf.data.photos import Preprocess
from imgclf.data.sources import warn_unreadable
from imgclf.errors import UserError
from imgclf.evaluation.gradcam import GradCAM, overlays_png
from imgclf.evaluation.multilabel import DEFAULT_THRESHOLD
from imgclf.evaluation.selective import SelectiveCurve, threshold_for_accuracy
from imgclf.fileio import atomic_file, write_bytes
from imgclf.inference.bulk import Listing, Progress, Tally, list_inputs, score_line
from imgclf.inference.onnx_backend import load_onnx
from imgclf.mathutil import sigmoid, softmax
from imgclf.models.checkpoint import calibration_of, load_checkpoint, model_from_checkpoint, task_of
from imgclf.runtime import resolve_device

Backend = Callable[[torch.Tensor], np.ndarray]  # float (N, 3, S, S) in [0, 1] -> logits (N, C)
Explain = Callable[[str | Path, str], str]  # (image path, label to explain) -> the overlay's path

# Test-time augmentation: the views and weights of `imgclf.evaluation.metrics.tta_logits` (what `evaluate --tta`
# and training's final evaluation use): the image and its mirror at 1/4 each, and each of them shifted one
# pixel up-left and down-right (reflect-padded) at 1/8 each. Here they go through the backend as one batch.
TTA_WEIGHTS = np.array([1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8], dtype=np.float32)
TTA_VIEWS = len(TTA_WEIGHTS)


def tta_views(x: torch.Tensor) -> torch.Tensor:
    """(6N, 3, S, S): the N images, their mirrors, then each shifted up-left and down-right, view by view."""
    h, w = x.shape[-2:]
    views = [x, x.flip(3)]
    padded = [F.pad(v, (1, 1, 1, 1), mode="reflect") for v in views]
    shifted = [s for p in padded for s in (p[..., :h, :w], p[..., 2:, 2:])]
    return torch.cat([*views, *shifted])


def tta_backend_logits(backend: Backend, x: torch.Tensor) -> np.ndarray:
    """(N, C) logits averaged over the TTA views, all run through `backend` in one call (one ONNX session
    run, one forward pass)."""
    logits = np.asarray(backend(tta_views(x)), dtype=np.float32)
    return np.tensordot(TTA_WEIGHTS, logits.reshape(TTA_VIEWS, len(x), -1), axes=1)


class Predictor:
    """Decodes and views each image exactly as evaluation did (`Preprocess`), runs a backend, ranks."""

    def __init__(self, backend: Backend, classes: list[str], preprocess: Preprocess, metadata: dict[str, Any],
                 model: torch.nn.Module | None = None, tta: bool = False) -> None:
        self.backend, self.classes, self.preprocessing, self.metadata = backend, classes, preprocess, metadata
        self.model = model  # the torch network behind a checkpoint's backend (Grad-CAM); None for ONNX
        self.tta = tta  # average each image's logits over the TTA views (6x the compute)
        # Fitted on the validation logits at the end of training (1.0 for a model without one): probabilities are
        # softmax(logits / temperature). `selective` is that split's coverage-accuracy curve (or None).
        self.temperature = float(metadata.get("temperature") or 1.0)
        self.selective: dict[str, Any] | None = metadata.get("selective")
        self.reject_below: float | None = None  # answer label None (with the reason) under this top probability
        # A multi-label model (sigmoid outputs) answers every class whose probability reaches its threshold, chosen
        # on the validation split at the end of training (0.5 each for a model without them).
        self.multilabel = metadata.get("task") == "multilabel"
        self.thresholds = np.asarray(metadata.get("thresholds") or [DEFAULT_THRESHOLD] * len(classes), np.float32)
        # With tta: called once, with the cost line `tta_cost` measured on the first batch predicted.
        self.on_tta_cost: Callable[[str], None] | None = None

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @classmethod
    def load(cls, checkpoint: str | None = None, onnx: str | None = None, device: str = "auto",
             tta: bool = False) -> Predictor:
        """A torch checkpoint (on `device`) or an exported ONNX file (ONNX Runtime, CPU); the seconds it
        took are metadata["load_seconds"]. `tta`: test-time augmentation (see `tta_views`)."""
        start = time.perf_counter()
        if onnx:
            predictor = load_onnx_predictor(onnx)
        elif not checkpoint:
            raise UserError("give a checkpoint or an ONNX file")
        else:
            predictor = cls._load_checkpoint(checkpoint, device)
        predictor.metadata["load_seconds"] = time.perf_counter() - start
        predictor.tta = tta
        return predictor

    @classmethod
    def _load_checkpoint(cls, checkpoint: str, device: str) -> Predictor:
        ckpt = load_checkpoint(checkpoint)
        dev = resolve_device(device)
        # channels_last: oneDNN's and cuDNN's preferred layout (about 1.3x on CPU here), same fp32 results.
        model = model_from_checkpoint(ckpt).to(dev, memory_format=torch.channels_last)

        @torch.inference_mode()
        def run(x: torch.Tensor) -> np.ndarray:
            return model(x.to(dev, memory_format=torch.channels_last)).float().cpu().numpy()

        from imgclf.inference.export import sha256_file

        metadata = {"model": ckpt["config"]["model"], "source": str(checkpoint), "backend": "torch",
                    "checkpoint_sha256": sha256_file(checkpoint), "task": task_of(ckpt), **calibration_of(ckpt)}
        return cls(run, list(ckpt["classes"]), Preprocess.from_checkpoint(ckpt), metadata, model=model)

    def preprocess(self, sources: Sequence[bytes | str | Path]) -> torch.Tensor:
        """Decode each image as the data layer does and view it as evaluation does; raises ValueError
        naming a bad source."""
        return torch.stack([self.preprocessing.view(self._decode(s)) for s in sources])

    def _decode(self, source: bytes | str | Path, name: str | None = None) -> np.ndarray:
        """`name` says which image in a message (default: the path, or "upload" for bytes)."""
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise UserError(f"image not found: {name or source}")
        try:
            return self.preprocessing.decode(source)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types (SyntaxError, EOFError, struct.error)
            name = name or ("upload" if isinstance(source, bytes) else str(source))
            raise ValueError(f"{name}: not a readable image ({exc.__class__.__name__})") from None

    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """(N, C) logits; with `tta`, averaged over the TTA views."""
        return tta_backend_logits(self.backend, batch) if self.tta else self.backend(batch)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        if self.tta and self.on_tta_cost is not None:
            report, self.on_tta_cost = self.on_tta_cost, None
            logits, line = self.tta_cost(batch)
            report(line)
            return self.calibrated(logits)
        return self.calibrated(self.logits(batch))

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """float32 probabilities: softmax(logits / temperature), or each class's sigmoid for a multi-label model."""
        return (sigmoid(logits) if self.multilabel else softmax(logits, self.temperature)).astype(np.float32)

    def reject_threshold(self, reject_below: float | None = None, target_accuracy: float | None = None
                         ) -> float | None:
        """The top probability under which to answer "I don't know": `reject_below` as given, or the one the
        validation curve stored with the model picks for `target_accuracy` (evaluation.selective); None for
        neither. A value outside (0, 1), both at once, or a target the model cannot reach is a UserError."""
        if reject_below is not None and target_accuracy is not None:
            raise UserError("give one of --reject-below or --target-accuracy, not both")
        if self.multilabel and (reject_below is not None or target_accuracy is not None):
            raise UserError("a multi-label model answers every class over its own threshold (chosen on validation); "
                            "--reject-below and --target-accuracy are for single-label models")
        if reject_below is not None and not 0 < reject_below < 1:
            raise UserError(f"--reject-below must be a probability between 0 and 1 (exclusive), got {reject_below}")
        if target_accuracy is None:
            return reject_below
        if not 0 < target_accuracy <= 1:
            raise UserError(f"--target-accuracy must be above 0 and at most 1, got {target_accuracy}")
        if not self.selective:
            raise UserError(f"{self.metadata.get('source')} holds no validation curve to choose a threshold from "
                            "(written before imgclf kept one, or not the delivered weights: use best.pt); give "
                            "--reject-below P instead")
        try:
            return threshold_for_accuracy(SelectiveCurve.from_dict(self.selective), target_accuracy)
        except ValueError as exc:
            raise UserError(f"--target-accuracy {target_accuracy:g}: {exc}") from None

    def tta_cost(self, batch: torch.Tensor, what: str = "measured on the first batch") -> tuple[np.ndarray, str]:
        """(the TTA logits of `batch`, a line saying what TTA costs an image against no TTA on it): one
        untimed pass on one image first (lazy initialisation), then each timed once."""
        self.backend(batch[:1])
        start = time.perf_counter()
        self.backend(batch)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        logits = tta_backend_logits(self.backend, batch)
        views = time.perf_counter() - start
        n = len(batch)
        return logits, (f"imgclf: --tta: {TTA_VIEWS} views an image, {views * 1000 / n:.2f} ms an image vs "
                        f"{plain * 1000 / n:.2f} ms without ({what}, {n} image{'s' * (n != 1)})")

    def rank(self, probs: np.ndarray, top_k: int = 5, reject_below: float | None = None) -> list[dict[str, Any]]:
        """Top-k labels of each row; k above the number of classes lists them all. A row whose top probability is
        under `reject_below` (default: `self.reject_below`) answers label None with the reason; its probability
        and top-k still say what the model would have guessed. A multi-label model's rows also carry `labels`:
        every class whose probability reaches its threshold, most probable first (label: the first, or None)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, len(self.classes))
        threshold = self.reject_below if reject_below is None else reject_below
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            top = self._ranked(row, order[:k])
            result: dict[str, Any] = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
            if self.multilabel:  # every class over its threshold, most probable first; label: the first, or None
                labels = self._ranked(row, [i for i in order if row[i] >= self.thresholds[i]])
                result.update(label=labels[0]["label"] if labels else None, labels=labels)
            elif threshold is not None and row[order[0]] < threshold:
                result.update(label=None, reason=f"top probability {row[order[0]]:.3f} < {threshold:.3f}")
            results.append(result)
        return results

    def _ranked(self, row: np.ndarray, index: Iterable[int]) -> list[dict[str, Any]]:
        return [{"label": self.classes[i], "probability": round(float(row[i]), 6)} for i in index]

    def predict(self, sources: Sequence[bytes | str | Path], top_k: int = 5,
                reject_below: float | None = None) -> list[dict[str, Any]]:
        return self.rank(self.probabilities(self.preprocess(sources)), top_k, reject_below)

    def predict_each(self, sources: Iterable[tuple[str, bytes | str | Path]], top_k: int = 5,
                     batch_size: int = 64) -> Iterator[tuple[str, dict[str, Any] | str]]:
        """(name, prediction) for each (name, file or bytes) in order, `batch_size` read and decoded at a time
        (in threads: Pillow and torch release the GIL), so any number of images takes one batch's memory; a
        missing or unreadable one gives (name, error message) instead, costing only its own result."""
        items = iter(sources)
        with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
            while chunk := list(islice(items, batch_size)):
                yield from zip([name for name, _ in chunk], self._rank_chunk(pool, chunk, top_k), strict=True)

    def _rank_chunk(self, pool: ThreadPoolExecutor, chunk: list[tuple[str, bytes | str | Path]],
                    top_k: int) -> list[dict[str, Any] | str]:
        """A prediction or an error message for each item; the decoded pixels are gone when it returns."""
        views = list(pool.map(self._view_or_error, chunk))
        good = [v for v in views if isinstance(v, torch.Tensor)]
        ranked = iter(self.rank(self.probabilities(torch.stack(good)), top_k) if good else [])
        return [view if isinstance(view, str) else next(ranked) for view in views]

    def _view_or_error(self, item: tuple[str, bytes | str | Path]) -> torch.Tensor | str:
        name, source = item
        try:
            return self.preprocessing.view(self._decode(source, name))
        except (ValueError, UserError) as exc:
            return str(exc)


def load_onnx_predictor(path: str | Path, threads: int | None = None) -> Predictor:
    """A Predictor over an exported ONNX file (ONNX Runtime, CPU; see `imgclf.inference.onnx_backend.load_onnx`
    for `threads`)."""
    return Predictor(*load_onnx(path, threads))


def explainer(predictor: Predictor, out_dir: str | Path) -> Explain:
    """For `imgclf predict --explain DIR`: a function (image path, predicted label) -> the path of the
    overlay it wrote in DIR (atomically), explaining that label: NAME.gradcam.png from the image's NAME,
    NAME-2.gradcam.png and so on when another image of the run had the same name. Needs the torch backend."""
    if predictor.model is None:
        raise UserError("--explain needs --checkpoint: an ONNX model has no gradients to explain with")
    folder = Path(out_dir)
    cam = GradCAM(predictor.model, predictor.input_size)
    used: set[str] = set()

    def explain(path: str | Path, label: str) -> str:
        stem = Path(path).stem or "image"
        name, n = f"{stem}.gradcam.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.gradcam.png"
        used.add(name)
        write_bytes(folder / name, overlays_png(cam, predictor.preprocess([path]), [predictor.classes.index(label)])[0])
        return str(folder / name)

    return explain


def predict_command(images: Sequence[str], checkpoint: str | None = None, onnx: str | None = None, top_k: int = 5,
                    device: str = "auto", out: TextIO | None = None, err: TextIO | None = None,
                    explain: str | None = None, csv_out: str | None = None, batch_size: int = 64,
                    quiet: bool = False, tta: bool = False, reject_below: float | None = None,
                    target_accuracy: float | None = None) -> int:
    """`imgclf predict` over image files, folders and archives, streamed a batch at a time.

    Without `csv_out`: one JSON line per readable image on `out`, in order, and one line per bad file on `err`;
    exit code 0, or 2 when any file was bad (the other results are still printed). With `csv_out`: one CSV
    row per image, an unreadable one with its error in the row (exit code 0), written as results come to a
    temp file renamed into place at the end, with progress on `err` and a JSON summary on `out`. A multi-label
    model's answers carry `labels`, every class over its threshold (the CSV: one column of them). Where
    folders name a single-label model's classes, results carry the true label and the summary the accuracy. With
    `explain` (a folder) each JSON line also names the Grad-CAM overlay written there. With `tta` each image's
    logits are averaged over its mirrored and shifted views, and what that costs is printed once on `err`.
    With `reject_below` (or the threshold `target_accuracy` picks on the validation curve, said once on `err`)
    an image under it gets label null and a reason, and the summary says the coverage and the kept accuracy.
    """
    if bool(checkpoint) == bool(onnx):
        raise UserError("give exactly one of --checkpoint or --onnx")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    out, err = out or sys.stdout, err or sys.stderr
    predictor = Predictor.load(checkpoint=checkpoint, onnx=onnx, device=device, tta=tta)
    predictor.reject_below = predictor.reject_threshold(reject_below, target_accuracy)
    if target_accuracy is not None:
        print(f"imgclf: --target-accuracy {target_accuracy:g}: answering only above top probability "
              f"{predictor.reject_below:.4f} (chosen on the validation split; temperature "
              f"{predictor.temperature:.3f})", file=err, flush=True)
    if tta:
        predictor.on_tta_cost = lambda line: print(line, file=err, flush=True)
    listing = list_inputs(images, predictor.classes, err)
    if predictor.multilabel:  # a <class>/<image> folder says one label an image: no truth for several
        listing.labels.clear()
    if explain and any(is_archive(path) for _, path, _ in listing.inputs):
        raise UserError("--explain takes image files and folders, not archives (extract it first)")
    explain_one = explainer(predictor, explain) if explain else None
    tally = Tally(predictor.classes, reject_below=predictor.reject_below)
    progress = Progress(listing.total, err, enabled=bool(csv_out) and not quiet)
    results = predictor.predict_each(listing.sources(), top_k=top_k, batch_size=batch_size)
    if csv_out:
        _write_csv(csv_out, results, listing, tally, progress, min(top_k, len(predictor.classes)),
                   predictor.multilabel)
    else:
        for name, result in results:
            tally.add(name, result, listing.labels.get(name))
            if isinstance(result, str):
                print(f"imgclf: error: {result}", file=err, flush=True)
                continue
            if explain_one is not None:  # the top class (also when the answer is none)
                result["explanation"] = explain_one(name, result["top_k"][0]["label"])
            truth = {"true_label": listing.labels[name]} if name in listing.labels else {}
            print(json.dumps({"file": name, **result, **truth}), file=out, flush=True)
    progress.close()
    summary = tally.summary(time.perf_counter() - progress.started)
    if line := score_line(summary):
        print(line, file=err)
    if not csv_out:
        return 2 if tally.unreadable else 0
    warn_unreadable(tally.unreadable, [])
    print(json.dumps({"out": str(csv_out), **summary}, indent=2), file=out)
    return 0


def _write_csv(path: str, results: Iterable[tuple[str, dict[str, Any] | str]], listing: Listing, tally: Tally,
               progress: Progress, k: int, multilabel: bool = False) -> None:
    """One row a result, as it comes (imgclf.fileio: a temp file renamed over `path` once all are written):
    file, label_1, probability_1, ... label_k, probability_k[, true_label, correct], error; for a multi-label
    model file, labels, probabilities, error, the labels over their thresholds joined by `;` (as a multi-label
    labels CSV writes them) and their probabilities in the same order."""
    labelled = bool(listing.labels)
    header = (["file", "labels", "probabilities"] if multilabel
              else ["file", *[f"{w}_{i}" for i in range(1, k + 1) for w in ("label", "probability")]])
    header += ["true_label", "correct"] if labelled else []
    header += ["reason"] if tally.reject_below is not None else []  # why label_1 was not the answer (rejected)
    with atomic_file(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "error"])
        for name, result in results:
            truth = listing.labels.get(name)
            tally.add(name, result, truth)
            progress.update()
            if isinstance(result, str):
                writer.writerow([name, *[""] * (len(header) - 1), result])
                continue
            if multilabel:
                row = [name, *(LABEL_SEPARATOR.join(str(t[key]) for t in result["labels"])
                               for key in ("label", "probability"))]
            else:
                row = [name, *[v for t in result["top_k"] for v in (t["label"], t["probability"])]]
            if labelled:
                row += [truth or "", "" if truth is None else int(truth == result["top_k"][0]["label"])]
            row += [result.get("reason", "")] if tally.reject_below is not None else []
            writer.writerow([*row, ""])
