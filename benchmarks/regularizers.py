"""Mixup, CutMix and the weight EMA against the plain recipe, within one time budget per run, on real data.

Prints one JSON object. Two parts, each run with every variant and several seeds (the seed moves the val split,
the initial weights and every random draw); test accuracy of what each run kept (with --ema, the better on
val of the raw and the averaged weights; metrics.json "weights" says which):
- `cifar`: 10,000 CIFAR-10-JPEG training images (seeded, class-balanced), from-scratch default model, no TTA,
  tested on the 10,000 test images. The net's width is the one the first baseline run sized for this machine,
  held for every run, so the variants differ only in the regularizer;
- `flowers`: flowers5.tar.xz, EfficientNet-Lite2 fine-tuned from ImageNet weights (`--recipe finetune`, staged:
  the head phase trains on cached features unmixed, the fine-tuned top groups see the mixed batches).

Usage: python benchmarks/regularizers.py [--budget 60] [--seeds 3] [--parts cifar,flowers] [--out FILE] [--smoke]
--smoke: made-up images (small squares and non-square photos, a tiny net, 2 epochs a run) to check the script
works.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CIFAR_ARCHIVE, emit, made_up_folder, require_archive
from photo_finetune import FLOWERS, cpu_model

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "ema": {"ema": 0.999},
    "mixup_ema": {"mixup": 0.2, "ema": 0.999},
}
CIFAR_TRAIN_IMAGES = 10_000


def summary(accuracies: list[float], baseline_mean: float | None) -> dict[str, Any]:
    mean = statistics.fmean(accuracies)
    return {"test_accuracy": [round(a, 4) for a in accuracies], "mean": round(mean, 4),
            "std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else None,
            "min": round(min(accuracies), 4), "max": round(max(accuracies), 4),
            "ratio_to_baseline": round(mean / baseline_mean, 4) if baseline_mean else None}


def run_part(name: str, base: dict[str, Any], seeds: list[int], work: Path, report: dict[str, Any],
             out: str | None) -> None:
    """Every variant with every seed; the data decoded once a seed; report[name] updated as runs finish."""
    from imgclf.config import TrainConfig, load_data
    from imgclf.training.run import train

    part: dict[str, Any] = {"settings": {k: v for k, v in base.items() if k != "data"}, "variants": {}}
    report[name] = part
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        cfg = TrainConfig(**base, seed=seed)
        splits = load_data(cfg)
        for variant, changes in VARIANTS.items():
            result = train(cfg.replace(**changes, out=str(work / f"{name}-{variant}-{seed}")), splits=splits)
            if cfg.width is None and not cfg.pretrained:  # from scratch: sized once for this machine, then held
                base["width"] = part["settings"]["width"] = result.config.width
                cfg = cfg.replace(width=base["width"])
            m = result.metrics
            runs[variant].append({"seed": seed, "test_accuracy": m["test_accuracy"], "weights": m["weights"],
                                  "epochs_run": m["epochs_run"], "steps": m["steps"],
                                  "train_seconds": m["train_seconds"]})
            baseline = [r["test_accuracy"] for r in runs["baseline"]]
            for v, rows in runs.items():
                if rows:
                    part["variants"][v] = {**summary([r["test_accuracy"] for r in rows],
                                                     statistics.fmean(baseline) if baseline else None),
                                           "settings": VARIANTS[v], "runs": rows}
            emit(report, out, echo=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parts", default="cifar,flowers")
    parser.add_argument("--out", help="also write the JSON object here (rewritten after every run)")
    parser.add_argument("--smoke", action="store_true", help="made-up data, a tiny net, seconds")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgclf-regularizers-"))
    common = {"device": "cpu", "quiet": True, "tta": False, "time_budget": args.budget}
    parts: dict[str, dict[str, Any]] = {
        "cifar": {**common, "data": str(CIFAR_ARCHIVE), "subset": CIFAR_TRAIN_IMAGES},
        "flowers": {**common, "data": str(FLOWERS), "model": "efficientnet_lite2", "pretrained": True},
    }
    if args.smoke:
        tiny = {"model": "tiny", "time_budget": None, "epochs": 2, "width": 1.0}  # epochs: a busy CPU stays fast
        parts = {"cifar": {**common, **tiny, "data": str(made_up_folder(work / "squares", photos=False))},
                 "flowers": {**common, **tiny, "image_size": 16,
                             "data": str(made_up_folder(work / "photos", photos=True))}}
    else:
        require_archive()
    report: dict[str, Any] = {"benchmark": "regularizers", "cpu": cpu_model(), "smoke": args.smoke,
                              "budget_seconds": args.budget, "seeds": args.seeds,
                              "measure": "test accuracy of the kept weights; ratio_to_baseline = mean / baseline mean"}
    started = time.perf_counter()
    for name in args.parts.split(","):
        if name not in parts:
            parser.error(f"unknown part {name!r} (cifar, flowers)")
        run_part(name, parts[name], list(range(args.seeds)), work, report, args.out)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    emit(report, args.out)


if __name__ == "__main__":
    main()
