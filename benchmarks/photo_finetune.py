"""Real photos on a CPU: `imgclf compare` with its defaults, the photo augmentation alone, and Lite0/1/2.

Prints one JSON object. Each part is a comparison run in this process, its baseline beside it:
- `flowers5`: `imgclf compare --data flowers5.tar.xz` with defaults (scratch vs fine-tuned, one budget each);
- `cifar50`: the same on 50 CIFAR-10-JPEG training images a class (upsampled), tested on 100 a class;
- `augmentation`: scratch and fine-tune on flowers5 with and without the photo augmentation (random-resized
  crop + TrivialAugmentWide vs the plain centre view, flipped), one budget each;
- `backbones`: Lite0 vs Lite1 vs Lite2 fine-tuned on flowers5 within one budget each.

Each part also gives every run's test accuracy as a ratio to its baseline's (`ratio_to_baseline`): scratch, or
lite0 for `backbones`.

Usage: python benchmarks/photo_finetune.py [--parts flowers5,cifar50,augmentation,backbones] [--budget S] [--smoke]
`--smoke`: every part on made-up photos (cifar50 on made-up 16 px squares) at 32 px, one epoch a run instead of
a budget: checks it works, in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CIFAR_ARCHIVE, extracted_folder, made_up_folder, smoke_threads

FLOWERS = CIFAR_ARCHIVE.parent / "flowers5.tar.xz"
NO_PHOTO_AUGMENT = {"augment_policy": "none", "min_crop_scale": 1.0}  # the centre view, flipped, every epoch


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {'avx512_bf16' if 'avx512_bf16' in out else 'no bf16'}"


def compare(data: str | Path, out: Path, variants: dict[str, dict[str, Any]] | None = None,
            budget: float | None = None, settings: dict[str, Any] | None = None, baseline: str = "scratch"
            ) -> dict[str, Any]:
    """One `imgclf compare` (the transfer preset, or `variants`; `settings`: more of the base config),
    summarized, with each run's test accuracy as a ratio to the `baseline` run's."""
    import yaml

    from imgclf.config import TrainConfig
    from imgclf.experiments.compare import run_compare

    variants_file = None
    if variants:
        variants_file = out.parent / f"{out.name}-variants.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        variants_file.write_text(yaml.safe_dump(variants))
    started = time.perf_counter()
    result = run_compare(TrainConfig(data=str(data), device="cpu", quiet=True, **(settings or {})), out,
                         variants_file=variants_file, budget=budget)
    runs = {r["name"]: {k: r.get(k) for k in ("model", "test_accuracy", "val_accuracy", "train_seconds",
                                                   "epochs_run", "images_per_second")} for r in result["runs"]}
    base_accuracy = runs.get(baseline, {}).get("test_accuracy")
    return {"wall_seconds": round(time.perf_counter() - started, 1), "budget_seconds": result["budget_seconds"],
            "runs": runs, "verdict": result["verdict"], "baseline": baseline,
            "ratio_to_baseline": {name: round(r["test_accuracy"] / base_accuracy, 4)
                                  if base_accuracy and r["test_accuracy"] is not None else None
                                  for name, r in runs.items()}}


def cifar_subset(root: Path, per_class_train: int = 50, per_class_test: int = 100) -> Path:
    """train/<class>/ with the first N training images a class, test/<class>/ with the first M test images."""
    source = extracted_folder()
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for class_dir in sorted((source / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (target / image.name).write_bytes(image.read_bytes())
    return root


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="flowers5,cifar50,augmentation,backbones")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per run for augmentation, backbones")
    parser.add_argument("--smoke", action="store_true", help="made-up photos, 32 px, one epoch a run: checks it works")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgclf-photo-bench-"))
    lite2 = {"model": "efficientnet_lite2", "pretrained": True}
    report: dict[str, Any] = {"benchmark": "photo_finetune", "smoke": args.smoke, "cpu": cpu_model()}
    if args.smoke:  # one epoch a run, no budget; the made-up data stands in for flowers5 and the CIFAR subset
        photos, budget, settings = made_up_folder(work / "photos", photos=True), None, {"image_size": 32, "epochs": 1}
    else:
        photos, budget, settings = FLOWERS, args.budget, None
    with smoke_threads(args.smoke):
        for part in args.parts.split(","):
            if part == "flowers5":
                report[part] = compare(photos, work / part, settings=settings)
            elif part == "cifar50":
                squares = made_up_folder(work / "squares", photos=False) if args.smoke else cifar_subset(
                    work / "cifar50-data")
                report[part] = compare(squares, work / part, settings=settings)
            elif part == "augmentation":
                report[part] = compare(photos, work / part, {
                    "scratch": {}, "scratch_no_photo_aug": dict(NO_PHOTO_AUGMENT),
                    "finetune": dict(lite2), "finetune_no_photo_aug": {**lite2, **NO_PHOTO_AUGMENT}}, budget, settings)
            elif part == "backbones":
                report[part] = compare(photos, work / part, {
                    f"lite{i}": {"model": f"efficientnet_lite{i}", "pretrained": True} for i in range(3)}, budget,
                    settings, baseline="lite0")
            else:
                parser.error(f"unknown part {part!r}")
    if args.smoke:
        shutil.rmtree(work, ignore_errors=True)  # a real run's folder is kept: its reports are worth reading
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
