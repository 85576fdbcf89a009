"""The Python API: `train`, `compare` and `load`, the CLI's work as function calls that return objects.

Every function here is a thin layer over the code the CLI runs (training.run.train, experiments.compare,
inference.predictor.Predictor, commands.evaluate, inference.export), so a notebook and `imgclf train` cannot
drift apart: the same checks, the same preprocessing, the same files on disk.

Torch, ONNX Runtime and the data layer are imported inside the functions, not here: `import imgclf` stays a
few milliseconds (a web app or a CLI wrapper that imports it for `UserError` alone pays nothing for torch).
"""

from __future__ import annotations

from imgclf.errors import UserError

# typing, pathlib and dataclasses each cost more than the whole of `import imgclf` did before this module
# (about 1 ms): annotations only, read by type checkers (which take a TYPE_CHECKING constant as True).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

    from imgclf.config import TrainConfig
    from imgclf.inference.predictor import Predictor

__all__ = ["Classifier", "Run", "compare", "load", "train"]


def _config(source: str, values: dict[str, Any], options: dict[str, Any]) -> TrainConfig:
    """A TrainConfig built exactly as the CLI's --set values are (config.from_dict): an unknown key, a value of
    the wrong type or one outside config.LIMITS is a UserError naming it, before any data is read. The named
    arguments left at None are dropped, so the config's own defaults apply; `options` are kept as given (None
    means something for some keys: checkpoint_every=None turns mid-epoch checkpoints off)."""
    from imgclf.config import from_dict

    return from_dict({**{k: v for k, v in values.items() if v is not None}, **options}, source=source)


class Run:
    """One finished training run: its directory (absolute; config.yaml, metrics.json, checkpoints/), its metrics and
    the config as resolved (what config.yaml records, defaults filled in). A plain class, not a dataclass:
    importing dataclasses would multiply the time `import imgclf` takes."""

    def __init__(self, run_dir: Path, metrics: dict[str, Any], config: TrainConfig) -> None:
        self.run_dir, self.metrics, self.config = run_dir, metrics, config

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, test_accuracy={self.metrics.get('test_accuracy')})"

    def classifier(self, device: str = "auto") -> Classifier:
        """The run's delivered weights (checkpoints/best.pt) as a Classifier."""
        return load(self.run_dir, device=device)


def train(data: str, model: str | None = None, time_budget: float | None = None,
          epochs: int | None = None, out: str | Path | None = None, **options: Any) -> Run:
    """Train a classifier, as `imgclf train` does, and return the finished `Run`.

    `data` is a dataset name (digits, cifar10, flowers-mini, ...) or an image folder; `model` a registered
    model name (None: the default); `time_budget` seconds of training; `epochs` (None: 10, or as many as fit
    the budget); `out` the run directory to write (None: runs/DATA-MODEL-TIME; one that holds a run is
    refused). Any other `TrainConfig` key is accepted as a keyword (lr=0.05, subset=500, device="cpu", ...)
    and checked exactly as a `--set KEY=VALUE` is, so a typo or an out-of-range value raises
    `imgclf.UserError` with a one-line message instead of training.

    `quiet` defaults to True here, unlike the CLI: a library's caller owns the terminal, the notebook cell
    or the server log it runs in, and progress bars written to its stderr would clutter them; everything the
    progress said is in the returned `Run` (metrics) and in the run directory. Pass quiet=False to see it.
    """
    from pathlib import Path

    from imgclf.training.run import train as run_train

    cfg = _config("train", {"data": data, "model": model, "time_budget": time_budget, "epochs": epochs,
                            "out": None if out is None else str(out), "quiet": True}, options)
    result = run_train(cfg)
    return Run(Path(result.run_dir).absolute(), dict(result.metrics), result.config)  # absolute: cwd may change


def compare(data: str, out: str | Path, budget: float | None = None,
            seeds: int | None = None, preset: str | None = "transfer", variants: str | Path | None = None,
            fractions: str | Sequence[float] | None = None, **options: Any) -> dict[str, Any]:
    """Train several variants of one setup and compare them, as `imgclf compare` does; returns the
    comparison (what OUT/comparison.json holds) and writes OUT/report.md and report.html beside it.

    `preset` names the variants (transfer, regularization) unless `variants` gives a YAML file of your own;
    `budget` is each run's time budget in seconds; `seeds` trains each variant that many times (None: the
    comparison decides from the budget and the data's size); `fractions` trains at shares of the training
    set too. Other keywords are TrainConfig keys for every run, checked as in `train` (a UserError when
    wrong). Quiet by default, for the reason `train` gives.
    """
    from imgclf.experiments.compare import run_compare

    base = _config("compare", {"data": data, "quiet": True}, options)
    return run_compare(base, out=out, preset=preset, variants_file=variants, fractions=fractions, budget=budget,
                       seeds=seeds)


class Classifier:
    """A trained classifier, from a torch checkpoint or an exported ONNX file: predict, evaluate, export.

    Built by `imgclf.load` or `Run.classifier()`. Predictions go through the same `Predictor` the CLI and the
    server use, so an image is decoded, resized and normalised exactly as at evaluation time.
    """

    def __init__(self, predictor: Predictor, checkpoint: Path | None, onnx: Path | None, device: str) -> None:
        self.predictor, self.checkpoint, self.onnx, self.device = predictor, checkpoint, onnx, device

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.predictor.classes)

    def __repr__(self) -> str:
        return f"Classifier({self.onnx or self.checkpoint}, {len(self.classes)} classes)"

    @property
    def temperature(self) -> float:
        """The temperature fitted on the validation logits at the end of training (1.0 where none was): the
        probabilities are softmax(logits / temperature)."""
        return self.predictor.temperature

    def predict(self, images: Any, top_k: int = 5, reject_below: float | None = None,
                target_accuracy: float | None = None) -> list[dict[str, Any]]:
        """Rank the classes for each image: a list of {"label", "probability", "top_k": [{"label",
        "probability"}, ...]}, one per image and in order, even for a single image.

        A multi-label model (trained on a labels CSV with several labels a row) adds "labels": every class whose
        probability reaches its threshold (chosen on validation), most probable first; "label" is the first.

        "I don't know": with `reject_below` P (0 < P < 1), an image whose top probability is under P gets
        label None and a "reason"; `target_accuracy` A instead picks P on the validation curve the model keeps,
        so that the validation images answered were right A of the time. A bad value is a UserError.

        `images` is one image or a list of them, each a file path, a PIL image or a numpy uint8 array
        (H, W, 3). In-memory images are handed over as lossless PNG bytes, the form the Predictor already
        decodes, so they take the very path a file does (the same resize to the model's input) and a photo
        gives the same answer whether it is passed as a file, a PIL image or its pixels.
        """
        threshold = self.predictor.reject_threshold(reject_below, target_accuracy)
        items = [images] if _is_single(images) else list(images)
        if not items:
            return []
        try:
            return self.predictor.predict([_as_source(item) for item in items], top_k=top_k, reject_below=threshold)
        except ValueError as exc:  # an unreadable image, or top_k below 1: the caller's to fix
            raise UserError(str(exc)) from None

    def evaluate(self, data: str | None = None, split: str = "test", tta: bool = False) -> dict[str, Any]:
        """Score on a labelled split (accuracy, loss, macro-F1, per-class numbers, confusion matrix), as
        `imgclf evaluate` does. `data` None: the data the model was trained on, whose test split it never
        saw (same seed, same carve-out). Needs the checkpoint: an ONNX file has no training config to
        rebuild the split from."""
        if self.checkpoint is None:
            raise UserError("evaluate needs a checkpoint (.pt or a run directory), not an ONNX file")
        from imgclf.commands.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(self.checkpoint, data=data, split=split, tta=tta, device=self.device)

    def export_onnx(self, path: str | Path) -> Path:
        """Write the model as one ONNX file at `path` and return it; nothing is written unless ONNX Runtime
        reproduces the torch outputs (inference.export), so `imgclf.load(path)` predicts as this does."""
        if self.checkpoint is None:
            raise UserError(f"{self.onnx} is already an ONNX file; export needs a checkpoint")
        from pathlib import Path

        from imgclf.inference.export import export_onnx

        return Path(export_onnx(self.checkpoint, path)["onnx"])


def load(path: str | Path, device: str = "auto") -> Classifier:
    """A Classifier from a run directory (its checkpoints/best.pt, else last.pt), a .pt checkpoint or an
    exported .onnx file (run by ONNX Runtime on the CPU; `device` applies to checkpoints). A missing or
    unreadable path is a UserError."""
    from pathlib import Path

    from imgclf.inference.predictor import Predictor

    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt") if p.is_file()]
        if not found:
            raise UserError(f"{path}: not a run directory (no checkpoints/best.pt or last.pt)")
        path = found[0]
    elif not path.is_file():
        raise UserError(f"not found: {path} (give a run directory, a .pt checkpoint or an .onnx file)")
    path = path.absolute()  # the Classifier outlives the caller's working directory
    if path.suffix.lower() == ".onnx":
        return Classifier(Predictor.load(onnx=str(path)), None, path, device)
    return Classifier(Predictor.load(checkpoint=str(path), device=device), path, None, device)


def _is_single(images: Any) -> bool:
    if isinstance(images, str | bytes) or hasattr(images, "__fspath__"):  # a str, bytes or a path
        return True
    shape = getattr(images, "shape", None)  # a numpy array: (H, W, 3) is one image, (N, H, W, 3) several
    if shape is not None:
        return len(shape) != 4
    return hasattr(images, "save") and hasattr(images, "mode")  # a PIL image


def _as_source(item: Any) -> str | Path | bytes:
    """What Predictor.predict takes: a path as is, a PIL image or a numpy array as PNG bytes (lossless)."""
    if isinstance(item, str | bytes) or hasattr(item, "__fspath__"):
        return item
    import io

    from PIL import Image

    if hasattr(item, "shape"):
        import numpy as np

        array = np.asarray(item)
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise UserError(f"a numpy image must be uint8 (H, W, 3), got {array.dtype} {tuple(array.shape)}")
        item = Image.fromarray(array)
    if not isinstance(item, Image.Image):
        raise UserError(f"not an image: {type(item).__name__} (give a path, a PIL image or a uint8 array)")
    if item.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        item = item.convert("RGB")
    buffer = io.BytesIO()
    item.save(buffer, format="PNG")
    return buffer.getvalue()
