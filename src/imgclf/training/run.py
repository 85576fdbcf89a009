"""train(config): DATA -> loaders -> model -> Trainer -> a complete run directory."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.config import TrainConfig
from imgclf.data import Splits, load_splits
from imgclf.data.loaders import BatchAugment, eval_batch_size, make_loader
from imgclf.errors import UserError
from imgclf.evaluation.metrics import loss_and_accuracy, predict_logits, summarize
from imgclf.models import build_model, model_entry
from imgclf.runtime import resolve_amp, resolve_device, seed_everything
from imgclf.training import callbacks as cb
from imgclf.training import distributed
from imgclf.training.checkpoint import checkpoint_config, load_checkpoint
from imgclf.training.optim import build_optimizer, decay_split, resolved_lr, resolved_weight_decay
from imgclf.training.plan import plan_finetune, resolve_defaults
from imgclf.training.trainer import Trainer

DEFAULT_EPOCHS = 10
UNBOUNDED_EPOCHS = 1_000_000  # a time-budgeted run without --epochs stops on time alone
RESUME_OVERRIDABLE = {"epochs", "time_budget", "quiet", "device", "num_workers"}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: torch.nn.Module
    history: list[dict[str, Any]]


def input_size_for(cfg: TrainConfig, splits: Splits) -> int:
    """The model input size: --image-size, else the pretrained weights' size, else the data's own."""
    if cfg.image_size:
        return cfg.image_size
    entry = model_entry(cfg.model)
    if cfg.pretrained and entry.default_image_size:
        return entry.default_image_size
    return splits.train.image_size


def fit_batch_size(cfg: TrainConfig, num_train: int, announce: bool = False) -> TrainConfig:
    """Never a batch over 1/8 of the training set (a power of two, at least 8): a folder of a few hundred
    photos still gets several optimizer steps an epoch."""
    cap = max(8, 2 ** int(np.log2(max(num_train / 8, 1))))
    if cfg.batch_size <= cap:
        return cfg
    if announce:
        print(f"imgclf: batch size {cfg.batch_size} -> {cap} for {num_train} training images", file=sys.stderr)
    return cfg.replace(batch_size=cap)


def load_data(cfg: TrainConfig) -> Splits:
    entry = model_entry(cfg.model)
    size = cfg.image_size or (entry.default_image_size if cfg.pretrained else None)
    return load_splits(cfg.data, data_dir=cfg.data_dir, image_size=size, val_fraction=cfg.val_fraction,
                       seed=cfg.seed, subset=cfg.subset, train_fraction=cfg.train_fraction,
                       stream={"stream": True, "memory": False}.get(cfg.loader))  # auto: None, decided by size


def new_run_dir(out: str | None, cfg: TrainConfig) -> Path:
    if out is None:
        stem = Path(cfg.data).name.split(".")[0] or "run"
        out = f"runs/{stem}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(out)
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir}/checkpoints/last.pt "
                        "or another --out")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def train(cfg: TrainConfig, resume: str | None = None, overrides: dict[str, Any] | None = None,
          extra_callbacks: list[cb.Callback] | None = None, splits: Splits | None = None) -> TrainResult:
    """Train per `cfg` (or continue `resume`) and write the run directory; returns its metrics.

    `splits` lets a caller that trains several variants (compare) decode the data once.
    """
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        allowed = {k: v for k, v in (overrides or {}).items() if k in RESUME_OVERRIDABLE}
        cfg = checkpoint_config(ckpt).replace(**allowed)
        run_dir = Path(resume).resolve().parent.parent
    else:
        run_dir = new_run_dir(cfg.out, cfg)
    cfg = resolve_defaults(cfg)
    dist = distributed.setup(cfg)
    device = dist.device if dist.active else resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = splits or load_data(cfg)
    classes = splits.classes
    if ckpt is not None and ckpt["classes"] != classes:
        raise UserError(f"{resume}: trained on classes {ckpt['classes'][:3]}..., data has {classes[:3]}...")
    if ckpt is None:
        cfg = fit_batch_size(cfg, len(splits.train), announce=dist.is_main and not cfg.quiet)
    input_size = input_size_for(cfg, splits)
    amp_dtype = resolve_amp(cfg, device)

    model = build_model(cfg.model, len(classes), pretrained=cfg.pretrained, weights=cfg.weights,
                        dropout=cfg.dropout, width=cfg.width).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = plan_finetune(model, cfg)
    optimizer = build_optimizer(plan.param_groups if plan else decay_split(model.parameters(), resolved_lr(cfg),
                                                                          resolved_weight_decay(cfg)), cfg)
    augment = BatchAugment(cfg.crop_pad, cfg.flip, cfg.cutout)
    train_loader = make_loader(splits.train, cfg.batch_size, device, train=True, augment=augment, seed=cfg.seed,
                               input_size=input_size, channels_last=cfg.channels_last,
                               num_workers=cfg.num_workers)
    val_loader = make_loader(splits.val, eval_batch_size(input_size, device), device, train=False,
                             input_size=input_size, channels_last=cfg.channels_last, num_workers=cfg.num_workers)
    train_model = dist.wrap(model, cfg, find_unused=plan is not None) if dist.active else model
    if cfg.compile:
        train_model = torch.compile(train_model)
    if dist.active:
        train_loader.shard(dist.rank, dist.world_size)

    max_epochs = cfg.epochs or (UNBOUNDED_EPOCHS if cfg.time_budget else DEFAULT_EPOCHS)
    callbacks: list[cb.Callback] = [cb.NaNGuard()]
    if plan is not None:
        callbacks.append(plan.callback)
    if cfg.time_budget:
        callbacks.append(cb.TimeBudget(cfg.time_budget))
    if cfg.early_stop_patience:
        callbacks.append(cb.EarlyStopping(cfg.early_stop_patience, cfg.early_stop_min_delta))
    if dist.is_main:
        callbacks += [cb.HistoryCSV(run_dir / "history.csv"), cb.LRMonitor(run_dir / "lr_schedule.csv"),
                      cb.Checkpointer(run_dir / "checkpoints"), cb.ProgressBar(False if cfg.quiet else None)]
    callbacks += extra_callbacks or []
    trainer = Trainer(model, cfg, train_loader, val_loader, optimizer=optimizer, max_epochs=max_epochs,
                      classes=classes, callbacks=callbacks, amp_dtype=amp_dtype, train_model=train_model,
                      is_main=dist.is_main, agree=dist.agree if dist.active else None,
                      checkpoint_extra={"input_size": input_size})
    if ckpt is not None:
        if plan is not None:
            plan.prepare_resume(trainer, ckpt["trainer"]["epoch"])
        trainer.load_state_dict(ckpt)
    elif dist.is_main:
        cfg.to_yaml(run_dir / "config.yaml")
        (run_dir / "classes.json").write_text(json.dumps(classes))

    started = time.perf_counter()
    trainer.fit()
    if trainer.stop_reason and not cfg.quiet and dist.is_main:
        print(f"imgclf: {trainer.stop_reason}", file=sys.stderr)
    metrics = final_metrics(trainer, splits, device, input_size, amp_dtype, run_dir, dist.is_main)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    if dist.is_main:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    dist.teardown()
    return TrainResult(run_dir, metrics, model, trainer.history)


def final_metrics(trainer: Trainer, splits: Splits, device: torch.device, input_size: int,
                  amp_dtype: torch.dtype | None, run_dir: Path, is_main: bool) -> dict[str, Any]:
    """Val and test numbers of the final weights; test logits saved for the report (test read only here)."""
    cfg = trainer.config
    results: dict[str, Any] = {}
    for name in ("val", "test"):
        part = getattr(splits, name)
        if part is None:
            results[name] = None
            continue
        loader = make_loader(part, eval_batch_size(input_size, device), device, train=False, input_size=input_size,
                             channels_last=cfg.channels_last, num_workers=cfg.num_workers)
        logits, labels = predict_logits(trainer.model, loader, amp_dtype=amp_dtype, tta=cfg.tta)
        results[name] = summarize(logits, labels, splits.classes)
        if cfg.tta:  # what the views added, measured rather than assumed
            plain, _ = predict_logits(trainer.model, loader, amp_dtype=amp_dtype)
            results[name]["accuracy_without_tta"] = loss_and_accuracy(plain, labels)[1]
        if is_main:
            np.savez(run_dir / f"predictions_{name}.npz", logits=logits.numpy(), labels=labels.numpy())
    images_seen = trainer.step * cfg.batch_size
    return {
        "val_accuracy": results["val"]["accuracy"],
        "test_accuracy": results["test"]["accuracy"] if results["test"] else None,
        **({f"{name}_accuracy_without_tta": results[name]["accuracy_without_tta"]
            for name in ("val", "test") if results[name]} if cfg.tta else {}),
        "val_loss": results["val"]["loss"],
        "test_loss": results["test"]["loss"] if results["test"] else None,
        "best_epoch": trainer.best_epoch,
        "best_val_accuracy": trainer.best_val_acc,
        "epochs_run": trainer.epoch,
        "steps": trainer.step,
        "train_seconds": round(trainer.train_seconds, 3),
        "images_per_second": round(images_seen / max(trainer.train_seconds, 1e-9), 1),
        "model": cfg.model,
        "num_params": sum(p.numel() for p in trainer.model.parameters()),
        "input_size": input_size,
        "device": str(device),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "tta": cfg.tta,
        "stop_reason": trainer.stop_reason,
        "per_class_test_accuracy": results["test"]["per_class_accuracy"] if results["test"] else None,
    }
