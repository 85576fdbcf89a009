"""Predictor: image bytes or files -> top-k labels, with exactly the training preprocessing."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from imgclf.data.photos import Preprocess
from imgclf.errors import UserError
from imgclf.mathutil import softmax
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.runtime import resolve_device

Backend = Callable[[torch.Tensor], np.ndarray]  # float (N, 3, S, S) in [0, 1] -> logits (N, C)


class Predictor:
    """Decodes and views each image exactly as evaluation did (`Preprocess`), runs a backend, ranks."""

    def __init__(self, backend: Backend, classes: list[str], preprocess: Preprocess, metadata: dict[str, Any]) -> None:
        self.backend, self.classes, self.preprocessing, self.metadata = backend, classes, preprocess, metadata

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @classmethod
    def load(cls, checkpoint: str | None = None, onnx: str | None = None, device: str = "auto") -> Predictor:
        """A torch checkpoint (on `device`) or an exported ONNX file (ONNX Runtime, CPU)."""
        if onnx:
            from imgclf.inference.onnx_backend import load_onnx_predictor

            return load_onnx_predictor(onnx)
        if not checkpoint:
            raise UserError("give a checkpoint or an ONNX file")
        ckpt = load_checkpoint(checkpoint)
        dev = resolve_device(device)
        # channels_last: oneDNN's and cuDNN's preferred layout (about 1.3x on CPU here), same fp32 results.
        model = model_from_checkpoint(ckpt).to(dev, memory_format=torch.channels_last)

        @torch.inference_mode()
        def run(x: torch.Tensor) -> np.ndarray:
            return model(x.to(dev, memory_format=torch.channels_last)).float().cpu().numpy()

        from imgclf.inference.export import sha256_file

        metadata = {"model": ckpt["config"]["model"], "source": str(checkpoint), "backend": "torch",
                    "checkpoint_sha256": sha256_file(checkpoint)}
        return cls(run, list(ckpt["classes"]), Preprocess.from_checkpoint(ckpt), metadata)

    def preprocess(self, sources: Sequence[bytes | str | Path]) -> torch.Tensor:
        """Decode each image as the data layer does and view it as evaluation does; raises ValueError
        naming a bad source."""
        return torch.stack([self.preprocessing.view(self._decode(s)) for s in sources])

    def _decode(self, source: bytes | str | Path) -> np.ndarray:
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise UserError(f"image not found: {source}")
        try:
            return self.preprocessing.decode(source)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types (SyntaxError, EOFError, struct.error)
            name = "upload" if isinstance(source, bytes) else str(source)
            raise ValueError(f"{name}: not a readable image ({exc.__class__.__name__})") from None

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        return softmax(self.backend(batch)).astype(np.float32)

    def rank(self, probs: np.ndarray, top_k: int = 5) -> list[dict[str, Any]]:
        """Top-k labels of each row; k above the number of classes lists them all."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, len(self.classes))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            top = [{"label": self.classes[i], "probability": round(float(row[i]), 6)} for i in order]
            results.append({"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top})
        return results

    def predict(self, sources: Sequence[bytes | str | Path], top_k: int = 5) -> list[dict[str, Any]]:
        return self.rank(self.probabilities(self.preprocess(sources)), top_k)

    def predict_each(self, paths: Sequence[str | Path], top_k: int = 5,
                     batch_size: int = 64) -> Iterator[tuple[str | Path, dict[str, Any] | str]]:
        """(path, prediction) in the order of `paths`, batched; a missing or unreadable file gives
        (path, error message) instead, so one bad file among many costs only its own result."""
        for i in range(0, len(paths), batch_size):
            chunk = list(paths[i:i + batch_size])
            views: list[torch.Tensor] = []
            errors: dict[int, str] = {}
            for j, path in enumerate(chunk):
                try:
                    views.append(self.preprocess([path])[0])
                except (ValueError, UserError) as exc:
                    errors[j] = str(exc)
            ranked = iter(self.rank(self.probabilities(torch.stack(views)), top_k) if views else [])
            for j, path in enumerate(chunk):
                yield path, errors.get(j) or next(ranked)


def predict_command(images: Sequence[str], checkpoint: str | None = None, onnx: str | None = None, top_k: int = 5,
                    device: str = "auto", out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`imgclf predict`: one JSON line per readable image on `out`, in order, and one line per bad file on
    `err`; exit code 0, or 2 when any file was bad (the other results are still printed)."""
    if bool(checkpoint) == bool(onnx):
        raise UserError("give exactly one of --checkpoint or --onnx")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    out, err = out or sys.stdout, err or sys.stderr
    predictor = Predictor.load(checkpoint=checkpoint, onnx=onnx, device=device)
    bad = False
    for path, result in predictor.predict_each(images, top_k=top_k):
        if isinstance(result, str):
            bad = True
            print(f"imgclf: error: {result}", file=err, flush=True)
        else:
            print(json.dumps({"file": str(path), **result}), file=out, flush=True)
    return 2 if bad else 0

