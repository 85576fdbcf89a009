"""Training throughput of the NumPy MLP (imgclf.numpy_nn) against the same MLP in PyTorch on the CPU.

Same layer sizes (CIFAR-sized input, 3072 features), same weights, same optimizer, same batch, synthetic
data; full training steps (forward, loss, backward, optimizer step). Runs alternate between the two so
both see the same machine load; each side reports the median of its runs. Thread counts are left at each
library's defaults (nothing is set), and reported. Prints one JSON object; ratio = numpy / torch.

    python benchmarks/numpy_mlp_throughput.py [--runs 5] [--steps 20] [--batch-size 128] [--smoke]

`--smoke`: 2 runs of 3 steps at batch 32, 1 warm-up step: checks it works, in a second or two.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from _common import emit
from imgclf import numpy_nn as nn


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: pool.get(k) for k in ("internal_api", "num_threads", "version")} for pool in threadpool_info()
            if pool.get("user_api") == "blas"]


def numpy_setup(sizes: list[int], optimizer: str, lr: float, seed: int) -> tuple[nn.Sequential, nn.Optimizer]:
    model = nn.build_mlp(sizes[0], sizes[1:-1], sizes[-1], seed=seed)
    model.train()
    opt = nn.Adam(model.parameters(), lr=lr) if optimizer == "adam" else nn.SGD(
        model.parameters(), lr=lr, momentum=0.9)
    return model, opt


def torch_setup(model: nn.Sequential, optimizer: str, lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same network, starting from the NumPy model's weights."""
    modules: list[torch.nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.Linear):
            lin = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(layer.weight.value))
                lin.bias.copy_(torch.from_numpy(layer.bias.value))
            modules.append(lin)
        elif isinstance(layer, nn.ReLU):
            modules.append(torch.nn.ReLU())
        else:
            raise TypeError(f"no torch twin for {layer!r}")
    net = torch.nn.Sequential(*modules).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr) if optimizer == "adam" else torch.optim.SGD(
        net.parameters(), lr=lr, momentum=0.9)
    return net, opt


def time_numpy(model: nn.Sequential, opt: nn.Optimizer, x: np.ndarray, y: np.ndarray, batch: int,
               steps: int) -> float:
    loss = nn.SoftmaxCrossEntropy()
    starts = np.arange(steps) * batch % (len(x) - batch + 1)
    t0 = time.perf_counter()
    for s in starts:
        xb, yb = x[s:s + batch], y[s:s + batch]
        loss.forward(model.forward(xb), yb)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def time_torch(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, batch: int,
               steps: int) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    starts = np.arange(steps) * batch % (len(x) - batch + 1)
    t0 = time.perf_counter()
    for s in starts:
        xb, yb = x[s:s + batch], y[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the runs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--optimizer", choices=["adam", "momentum"], default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=40.0, help="stop adding runs after this (min 3)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--smoke", action="store_true", help="a few tiny runs: checks it works")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.steps, args.warmup = min(args.runs, 2), min(args.steps, 3), min(args.warmup, 1)
        args.batch_size = min(args.batch_size, 32)

    sizes = [3072, *args.hidden, 10]
    rng = np.random.default_rng(0)
    pool = max(8 * args.batch_size, 1024)
    x = rng.standard_normal((pool, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], pool)
    tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    model, opt = numpy_setup(sizes, args.optimizer, args.lr, seed=0)
    net, topt = torch_setup(model, args.optimizer, args.lr)
    time_numpy(model, opt, x, y, args.batch_size, args.warmup)
    time_torch(net, topt, tx, ty, args.batch_size, args.warmup)

    numpy_runs: list[float] = []
    torch_runs: list[float] = []
    start = time.perf_counter()
    for i in range(args.runs):
        if i >= 3 and time.perf_counter() - start > args.max_seconds:
            break
        numpy_runs.append(time_numpy(model, opt, x, y, args.batch_size, args.steps))
        torch_runs.append(time_torch(net, topt, tx, ty, args.batch_size, args.steps))

    np_median, torch_median = statistics.median(numpy_runs), statistics.median(torch_runs)
    result = {
        "benchmark": "numpy_mlp_throughput",
        "smoke": args.smoke,
        "what": "full training steps (forward, cross-entropy, backward, optimizer step), float32, CPU",
        "layers": sizes,
        "activation": "relu",
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "steps_per_run": args.steps,
        "runs": len(numpy_runs),
        "numpy_images_per_second": round(np_median, 1),
        "torch_images_per_second": round(torch_median, 1),
        "ratio": round(np_median / torch_median, 3),
        "ratio_is": "numpy / torch (median images per second)",
        "numpy_runs": [round(v, 1) for v in numpy_runs],
        "torch_runs": [round(v, 1) for v in torch_runs],
        "numpy_version": np.__version__,
        "numpy_blas": blas_info(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
