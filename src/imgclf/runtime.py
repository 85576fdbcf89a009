"""The machine a run is on: device, precision, seeding. Importable by every layer (serving included),
so nothing needs the training stack just to pick a device."""

from __future__ import annotations

import random
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when there is a GPU, else cpu; asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a config that went through `imgclf.config.resolve` (which decides whether amp is
    on), or None for fp32. On a CPU it is always bf16 (fp16 autocast there is slow and needs no scaler)."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision where asked for (bf16 or fp16), a no-op otherwise."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: torch.nn.Module,
               x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """One forward, backward and optimizer step with no scaler, clipping or callbacks: what the probes run
    (the LR range test, the rate timing that sizes a CPU run); the Trainer's own step does more. The loss."""
    with autocast(x.device, amp_dtype):
        loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss
