"""Checkpoints: the full training state, written atomically (imgclf.fileio)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.fileio import write_with
from imgclf.models.checkpoint import FORMAT, calibrated, load_checkpoint

__all__ = ["FORMAT", "add_calibration", "rng_state", "save_atomic", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain containers, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, python_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": python_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """A kill at any moment leaves either the previous file or the new one, never a torn one."""
    write_with(path, lambda f: torch.save(obj, f))


def add_calibration(paths: list[Path], model_state: dict[str, Any], calibration: dict[str, Any]) -> list[Path]:
    """Rewrite (atomically) each checkpoint in `paths` that holds exactly the weights `model_state` with the
    calibration fitted on them; a checkpoint of other weights (last.pt when an earlier epoch was delivered) is
    left without one, since a temperature fits only the weights it was fitted on. Returns the paths rewritten."""
    weights = {k: v.detach().cpu() for k, v in model_state.items()}
    written = []
    for path in paths:
        if not path.is_file():
            continue
        ckpt = load_checkpoint(path)
        saved = ckpt["model"]
        if saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in weights):
            save_atomic(calibrated(ckpt, calibration), path)
            written.append(path)
    return written
