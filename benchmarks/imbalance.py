"""What the imbalance remedies buy on a deliberately imbalanced CIFAR-10: macro F1 and balanced accuracy on the
untouched test split, from scratch, with the same training time for each variant.

The training pool: CIFAR-10-JPEG's training images, `--big` per class for classes 0-4 and `--small` for 5-9
(10:1 by default), a seeded per-class pick; val is a seeded 10 % of every class of that pool (as imbalanced as
it), test is all 10,000 test images (balanced). Variants: plain, --class-weights auto, --sampler balanced;
each trained for `--budget` seconds (fastcnn at width 1, so the net does not depend on a rate probe) with
`--seeds` seeds. Reported: mean and spread (population std) over seeds, and the mean's ratio to plain's.
`--smoke` runs the same on made-up 8x8 images with the tiny net, 2 seeds, in seconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score

from _common import add_budget_args, emit, find_archive
from imgclf.config import TrainConfig
from imgclf.data import ImageSet, Splits, load_splits
from imgclf.data.imageset import stratified_split
from imgclf.doctor import cpu_info
from imgclf.training.run import train

VARIANTS = {"plain": {}, "class_weights": {"class_weights": "auto"}, "balanced_sampler": {"sampler": "balanced"}}
METRICS = ("macro_f1", "balanced_accuracy", "accuracy", "minority_recall")


def imbalanced(pool: ImageSet, big: int, small: int, seed: int = 0) -> ImageSet:
    """`big` images of each class in the first half of the classes, `small` of each in the second half."""
    rng = np.random.default_rng(seed)
    half = len(pool.classes) // 2
    keep = [rng.choice(np.flatnonzero(pool.labels == c), big if c < half else small, replace=False)
            for c in range(len(pool.classes))]
    return pool.take(np.sort(np.concatenate(keep)))


def cifar_splits(archive: Path, big: int, small: int) -> Splits:
    splits = load_splits(str(archive))
    pool = ImageSet(np.concatenate([splits.train.images, splits.val.images]),
                    np.concatenate([splits.train.labels, splits.val.labels]), splits.classes)
    return carve(imbalanced(pool, big, small), splits.test, str(archive))


def smoke_splits(big: int, small: int) -> Splits:
    """Made-up 8x8 images, 4 classes, each a colour with noise: learnable in a second."""
    rng = np.random.default_rng(0)

    def made(per_class: list[int]) -> ImageSet:
        labels = np.repeat(np.arange(4), per_class)
        colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [160, 160, 40]])
        images = colours[labels][:, None, None, :] + rng.normal(0, 60, (len(labels), 8, 8, 3))
        return ImageSet(np.clip(images, 0, 255).astype(np.uint8), labels, ["a", "b", "c", "d"])

    return carve(made([big, big, small, small]), made([50] * 4), "smoke")


def carve(train: ImageSet, test: ImageSet, source: str) -> Splits:
    kept, held = stratified_split(train.labels, 0.1, seed=0, classes=train.classes)
    return Splits(train.take(kept), train.take(held), test, source=source)


def scores(run_dir: Path, minority: list[int]) -> dict[str, float]:
    with np.load(run_dir / "predictions_test.npz") as saved:
        pred, labels = saved["logits"].argmax(1), saved["labels"]
    return {"macro_f1": float(f1_score(labels, pred, average="macro")),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "accuracy": float(np.mean(pred == labels)),
            "minority_recall": float(np.mean([np.mean(pred[labels == c] == c) for c in minority]))}


def summary(values: list[float]) -> dict[str, Any]:
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4),
            "runs": [round(v, 4) for v in values]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_args(parser, budget=45.0)
    parser.add_argument("--big", type=int, default=2000, help="training-pool images of each of classes 0-4")
    parser.add_argument("--small", type=int, default=200, help="training-pool images of each of classes 5-9")
    parser.add_argument("--smoke", action="store_true", help="made-up 8x8 images, 0.5 s a run: checks it works")
    args = parser.parse_args(argv)
    if args.smoke:
        big, small, budget, seeds, model = 60, 6, min(args.budget, 0.5), min(args.seeds, 2), "tiny"
        splits = smoke_splits(big, small)
    else:
        big, small, budget, seeds, model = args.big, args.small, args.budget, args.seeds, "fastcnn"
        splits = cifar_splits(find_archive(args.archive), big, small)
    half = len(splits.classes) // 2
    minority = list(range(half, len(splits.classes)))
    runs: dict[str, dict[str, list[float]]] = {}
    epochs: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="imgclf-imbalance-") as tmp:
        for name, changes in VARIANTS.items():
            runs[name] = {m: [] for m in METRICS}
            for seed in range(seeds):
                cfg = TrainConfig(data=splits.source, model=model, width=1.0, time_budget=budget, seed=seed,
                                  device="cpu", quiet=True, out=f"{tmp}/{name}-{seed}").replace(**changes)
                result = train(cfg, splits=splits)
                for metric, value in scores(result.run_dir, minority).items():
                    runs[name][metric].append(value)
                epochs.setdefault(name, []).append(result.metrics["epochs_run"])
                print(f"{name} seed {seed}: {({m: round(v[-1], 4) for m, v in runs[name].items()})}",
                      file=sys.stderr, flush=True)
    plain = {m: statistics.fmean(runs["plain"][m]) for m in METRICS}
    cpu = cpu_info()
    result = {
        "benchmark": "imbalance", "smoke": args.smoke, "model": model, "budget_seconds": budget, "seeds": seeds,
        "data": {"source": "made-up 8x8" if args.smoke else "CIFAR-10-JPEG", "train": len(splits.train),
                 "val": len(splits.val), "test": len(splits.test), "per_class_pool": [big] * half + [small] * half,
                 "imbalance": big / small},
        "machine": {"cpu": cpu["model"], "cores": cpu["cores"], "avx512_bf16": cpu["flags"].get("avx512_bf16")},
        "variants": {name: {**{m: summary(v) for m, v in runs[name].items()},
                            "ratio_to_plain": {m: round(statistics.fmean(runs[name][m]) / plain[m], 4)
                                               if plain[m] else None for m in METRICS},
                            "epochs_run": epochs[name]} for name in VARIANTS},
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
