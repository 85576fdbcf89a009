"""Real photos on a CPU: `imgclf compare` with its defaults, the photo augmentation alone, and Lite0/1/2.

Prints one JSON object. Each part is a comparison run in this process, its baseline beside it:
- `flowers5`: `imgclf compare --data flowers5.tar.xz` with defaults (scratch vs fine-tuned, one budget each);
- `cifar50`: the same on 50 CIFAR-10-JPEG training images a class (upsampled), tested on 100 a class;
- `augmentation`: scratch and fine-tune on flowers5 with and without the photo augmentation (random-resized
  crop + TrivialAugmentWide vs the plain centre view, flipped), one budget each;
- `backbones`: Lite0 vs Lite1 vs Lite2 fine-tuned on flowers5 within one budget each.

Usage: python benchmarks/photo_finetune.py [--parts flowers5,cifar50,augmentation,backbones] [--budget S]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CIFAR_ARCHIVE, extracted_folder

FLOWERS = CIFAR_ARCHIVE.parent / "flowers5.tar.xz"
NO_PHOTO_AUGMENT = {"augment_policy": "none", "min_crop_scale": 1.0}  # the centre view, flipped, every epoch


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {'avx512_bf16' if 'avx512_bf16' in out else 'no bf16'}"


def compare(data: str | Path, out: Path, variants: dict[str, dict[str, Any]] | None = None,
            budget: float | None = None) -> dict[str, Any]:
    """One `imgclf compare` (the transfer preset, or `variants`), summarized."""
    import yaml

    from imgclf.config import TrainConfig
    from imgclf.experiments.compare import run_compare

    variants_file = None
    if variants:
        variants_file = out.parent / f"{out.name}-variants.yaml"
        out.parent.mkdir(parents=True, exist_ok=True)
        variants_file.write_text(yaml.safe_dump(variants))
    started = time.perf_counter()
    result = run_compare(TrainConfig(data=str(data), device="cpu", quiet=True), out, variants_file=variants_file,
                         budget=budget)
    runs = {r["name"]: {k: r.get(k) for k in ("model", "test_accuracy", "val_accuracy", "train_seconds",
                                                   "epochs_run", "images_per_second")} for r in result["runs"]}
    return {"wall_seconds": round(time.perf_counter() - started, 1), "budget_seconds": result["budget_seconds"],
            "runs": runs, "verdict": result["verdict"]}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="flowers5,cifar50,augmentation,backbones")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per run for augmentation, backbones")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgclf-photo-bench-"))
    lite2 = {"model": "efficientnet_lite2", "pretrained": True}
    report: dict[str, Any] = {"benchmark": "photo_finetune", "cpu": cpu_model()}
    for part in args.parts.split(","):
        if part == "flowers5":
            report[part] = compare(FLOWERS, work / part)
        elif part == "cifar50":
            report[part] = compare(cifar_subset(work / "cifar50-data"), work / part)
        elif part == "augmentation":
            report[part] = compare(FLOWERS, work / part, {
                "scratch": {}, "scratch_no_photo_aug": dict(NO_PHOTO_AUGMENT),
                "finetune": dict(lite2), "finetune_no_photo_aug": {**lite2, **NO_PHOTO_AUGMENT}}, args.budget)
        elif part == "backbones":
            report[part] = compare(FLOWERS, work / part, {
                f"lite{i}": {"model": f"efficientnet_lite{i}", "pretrained": True} for i in range(3)}, args.budget)
        else:
            parser.error(f"unknown part {part!r}")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
