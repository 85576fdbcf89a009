"""`imgclf lr-find`: the learning-rate range test (imgclf.evaluation.lr_finder) on the configured data and
model, built as training builds them, with its plot, CSV and JSON."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from torch import nn

from imgclf.config import load_data, resolve
from imgclf.defaults import LR_FIND_END, LR_FIND_START, LR_FIND_STEPS
from imgclf.evaluation.lr_finder import lr_range_test
from imgclf.fileio import atomic_file, write_json
from imgclf.reporting import figures as figs
from imgclf.runtime import resolve_amp, resolve_device, seed_everything
from imgclf.training.optim import build_optimizer
from imgclf.training.plan import optimizer_groups, plan_finetune
from imgclf.training.run import model_for, train_loader_for


def run_lr_find(cfg: Any, out: str | Path = "lr_find", start_lr: float = LR_FIND_START,
                end_lr: float = LR_FIND_END, steps: int = LR_FIND_STEPS) -> dict[str, Any]:
    """`imgclf lr-find`: the range test on the configured data and model, with the project's own loaders.

    Writes OUT/lr_find.png, OUT/lr_find.csv and OUT/lr_find.json; returns the suggestion and the paths.
    """
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = load_data(cfg)
    cfg = resolve(cfg, splits, device)
    model = model_for(cfg, len(splits.classes), device)
    optimizer = build_optimizer(optimizer_groups(model, cfg, plan_finetune(model, cfg)), cfg)
    loader = train_loader_for(cfg, splits.train, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    result = lr_range_test(model, optimizer, loader, criterion=criterion, start_lr=start_lr, end_lr=end_lr,
                           steps=steps, amp_dtype=resolve_amp(cfg, device))

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fig = figs.lr_finder(result.lrs, result.losses, result.smoothed, result.suggested_lr, result.min_loss_lr,
                         result.diverged_at)
    plot = figs.save(fig, folder / "lr_find.png")
    with atomic_file(folder / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows((i, f"{a:.6g}", f"{b:.6g}", f"{c:.6g}")
                         for i, (a, b, c) in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)))
    summary = {"suggested_lr": result.suggested_lr, "min_loss_lr": result.min_loss_lr,
               "steepest_lr": result.steepest_lr, "diverged_at": result.diverged_at, "steps_run": len(result.lrs),
               "start_lr": start_lr, "end_lr": end_lr, "model": cfg.model, "optimizer": cfg.optimizer,
               "batch_size": cfg.batch_size, "note": result.note, "plot": str(plot), "csv": str(folder / "lr_find.csv")}
    write_json(folder / "lr_find.json", summary)
    return summary
