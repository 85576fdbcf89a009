"""Checkpoints: the full training state, written atomically (temp file + fsync + rename)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.config import TrainConfig, from_dict
from imgclf.errors import UserError
from imgclf.models import ImageClassifier, build_model

FORMAT = "imgclf-checkpoint-v1"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """A kill at any moment leaves either the previous file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; anything that is not one is a user error, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # Our own files: the config and RNG states need full unpickling, as with torch's own trainers.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{path}: not an imgclf checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an imgclf checkpoint")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> TrainConfig:
    return from_dict(ckpt["config"], source="checkpoint config")


def model_from_checkpoint(ckpt: dict[str, Any]) -> ImageClassifier:
    """Rebuild the network a checkpoint was trained with and load its weights (no pretrained download)."""
    cfg = checkpoint_config(ckpt)
    model = build_model(cfg.model, len(ckpt["classes"]), dropout=cfg.dropout, width=cfg.width)
    model.load_state_dict(ckpt["model"])
    return model.eval()
