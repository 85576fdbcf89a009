"""Reading a checkpoint: the file, its config, and the model it holds. The reading side lives with the
models, not the trainer, so evaluation and serving need no training code (training/checkpoint.py writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imgclf.config import TrainConfig, from_dict
from imgclf.errors import UserError
from imgclf.models.base import ImageClassifier
from imgclf.models.registry import build_model

FORMAT = "imgclf-checkpoint-v2"  # v2: stateful callbacks' state (lr_schedule, ...); the trainer resumes v2 only
READABLE = (FORMAT, "imgclf-checkpoint-v1")  # whose weights, config and classes load (evaluate, predict, serve)


# What training adds once the delivered weights are scored (evaluation.selective.calibrate): "temperature" (the
# logits' divisor before softmax; 1.0 where absent: older checkpoints, weights that were never delivered) and
# "selective" (the validation split's coverage-accuracy curve, from which --target-accuracy picks a threshold);
# for a multi-label model instead (evaluation.multilabel.threshold_calibration) "thresholds", one probability a
# class chosen on validation (0.5 each where absent). The task itself is the config's `task` (`task_of`).
CALIBRATION_KEYS = ("temperature", "selective", "thresholds")


def checkpoint_payload(model_state: dict[str, Any], cfg: TrainConfig, classes: list[str],
                       preprocess: dict[str, Any] | None, calibration: dict[str, Any] | None = None,
                       **training_state: Any) -> dict[str, Any]:
    """The one builder of a checkpoint dict, for every engine: what evaluate, predict, serve and export read
    (format, weights, resolved config, classes, the evaluation view, the calibration where known), plus
    `training_state` when it can be resumed (optimizer, scaler, rng, trainer position, callbacks' state: see
    Trainer.state_dict)."""
    view = {"input_size": preprocess["input_size"], "preprocess": preprocess} if preprocess else {}
    return {"format": FORMAT, "model": model_state, "config": cfg.to_dict(), "classes": classes, **view,
            **calibrated({}, calibration), **training_state}


def calibrated(ckpt: dict[str, Any], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """`ckpt` with the calibration entries (CALIBRATION_KEYS) of `calibration` set; anything else is refused."""
    unknown = set(calibration or {}) - set(CALIBRATION_KEYS)
    if unknown:
        raise ValueError(f"not calibration entries: {sorted(unknown)}")
    return {**ckpt, **(calibration or {})}


def calibration_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The calibration a checkpoint holds: temperature (1.0 when it holds none), the selective curve and the
    multi-label thresholds (None where it holds none)."""
    return {"temperature": float(ckpt.get("temperature", 1.0)), "selective": ckpt.get("selective"),
            "thresholds": ckpt.get("thresholds")}


def task_of(ckpt: dict[str, Any]) -> str:
    """multilabel or multiclass: the task its config recorded (checkpoints from before multi-label: multiclass)."""
    return ckpt["config"].get("task") or "multiclass"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; anything that is not one is a user error, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors and plain containers only, so a file carrying pickled code never runs it
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated, foreign or unsafe file
        raise UserError(f"{path}: not an imgclf checkpoint, or one that holds more than tensors and plain "
                        f"values ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE:
        raise UserError(f"{path}: not an imgclf checkpoint")
    missing = [k for k in ("model", "config", "classes") if k not in ckpt]
    if missing:
        raise UserError(f"{path}: an imgclf checkpoint without {', '.join(missing)}")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> TrainConfig:
    return from_dict(ckpt["config"], source="checkpoint config")


def model_from_checkpoint(ckpt: dict[str, Any]) -> ImageClassifier:
    """Rebuild the network a checkpoint was trained with and load its weights (no pretrained download)."""
    cfg = checkpoint_config(ckpt)
    model = build_model(cfg.model, len(ckpt["classes"]), dropout=cfg.dropout, width=cfg.width)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = (str(exc).strip().splitlines() or ["?"])[-1].strip()[:200]
        raise UserError(f"checkpoint weights do not fit {cfg.model} with {len(ckpt['classes'])} classes: "
                        f"{detail}") from None
    return model.eval()
