"""The machine a run is on: device, precision, seeding. Importable by every layer (serving included),
so nothing needs the training stack just to pick a device."""

from __future__ import annotations

import random
import time
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


def fastest_thread_count(busy_ratio: float, rounds: int = 8) -> tuple[int, dict[int, float]]:
    """The torch CPU thread count to train with here, now, and each candidate's mean milliseconds on a small
    training-like workload (a conv forward and backward): all cores, unless one thread runs it more than
    `busy_ratio` times faster. That happens only when other work keeps the cores busy: OpenMP's workers wait
    at every op for the one the OS has put aside. On 2 cores of an Intel Xeon (bf16) beside another torch job,
    fastcnn trained at 17-38 img/s with 2 threads and 505-807 with 1; idle, 2 threads win.

    The contention comes and goes (beside one torch job, 4 of 15 measurements found 2 threads faster, the
    rest 25x slower), so the counts are timed in alternation over several rounds and compared by their mean:
    the throughput a run would see, stalls included."""
    cores = torch.get_num_threads()
    if cores <= 1:
        return cores, {}
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.rand(32, 32, 16, 16, requires_grad=True)
    timings: dict[int, list[float]] = {1: [], cores: []}
    try:
        for attempt in range(rounds + 1):
            for threads in timings:
                torch.set_num_threads(threads)
                tick = time.perf_counter()
                conv(x).relu().sum().backward()
                if attempt:  # the first round warms each count up
                    timings[threads].append(time.perf_counter() - tick)
    finally:
        torch.set_num_threads(cores)
    ms = {threads: round(float(np.mean(t)) * 1000, 2) for threads, t in timings.items()}
    return (1 if ms[cores] > busy_ratio * ms[1] else cores), ms
