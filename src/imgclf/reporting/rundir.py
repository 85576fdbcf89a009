"""Reading a run directory for a report: what is there, what is not (named, not fatal), and the images
behind saved predictions.

A run directory may be partial (a NumPy-network run has no checkpoints or LR schedule, an interrupted
run no predictions); every absent or unreadable part is listed in `RunArtifacts.missing` with what the
report loses without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import UserError
from imgclf.evaluation.diagnosis import read_history
from imgclf.yamlio import read_mapping


@dataclass
class RunArtifacts:
    """What a run directory holds; absent parts are None (or empty) and named in `missing`."""

    run_dir: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    classes: list[str] | None
    lr_steps: tuple[np.ndarray, np.ndarray] | None
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    missing: list[str]


def _read_json(path: Path, missing: list[str], why: str) -> Any:
    if not path.is_file():
        missing.append(f"`{path.name}` ({why})")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        missing.append(f"`{path.name}` is unreadable ({why})")
        return None


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, labels): class indices, or for a multi-label run float multi-hot rows of the logits' shape."""
    try:
        with np.load(path) as data:
            logits, labels = np.asarray(data["logits"], dtype=np.float32), np.asarray(data["labels"])
    except (OSError, KeyError, ValueError):
        return None
    if labels.ndim == 2:  # multi-label
        fits = logits.shape == labels.shape and len(labels) > 0 and ((labels >= 0) & (labels <= 1)).all()
        return (logits, labels.astype(np.float32)) if fits else None
    labels = labels.astype(np.int64)
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or len(labels) == 0:
        return None
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        return None
    return logits, labels


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read everything the report can use; refuse only a folder that is not a run at all."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run directory not found: {root}")
    if not (root / "history.csv").is_file() and not (root / "metrics.json").is_file():
        raise UserError(f"{root} is not a run directory (no history.csv or metrics.json)")
    missing: list[str] = []
    config: dict[str, Any] = {}
    if (root / "config.yaml").is_file():
        try:
            config = read_mapping(root / "config.yaml")
        except UserError:
            missing.append("`config.yaml` is unreadable (advice stays generic)")
    else:
        missing.append("`config.yaml` (advice stays generic)")
    history: list[dict[str, Any]] = []
    if (root / "history.csv").is_file():
        history = read_history(root / "history.csv")
    else:
        missing.append("`history.csv` (no learning curves and no diagnosis)")
    metrics = _read_json(root / "metrics.json", missing, "no summary numbers") or {}
    classes = _read_json(root / "classes.json", missing, "classes are shown by number")
    lr_steps = None
    lr_path = root / "lr_schedule.csv"
    if lr_path.is_file():
        try:
            table = np.loadtxt(lr_path, delimiter=",", skiprows=1, ndmin=2)
            if table.size:
                lr_steps = (table[:, 0], table[:, 1])
        except ValueError:
            pass
    if lr_steps is None:
        missing.append("`lr_schedule.csv` (the schedule is shown per epoch from history.csv)"
                       if history and "lr" in history[0] else "`lr_schedule.csv` (no learning-rate plot)")
    predictions = {}
    for split in ("test", "val"):
        path = root / f"predictions_{split}.npz"
        if path.is_file():
            got = _read_predictions(path)
            if got is None:
                missing.append(f"`{path.name}` is unreadable or inconsistent")
            else:
                predictions[split] = got
    if not predictions:
        missing.append("`predictions_test.npz` / `predictions_val.npz` (no confusion matrix, per-class scores, "
                       "top losses or calibration)")
    elif "test" not in predictions:
        missing.append("`predictions_test.npz` (errors and calibration are shown on the validation split)")
    if (root / "model.npz").is_file():
        pass  # a NumPy-network run: its weights live in model.npz, and torch checkpoints do not apply
    elif not (root / "checkpoints" / "last.pt").is_file():
        missing.append("`checkpoints/last.pt` (this run cannot be resumed, evaluated, exported or explained with "
                       "Grad-CAM)")
    if classes is not None and not isinstance(classes, list):
        classes = None
    return RunArtifacts(root, config, history, metrics, classes, lr_steps, predictions, missing)


def split_images(config: dict[str, Any], split: str, labels: np.ndarray,
                 index: np.ndarray) -> tuple[list[np.ndarray] | None, str | None]:
    """The images at `index` of the run's `split`, re-read through the decode cache; or (None, why not).

    The saved labels must match the split exactly, so a changed dataset can never put wrong images
    beside the predictions.
    """
    from imgclf.config import FIELD_NAMES, from_dict, load_data
    from imgclf.data.decode import decode_image
    from imgclf.data.imageset import FileSet
    from imgclf.data.photos import working_side
    from imgclf.models import model_entry

    values = {k: v for k, v in config.items() if k in FIELD_NAMES}
    if "data" not in values:
        return None, "config.yaml does not name the data, so the images cannot be shown"
    try:
        cfg = from_dict(values).replace(subset=None, train_fraction=1.0)
        try:
            model_entry(cfg.model)
        except UserError:
            cfg = cfg.replace(model="tiny", pretrained=False, weights=None)
        splits = load_data(cfg)
    except UserError as exc:
        return None, f"the images could not be re-read ({exc})"
    except Exception as exc:  # noqa: BLE001 - the report must not die on a moved or broken dataset
        return None, f"the images could not be re-read ({exc.__class__.__name__}: {exc})"
    part = getattr(splits, split, None)
    if part is None:
        return None, f"the data has no {split} split any more"
    if len(part) != len(labels) or not np.array_equal(np.asarray(part.labels), labels):
        return None, f"the {split} split of {cfg.data} no longer matches the saved predictions"
    if isinstance(part, FileSet):
        try:
            return [decode_image(part.paths[i], working_side(part.image_size)) for i in index], None
        except Exception as exc:  # noqa: BLE001 - a file truncated since training must not kill the report
            return None, f"an image could not be re-read ({exc.__class__.__name__})"
    return [part.images[i] for i in index], None

