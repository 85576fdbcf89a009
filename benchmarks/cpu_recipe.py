"""CIFAR-10 from scratch in a CPU time budget: today's defaults beside the previous ones, same budget, same run.

previous: batches of 256 at LR 0.1, every step at 32 px (the defaults until this benchmark was written).
default: what `imgclf train --time-budget S --device cpu --tta` now resolves to on a CPU (config.resolve):
batches of 128 at LR 0.2, the first half of the budget at 24 px (--low-res 0.5).
Both train fastcnn at width 1 (no rate probe, so both run the same net) with `--seeds` seeds and report the
median test accuracy with TTA and without, and the ratio of the medians. `--smoke` runs the same on a small
made-up folder with the tiny net in seconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import add_budget_args, emit, find_archive, made_up_folder, median
from imgclf.config import TrainConfig
from imgclf.doctor import cpu_info
from imgclf.training.run import train

VARIANTS = {"previous": {"batch_size": 256, "lr": 0.1, "low_res": 0.0}, "default": {}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_args(parser, budget=150.0)
    parser.add_argument("--smoke", action="store_true", help="a made-up folder and the tiny net: checks it works")
    args = parser.parse_args(argv)
    budget, seeds = (min(args.budget, 1.0), min(args.seeds, 2)) if args.smoke else (args.budget, args.seeds)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="imgclf-cpu-recipe-") as tmp:
        data = str(made_up_folder(Path(tmp) / "data", photos=False)) if args.smoke else str(find_archive(args.archive))
        for seed in range(seeds):
            for name, changes in VARIANTS.items():  # interleaved: a machine that slows down hurts both alike
                cfg = TrainConfig(data=data, model="tiny" if args.smoke else "fastcnn", width=1.0, device="cpu",
                                  time_budget=budget, tta=True, seed=seed, quiet=True, out=f"{tmp}/{name}-{seed}")
                m = train(cfg.replace(**changes)).metrics
                runs[name].append({"test_accuracy": m["test_accuracy"], "without_tta": m["test_accuracy_without_tta"],
                                   "epochs": m["epochs_run"], "images_per_second": m["images_per_second"]})
                print(f"{name} seed {seed}: {runs[name][-1]}", file=sys.stderr, flush=True)
    medians = {name: {key: round(median([r[key] for r in rs]), 4) for key in rs[0]} for name, rs in runs.items()}
    cpu = cpu_info()
    result = {
        "benchmark": "cpu_recipe", "smoke": args.smoke, "budget_seconds": budget, "seeds": seeds,
        "data": "made-up 16 px squares" if args.smoke else "CIFAR-10-JPEG (45,000 train, 10,000 test)",
        "machine": {"cpu": cpu["model"], "cores": cpu["cores"], "avx512_bf16": cpu["flags"].get("avx512_bf16")},
        "variants": {name: {"settings": VARIANTS[name] or "config.resolve", "median": medians[name],
                            "runs": runs[name]} for name in VARIANTS},
        "ratio_default_to_previous": round(medians["default"]["test_accuracy"]
                                           / max(medians["previous"]["test_accuracy"], 1e-9), 4),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
