"""`imgclf inspect`: a dataset's health before training: counts, image sizes, unreadable files, exact and
near duplicates (imgclf.evaluation.inspection) and, given a checkpoint, suspected label errors by confident
learning on out-of-sample probabilities from its Predictor; the report is imgclf.reporting.inspection's.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.config import TrainConfig
from imgclf.data.loaders import eval_batch_size
from imgclf.errors import UserError
from imgclf.evaluation.inspection import (
    NEAR_DISTANCE,
    Scan,
    confident_label_issues,
    decode,
    duplicates,
    out_of_sample,
    scan,
)
from imgclf.inference.predictor import Predictor
from imgclf.models.checkpoint import checkpoint_config, load_checkpoint, task_of
from imgclf.reporting.inspection import write_inspection
from imgclf.runtime import resolve_device

SPLIT_ORDER = ["train", "val", "test", "all"]
LISTED_ISSUES = 200  # suspected label errors listed in the JSON (all are counted)


def label_issues(scan: Scan, checkpoint: str, seed: int, val_fraction: float, device: str = "auto",
                 ) -> dict[str, Any]:
    """Score the images the checkpoint did not train on (its run's `seed` and `val_fraction` say which) in
    its own evaluation view, and find the suspects."""
    predictor = Predictor.load(checkpoint=checkpoint, device=device)
    if predictor.classes != scan.classes:
        raise UserError(f"{checkpoint}: trained on classes {predictor.classes[:4]}..., the data has "
                        f"{scan.classes[:4]}...")
    index = out_of_sample(scan, seed, val_fraction)
    view = predictor.preprocessing
    probs = np.zeros((len(index), len(scan.classes)), dtype=np.float32)
    batch_size = eval_batch_size(view.input_size, resolve_device(device))  # evaluation's own batch size
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        batch = torch.stack([view.view(decode(scan.sources[i], view.decode_side)) for i in chunk])
        probs[start:start + len(chunk)] = predictor.probabilities(batch)
    labels = scan.labels[index]
    suspects, likely, thresholds = confident_label_issues(probs, labels)
    rows = [{**scan.item(int(index[s])), "likely": scan.classes[likely[s]],
             "given_probability": round(float(probs[s, labels[s]]), 4),
             "likely_probability": round(float(probs[s, likely[s]]), 4)} for s in suspects]
    carved = "val" not in scan.splits
    scored = ["val (carved)" if carved and scan.splits[i] in ("train", "all") else scan.splits[i] for i in index]
    return {"checkpoint": str(checkpoint), "scored": {s: scored.count(s) for s in dict.fromkeys(scored)},
            "val_carved": carved,
            "accuracy": round(float((probs.argmax(axis=1) == labels).mean()), 4) if len(index) else None,
            "thresholds": {c: round(float(t), 4) for c, t in zip(scan.classes, thresholds, strict=True)},
            "count": len(rows), "list": rows[:LISTED_ISSUES],
            "_index": index[suspects]}


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def inspect_data(data: str, checkpoint: str | None = None, data_dir: str | None = None,
                 max_distance: int = NEAR_DISTANCE, device: str = "auto") -> tuple[dict[str, Any], Scan]:
    """The inspection's results (what inspection.json holds, plus `_`-keys of indexes for the report)."""
    started = time.perf_counter()
    # split as a default run (or the checkpoint's run) splits the data
    ckpt = load_checkpoint(checkpoint) if checkpoint else None
    if ckpt is not None and task_of(ckpt) == "multilabel":
        raise UserError("suspected label errors (confident learning) need one label an image; inspect a multi-label "
                        "set without --checkpoint")
    cfg = checkpoint_config(ckpt) if ckpt is not None else TrainConfig()
    seed, val_fraction = cfg.seed, cfg.val_fraction
    found = scan(data, data_dir, seed, val_fraction)
    if len(found) == 0:
        raise UserError(f"{data}: none of its {len(found.unreadable)} files is a readable image")
    split_names = sorted(set(found.splits), key=SPLIT_ORDER.index)
    labels = sorted({n for y in range(len(found.classes)) for n in found.label_names(y)})  # a multi-label set's each
    counts = {c: {s: 0 for s in split_names} for c in labels}
    for s, y in zip(found.splits, found.labels, strict=True):
        for name in found.label_names(y):
            counts[name][s] += 1
    width, height = found.sizes[:, 0], found.sizes[:, 1]
    shapes = {tuple(s) for s in found.sizes.tolist()}
    result: dict[str, Any] = {
        "data": data, "images": len(found), "classes": labels,
        **({"label_sets": found.classes} if found.multilabel else {}),  # what duplicates compare across
        "splits": {s: found.splits.count(s) for s in split_names}, "counts": counts,
        "unreadable": {"count": len(found.unreadable), "files": found.unreadable},
        "sizes": {"distinct": len(shapes), "width": _spread(width), "height": _spread(height),
                  "aspect": _spread(width / height), "square_share": round(float((width == height).mean()), 4)},
        "duplicates": duplicates(found, max_distance),
        "label_issues": label_issues(found, checkpoint, seed, val_fraction, device) if checkpoint else None,
    }
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result, found


def run_inspection(data: str, checkpoint: str | None = None, out: str | Path | None = None,
                   data_dir: str | None = None, max_distance: int = NEAR_DISTANCE, device: str = "auto",
                   ) -> dict[str, Any]:
    """`imgclf inspect`: inspect DATA and write the report to `out` (default runs/inspect-DATA-TIME, named
    like a run directory); returns the paths and the headline counts."""
    if out is None:
        out = f"runs/inspect-{Path(data).name.split('.')[0] or 'data'}-{datetime.now():%Y%m%d-%H%M%S}"
    result, found = inspect_data(data, checkpoint=checkpoint, data_dir=data_dir, max_distance=max_distance,
                                 device=device)
    report = write_inspection(result, found, out)
    exact, near = result["duplicates"]["exact"], result["duplicates"]["near"]
    issues = result["label_issues"]
    return {"out": str(out), "report": str(report), "json": str(Path(out) / "inspection.json"),
            "images": result["images"], "unreadable": result["unreadable"]["count"],
            "exact_duplicates": {k: exact[k] for k in ("groups", "within_class", "across_classes", "across_splits")},
            "near_duplicates": {k: near[k] for k in ("pairs", "within_class", "across_classes", "across_splits")},
            "label_issues": None if issues is None else issues["count"], "seconds": result["seconds"]}
