"""Precision on a GPU: a short speed run (the `fast` preset, uncompiled) in fp32, bf16 and fp16 + GradScaler.

Each precision gets an untimed warm-up run (cuDNN picks its kernels), then a timed run with the training loss
recorded every --log-every steps; speedups are against fp32 (cuDNN's default TF32 convolutions) and against
strict fp32 (TF32 off). Same seed, so the loss curves differ by arithmetic alone. Prints one JSON object
(also to --out, rewritten after each precision). `--smoke`: a tiny net and subset on the CPU, in seconds.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from _common import add_gpu_args, emit, find_archive, full_train_and_test, machine_info, peak_gpu_memory_mb
from imgclf.runtime import resolve_device
from imgclf.training.speedrun import FAST, run_speedrun, shrunk

VARIANTS = {"fp32": ("fp32", True), "fp32_no_tf32": ("fp32", False), "bf16": ("bf16", True), "fp16": ("fp16", True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--log-every", type=int, default=10)
    add_gpu_args(parser)
    args = parser.parse_args(argv)
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = FAST.replace(epochs=args.epochs, log_every=args.log_every)
    if args.smoke:
        cfg = shrunk(cfg).replace(log_every=1, tta_level=0)
    train, test = full_train_and_test(find_archive(args.archive), smoke=args.smoke, smoke_sizes=(300, 100))
    result: dict[str, Any] = {"benchmark": "gpu_precision", "smoke": args.smoke, **machine_info(device),
                              "config": cfg.to_dict(), "variants": {}}
    tf32_default = torch.backends.cudnn.allow_tf32
    for name, (precision, tf32) in VARIANTS.items():
        torch.backends.cudnn.allow_tf32 = tf32
        run_cfg = cfg.replace(precision=precision)
        if device.type == "cuda":
            run_speedrun(train, test, run_cfg.replace(epochs=min(cfg.epochs, 0.5), log_every=0), device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        run = run_speedrun(train, test, run_cfg, device)
        losses = run.pop("losses")
        result["variants"][name] = {**{k: run[k] for k in ("precision", "train_seconds", "tta_accuracy", "accuracy",
                                                            "steps", "images_per_second")},
                                    "tf32_convs": tf32, "final_loss": losses[-1][1], "losses": losses,
                                    "wall_seconds": round(time.perf_counter() - t0, 2),
                                    "peak_gpu_memory_mb": peak_gpu_memory_mb(device)}
        base = result["variants"]["fp32"]["train_seconds"]
        result["variants"][name]["speedup_vs_fp32"] = round(base / run["train_seconds"], 3)
        if args.out:
            emit(result, args.out, echo=False)
    torch.backends.cudnn.allow_tf32 = tf32_default
    strict = result["variants"]["fp32_no_tf32"]["train_seconds"]
    for variant in result["variants"].values():
        variant["speedup_vs_fp32_no_tf32"] = round(strict / variant["train_seconds"], 3)
    emit(result, args.out)


if __name__ == "__main__":
    main()
