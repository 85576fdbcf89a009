"""`imgclf evaluate`: a checkpoint's accuracy, loss, per-class scores and confusion matrix on a split, or for a
multi-label model mAP, per-class AP and F1 at its thresholds, micro and macro F1 and exact match (the
checkpoint, the data layer and the loaders brought together; the scoring is imgclf.evaluation.metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgclf.config import scored_part
from imgclf.data.loaders import eval_batch_size, make_loader
from imgclf.data.photos import Preprocess
from imgclf.errors import UserError
from imgclf.evaluation.metrics import predict_logits, summarize
from imgclf.models.checkpoint import calibration_of, checkpoint_config, load_checkpoint, model_from_checkpoint
from imgclf.runtime import resolve_device

SPLITS = ("test", "val", "all")  # all: every image of the source, whatever split it lies in


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split: str = "test", tta: bool = False,
                        data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Score a checkpoint on the split it was trained beside (same seed, same val carve-out, same size), or on
    every image of a source (`split="all"`: a plain labelled folder, or all splits of one together)."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ckpt = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt)
    cfg = cfg.replace(data=data or cfg.data, data_dir=data_dir or cfg.data_dir, subset=None, train_fraction=1.0)
    classes = list(ckpt["classes"])
    part = scored_part(cfg, split, classes)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    preprocess = Preprocess.from_checkpoint(ckpt)
    size = preprocess.input_size
    loader = make_loader(part, eval_batch_size(size, dev), dev, train=False, input_size=size, channels_last=False,
                         num_workers=cfg.num_workers, preprocess=preprocess)
    logits, labels = predict_logits(model, loader, tta=tta)  # float32: scores must not move with the CPU
    thresholds = calibration_of(ckpt)["thresholds"]  # multi-label: each class's, chosen on validation
    return {"checkpoint": str(checkpoint), "data": cfg.data, "split": split, "tta": tta,
            **summarize(logits, labels, classes, thresholds)}


