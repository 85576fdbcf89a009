"""A user's weights file (--weights FILE) -> a state dict, and a strict load with a one-line error.

Shared by every backbone that loads files (EfficientNet-Lite, any `timm:NAME`), so each accepts the same
formats and names a mismatch the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imgclf.errors import UserError

SHOWN_KEYS = 3  # how many keys of each kind a mismatch message names


def _unwrap_user_state(obj: object) -> dict[str, torch.Tensor]:
    """A state dict from what users save: a bare dict, an imgclf checkpoint, or {'state_dict': ...}."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("no state dict of tensors in it")
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or a torch file (`.pth`, `.pt`, read with weights_only=True).

    A DDP `module.` prefix on every key is dropped. Any unreadable file is a UserError naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"cannot read weights file {p}: {exc.__class__.__name__}") from None
    try:
        state = _unwrap_user_state(obj)
    except UserError as exc:
        raise UserError(f"weights file {p}: {exc}") from None
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _first(keys: list[str]) -> str:
    more = len(keys) - SHOWN_KEYS
    return ", ".join(keys[:SHOWN_KEYS]) + (f" (+{more} more)" if more > 0 else "")


def load_strict(net: nn.Module, tensors: dict[str, torch.Tensor], origin: str, what: str) -> None:
    """Load every tensor of `net` from `tensors`; anything missing, unexpected or of another shape is a
    one-line UserError naming the first few such keys.

    BatchNorm batch counters the source lacks keep the network's own values (they carry no learned state).
    """
    own = net.state_dict()
    state = {k: v for k, v in own.items() if k.endswith("num_batches_tracked")}
    state.update(tensors)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    problems = [f"{label} {_first(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
    if problems:
        raise UserError(f"{origin} does not match {what}: {'; '.join(problems)}")
    net.load_state_dict(state, strict=True)
