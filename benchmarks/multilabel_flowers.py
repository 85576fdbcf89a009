"""Multi-label on real photos: composites of two flowers5 photos side by side, labelled with both kinds (one label
when both are of one kind), EfficientNet-Lite0 fine-tuned vs fastcnn from scratch, each trained for `--budget`
seconds (or `--epochs`); reported: test mAP, micro/macro F1 and exact match at the per-class thresholds chosen on
validation, those thresholds, and one `predict` answer.

A composite is a `--side` square: each photo centre-cropped to a 1:2 portrait strip filling one half (the
evaluation view's centre crop then keeps both flowers). Training composites pair training photos and test
composites test photos (no photo on both sides of the split), paired by a seeded shuffle, so each photo is used
about 2 x count / photos times. They are written under a temp folder (`--keep DIR` to keep them) with a labels CSV
(file,label,split; `daisy;roses`), never into the repository. `--smoke` pairs the bundled flowers-mini photos
into 48 composites and trains the tiny net one epoch a variant. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from _common import emit, smoke_threads
from imgclf.config import TrainConfig
from imgclf.data.sources import bundled_path
from imgclf.doctor import cpu_info
from imgclf.inference.predictor import Predictor
from imgclf.training.run import train

FLOWERS5 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flowers5.tar.xz"
VARIANTS = {"scratch": {}, "finetune": {"model": "efficientnet_lite0", "pretrained": True}}
SCORES = ("map", "micro_f1", "macro_f1", "exact_match", "label_accuracy")


def photo_pool(folder: Path) -> dict[str, list[tuple[str, Path]]]:
    """{split: [(class, photo)]} of a train/ and test/ folder of <class>/<photo> (one top folder allowed)."""
    if not (folder / "train").is_dir():
        tops = [p for p in folder.iterdir() if p.is_dir()]
        folder = tops[0] if len(tops) == 1 else folder
    return {split: [(p.parent.name, p) for p in sorted((folder / split).glob("*/*")) if p.is_file()]
            for split in ("train", "test")}


def composite(left: Path, right: Path, side: int) -> Image.Image:
    """Two photos side by side in a `side` square, each centre-cropped to a half's 1:2 shape."""
    canvas = Image.new("RGB", (side, side))
    for i, path in enumerate((left, right)):
        with Image.open(path) as photo:
            half = ImageOps.fit(ImageOps.exif_transpose(photo).convert("RGB"), (side // 2, side),
                                Image.Resampling.BICUBIC)
        canvas.paste(half, (i * (side // 2), 0))
    return canvas


def build(pool: dict[str, list[tuple[str, Path]]], out: Path, counts: dict[str, int], side: int,
          seed: int = 0) -> Path:
    """out/SPLIT-I.jpg and out/labels.csv: `counts[split]` composites of that split's photos."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["file,label,split"]
    for split, count in counts.items():
        photos = pool[split]
        order: list[int] = []
        while len(order) < 2 * count:  # a fresh shuffle each pass: pairs differ from pass to pass
            order += rng.permutation(len(photos)).tolist()
        for i in range(count):
            (a, left), (b, right) = photos[order[2 * i]], photos[order[2 * i + 1]]
            name = f"{split}-{i:04d}.jpg"
            composite(left, right, side).save(out / name, quality=92)
            rows.append(f"{name},{';'.join(sorted({a, b}))},{'test' if split == 'test' else ''}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out / "labels.csv"


def run_variant(name: str, data: Path, out: Path, budget: float | None, epochs: int | None,
                smoke: bool) -> dict[str, Any]:
    """Train one variant (for `epochs`, else `budget` seconds) and read back its test scores, thresholds and one
    predict answer."""
    length = {"epochs": epochs} if epochs else {"time_budget": budget}
    changes = {"model": "tiny", "epochs": 1} if smoke else {**VARIANTS[name], **length}
    cfg = TrainConfig(data=str(data), device="cpu", quiet=True, out=str(out / name), **changes)
    result = train(cfg)
    m = result.metrics
    example = sorted(data.parent.glob("test-*.jpg"))[0]
    answer = Predictor.load(checkpoint=str(result.run_dir / "checkpoints" / "best.pt"), device="cpu").predict(
        [example], top_k=3)[0]
    print(f"{name}: test mAP {m['test_map']:.3f}, micro-F1 {m['test_micro_f1']:.3f}", file=sys.stderr, flush=True)
    return {"model": m["model"], **{f"test_{k}": round(m[f"test_{k}"], 4) for k in SCORES},
            **{f"val_{k}": round(m[f"val_{k}"], 4) for k in ("map", "micro_f1")},
            "thresholds": m["thresholds"],
            "test_per_class": {c: {k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}
                               for c, s in m["test_per_class"].items()},
            "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"],
            "images_per_second": m["images_per_second"], "input_size": m["input_size"],
            "predict_example": {"file": example.name, **answer}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(FLOWERS5), help="flowers5.tar.xz (default: ../shared/datasets)")
    parser.add_argument("--train", type=int, default=600, help="training composites (val is carved from them)")
    parser.add_argument("--test", type=int, default=150, help="test composites")
    parser.add_argument("--side", type=int, default=256, help="composite side in pixels")
    parser.add_argument("--budget", type=float, default=75.0, help="training seconds per variant")
    parser.add_argument("--epochs", type=int, help="train each variant this many epochs instead of --budget seconds "
                        "(figures that do not move with the machine's speed or load)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: scratch, finetune")
    parser.add_argument("--keep", help="build the composites in this folder and keep them (default: a temp folder)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--smoke", action="store_true", help="48 composites of flowers-mini, the tiny net, seconds")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    counts = {"train": 36, "test": 12} if args.smoke else {"train": args.train, "test": args.test}
    side = 96 if args.smoke else args.side
    with tempfile.TemporaryDirectory(prefix="imgclf-multilabel-") as tmp, smoke_threads(args.smoke):
        if args.smoke:
            source = bundled_path("flowers-mini")
        else:
            if not Path(args.archive).is_file():
                sys.exit(f"benchmark needs {args.archive}")
            with tarfile.open(args.archive) as tar:
                tar.extractall(Path(tmp) / "photos", filter="data")
            source = Path(tmp) / "photos"
        pool = photo_pool(source)
        data = build(pool, Path(args.keep or Path(tmp) / "composites"), counts, side)
        labels = [row.split(",")[1] for row in data.read_text().splitlines()[1:]]
        results = {name: run_variant(name, data, Path(tmp) / "runs", args.budget, args.epochs, args.smoke)
                   for name in variants}
    cpu = cpu_info()
    result = {
        "benchmark": "multilabel_flowers", "smoke": args.smoke,
        "budget_seconds": None if args.smoke or args.epochs else args.budget, "epochs": args.epochs,
        "data": {"source": "flowers-mini" if args.smoke else Path(args.archive).name, "composites": counts,
                 "side": side, "photos": {s: len(p) for s, p in pool.items()},
                 "two_labels": round(float(np.mean([";" in label for label in labels])), 4),
                 "classes": sorted({n for label in labels for n in label.split(";")})},
        "machine": {"cpu": cpu["model"], "cores": cpu["cores"], "avx512_bf16": cpu["flags"].get("avx512_bf16"),
                    "load_average_1min": round(os.getloadavg()[0], 2)},  # other jobs on the cores slow a budget run
        "variants": results,
    }
    if {"scratch", "finetune"} <= set(results) and results["scratch"]["test_map"]:
        result["map_ratio_finetune_to_scratch"] = round(results["finetune"]["test_map"]
                                                        / results["scratch"]["test_map"], 3)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
