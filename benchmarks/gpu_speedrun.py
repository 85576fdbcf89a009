"""CIFAR-10-JPEG speed runs on a GPU: N runs of the `fast` preset and M of the `long` one (imgclf.training.speedrun).

Per preset: mean / min / max test accuracy with TTA (and without), training seconds per run after compilation,
the compile seconds (spent once, on dummy data, before the first timed run), peak GPU memory. Seeds 0..N-1.
Prints one JSON object (also to --out; the file is rewritten after every run, so a timeout keeps what finished).
`--smoke`: a narrow net for one epoch on a small subset on the CPU, uncompiled, in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from _common import add_gpu_args, emit, find_archive, full_train_and_test, machine_info, peak_gpu_memory_mb
from imgclf.defaults import SPEED_PRESETS, SpeedConfig
from imgclf.runtime import resolve_device
from imgclf.training.speedrun import run_speedrun, shrunk


def summarize(name: str, cfg: SpeedConfig, runs: list[dict[str, Any]],
              peak_mb: float | None) -> dict[str, Any]:
    """Accuracy spread and per-run seconds of one preset's runs."""
    tta = [r["tta_accuracy"] for r in runs]
    seconds = [r["train_seconds"] for r in runs]
    return {
        "preset": name, "runs": len(runs),
        "tta_accuracy_mean": round(statistics.fmean(tta), 4), "tta_accuracy_min": round(min(tta), 4),
        "tta_accuracy_max": round(max(tta), 4),
        "accuracy_mean": round(statistics.fmean(r["accuracy"] for r in runs), 4),
        "train_seconds_mean": round(statistics.fmean(seconds), 3), "train_seconds_median": statistics.median(seconds),
        "train_seconds_min": min(seconds), "train_seconds_max": max(seconds),
        "compile_seconds": runs[0]["compile_seconds"], "eval_seconds": runs[-1]["eval_seconds"],
        "epochs": runs[0]["epochs"], "steps": runs[0]["steps"], "precision": runs[0]["precision"],
        "num_params": runs[0]["num_params"], "peak_gpu_memory_mb": peak_mb,
        "per_run": [{k: r[k] for k in ("tta_accuracy", "accuracy", "train_seconds")} for r in runs],
        "config": cfg.to_dict(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of the fast preset")
    parser.add_argument("--long-runs", type=int, default=1, help="runs of the long preset")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile for the fast preset")
    parser.add_argument("--compile-long", action="store_true",
                        help="torch.compile the long preset too (another ~minute of compiling for one run)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    add_gpu_args(parser)
    args = parser.parse_args(argv)
    device = torch.device("cpu") if args.smoke else resolve_device("auto")
    if args.smoke:
        args.runs, args.long_runs = min(args.runs, 2), min(args.long_runs, 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    train, test = full_train_and_test(find_archive(args.archive), smoke=args.smoke)
    result: dict[str, Any] = {"benchmark": "gpu_speedrun", "smoke": args.smoke, **machine_info(device),
                              "num_train": len(train), "num_test": len(test),
                              "data_seconds": round(time.perf_counter() - started, 2), "presets": {}}
    for name, count in (("fast", args.runs), ("long", args.long_runs)):
        compiled = not args.no_compile if name == "fast" else args.compile_long
        cfg = SPEED_PRESETS[name].replace(compile=device.type == "cuda" and compiled, compile_mode=args.compile_mode)
        if args.smoke:
            cfg = shrunk(cfg)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs: list[dict[str, Any]] = []
        for seed in range(count):
            try:
                runs.append(run_speedrun(train, test, cfg.replace(seed=seed), device))
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not cost the whole benchmark
                if not cfg.compile:
                    raise
                result.setdefault("compile_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
                cfg = cfg.replace(compile=False)
                runs.append(run_speedrun(train, test, cfg.replace(seed=seed), device))
            result["presets"][name] = summarize(name, cfg, runs, peak_gpu_memory_mb(device))
            if args.out:
                emit(result, args.out, echo=False)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
