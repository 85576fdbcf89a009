"""train(config): DATA -> loaders -> model -> Trainer -> a complete run directory."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.config import TrainConfig, checkpoint_interval, load_data, resolve
from imgclf.data import Splits
from imgclf.data.loaders import BatchAugment, endless, eval_batch_size, make_loader
from imgclf.data.photos import Preprocess, train_transform
from imgclf.defaults import RATE_PROBE_STEPS
from imgclf.errors import UserError
from imgclf.evaluation.metrics import MULTILABEL_KEYS, SCORE_KEYS, loss_and_accuracy, predict_logits, summarize
from imgclf.evaluation.multilabel import threshold_calibration
from imgclf.evaluation.selective import calibrate
from imgclf.models import build_model
from imgclf.models.checkpoint import checkpoint_config, load_checkpoint
from imgclf.rundir import RunDir, skipped_summary
from imgclf.runtime import plain_step, resolve_amp, resolve_device, seed_everything
from imgclf.training import callbacks as cb
from imgclf.training import distributed
from imgclf.training.checkpoint import add_calibration
from imgclf.training.engine import Fitted
from imgclf.training.losses import criterion_for, imbalance_warning
from imgclf.training.optim import build_optimizer, decay_split
from imgclf.training.plan import optimizer_groups, plan_finetune
from imgclf.training.staged import HEAD_CURVE_VAL_IMAGES, stage_head
from imgclf.training.trainer import Trainer

UNBOUNDED_EPOCHS = 1_000_000  # a time-budgeted run without --epochs stops on time alone
# what --resume may change: where and how long it runs, never what it learns
RESUME_OVERRIDABLE = {"epochs", "time_budget", "quiet", "device", "num_workers", "threads", "data", "data_dir", "out",
                      "logger", "checkpoint_every"}


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: torch.nn.Module
    history: list[dict[str, Any]]
    config: TrainConfig  # as resolved: what config.yaml records


def model_for(cfg: TrainConfig, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The configured network on `device`, channels-last where the resolved config says so."""
    model = build_model(cfg.model, num_classes, pretrained=cfg.pretrained, weights=cfg.weights,
                        dropout=cfg.dropout, width=cfg.width).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def preprocess_for(cfg: TrainConfig) -> Preprocess:
    """The evaluation view of a resolved config (also what predict, serve and ONNX use)."""
    return Preprocess(cfg.image_size, cfg.resize, cfg.crop_fraction)


def train_loader_for(cfg: TrainConfig, data: Any, device: torch.device) -> Any:
    """Shuffled, augmented batches: whole-batch translate/flip/cutout for small squares, per-image
    random-resized crop, flip and policy for photos."""
    batch_augment = BatchAugment(cfg.crop_pad, cfg.flip, cfg.cutout)
    loader = make_loader(data, cfg.batch_size, device, train=True, augment=batch_augment, seed=cfg.seed,
                         input_size=cfg.image_size, channels_last=cfg.channels_last,
                         num_workers=cfg.num_workers, preprocess=preprocess_for(cfg),
                         photo_augment=train_transform(cfg.image_size, cfg.augment_policy, cfg.min_crop_scale,
                                                       cfg.flip))
    if cfg.sampler == "balanced":
        loader.balance(data.labels)
    return loader


def eval_loader_for(cfg: TrainConfig, data: Any, device: torch.device) -> Any:
    return make_loader(data, eval_batch_size(cfg.image_size, device), device, train=False, input_size=cfg.image_size,
                       channels_last=cfg.channels_last, num_workers=cfg.num_workers, preprocess=preprocess_for(cfg))


def resume_run(resume: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig, Path]:
    """Continue a checkpoint exactly: only where and how long it runs may change (RESUME_OVERRIDABLE);
    anything that would change what it learns is refused, and it writes only inside a run directory."""
    ckpt = load_checkpoint(resume)
    if "trainer" not in ckpt:
        raise UserError(f"{resume} holds final weights only (a speed run, which takes seconds): rerun it instead")
    saved = checkpoint_config(ckpt)
    changed = sorted(k for k, v in overrides.items()
                     if k not in RESUME_OVERRIDABLE | {"extra"} and getattr(saved, k, None) != v)
    if changed:
        raise UserError(f"--resume continues {resume} exactly, so it cannot change {', '.join(changed)}; "
                        "start a new run (another --out) to train with other settings")
    cfg = saved.replace(**{k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE})
    path = Path(resume).resolve()
    home = path.parent.parent
    if overrides.get("out") and Path(overrides["out"]).resolve() != home:
        return ckpt, cfg, RunDir.new(overrides["out"], cfg).path
    if path.parent.name != "checkpoints" or not (home / "config.yaml").is_file():
        raise UserError(f"{resume} is not inside a run directory (RUN/checkpoints/last.pt); "
                        "pass --out NEW_DIR to continue it in a new run directory")
    for stale in [*home.glob(".*.tmp"), *path.parent.glob(".*.tmp")]:  # left by a kill or a full disk
        stale.unlink(missing_ok=True)
    return ckpt, cfg, home


def train(cfg: TrainConfig, resume: str | None = None, overrides: dict[str, Any] | None = None,
          extra_callbacks: list[cb.Callback] | None = None, splits: Splits | None = None) -> TrainResult:
    """Train per `cfg` (or continue `resume`) and write the run directory; returns its metrics.
    Reads as: where -> data -> resolve (the plan) -> build and fit (either engine) -> write.

    `splits` lets a caller that trains several variants (compare) decode the data once.
    """
    ckpt, cfg, run_dir = resume_run(resume, overrides or {}) if resume else (None, cfg, RunDir.new(cfg.out, cfg).path)
    run = RunDir(run_dir)
    dist = distributed.setup(cfg)
    device = dist.device if dist.active else resolve_device(cfg.device)
    logger: Any = None
    if cfg.logger == "tensorboard" and dist.is_main and not cfg.speedrun:  # a missing package: refused now
        from imgclf.training.tensorboard import TensorBoardLogger

        logger = TensorBoardLogger(run_dir / "tensorboard")
    elif cfg.logger == "mlflow" and dist.is_main and not cfg.speedrun:  # so is an unreachable tracking store
        from imgclf.training.mlflow_logger import MLflowLogger

        logger = MLflowLogger(run_dir)
    seed_everything(cfg.seed)
    splits = checked_data(cfg, splits, ckpt, dist.is_main)
    cfg = planned(cfg, splits, device, fresh=ckpt is None, announce=dist.is_main and not cfg.quiet)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    started = time.perf_counter()
    if cfg.speedrun:  # whole epochs on the device: no per-batch loop, no callbacks
        from imgclf.training.speedrun import fit_speedrun

        fitted = fit_speedrun(cfg, splits, device, run)
    else:
        callbacks = run_callbacks(cfg, run, dist.is_main, logger) + (extra_callbacks or [])
        fitted = fit_loop(cfg, splits, device, dist, ckpt, run, callbacks)
    metrics, calibration = scored(fitted, splits, run, dist.is_main)
    metrics.update(fitted.figures)
    if dist.is_main:  # the delivered weights' checkpoint learns its temperature and validation curve
        stored = add_calibration([run.checkpoints / "best.pt", run.last_checkpoint], fitted.model.state_dict(),
                                 calibration)
        metrics["calibrated_checkpoints"] = [path.name for path in stored]
    metrics["skipped_files"] = skipped_summary(splits, metrics.pop("streamed_skipped", []))
    metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
    metrics["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    if dist.is_main:
        run.write_metrics(metrics)
        if hasattr(logger, "finish"):  # --logger mlflow: final scores, checkpoints and report as artifacts
            logger.finish(metrics)
    dist.teardown()
    return TrainResult(run_dir, metrics, fitted.model, fitted.history, fitted.config)


def fit_loop(cfg: TrainConfig, splits: Splits, device: torch.device, dist: Any, ckpt: dict[str, Any] | None,
             run: RunDir, callbacks: list[cb.Callback]) -> Fitted:
    """The Trainer engine: build (restored from `ckpt` when resuming), write the plan, fit, and hand back
    the weights best.pt delivers with the loop's own figures."""
    trainer, extra = build_trainer(cfg, splits, device, dist, ckpt, callbacks)
    if dist.is_main and not run.has_plan():  # a new run, or a resume moved by --out
        run.write_plan(trainer.config, splits.classes)
    trainer.fit()
    weights = deliver_best_weights(trainer, run)
    if trainer.stop_reason and not cfg.quiet and dist.is_main:
        print(f"imgclf: {trainer.stop_reason}", file=sys.stderr)
    cfg, amp_dtype = trainer.config, trainer.amp_dtype

    def logits(part: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        loader = eval_loader_for(cfg, part, device)
        scored_logits, labels = predict_logits(trainer.model, loader, amp_dtype=amp_dtype, tta=cfg.tta)
        plain = predict_logits(trainer.model, loader, amp_dtype=amp_dtype)[0] if cfg.tta else None
        return scored_logits, labels, plain

    images_seen = trainer.step * cfg.batch_size * cfg.accumulate
    figures: dict[str, Any] = {
        "best_epoch": trainer.best_epoch,
        "best_val_accuracy": trainer.best_val_acc,
        "monitor": cfg.monitor,
        "best_monitored": trainer.best_score,  # the best epoch's val_acc or val_macro_f1 (what best.pt holds)
        "epochs_run": trainer.epoch,
        "steps": trainer.step,
        "train_seconds": round(trainer.train_seconds, 3),
        "images_per_second": round(images_seen / max(trainer.train_seconds, 1e-9), 1),
        "stop_reason": trainer.stop_reason,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "weights": weights,  # which weights the final numbers (and the returned model) are: "raw" | "ema"
        "delivered_epoch": trainer.best_epoch or trainer.epoch,  # best.pt's: what the numbers describe
        "streamed_skipped": [name for loader in (trainer.train_loader, trainer.val_loader)
                             for name in getattr(loader, "unreadable", [])],
    }
    if extra.get("staged"):  # the head phase ran before the Trainer's clock: count it as training time
        figures["staged"] = extra["staged"]
        figures["train_seconds"] = round(figures["train_seconds"] + extra["staged"].get("seconds", 0.0), 3)
    return Fitted(trainer.model, trainer.config, logits, figures, trainer.history)


def checked_data(cfg: TrainConfig, splits: Splits | None, ckpt: dict[str, Any] | None, is_main: bool) -> Splits:
    """The run's splits (decoded unless a caller passes them), with what a user should know about them said
    once: exact duplicates across splits, classes that differ from a resumed checkpoint's, imbalance."""
    if splits is None:
        splits = load_data(cfg)
        if is_main:  # identical images in two splits or under two labels: one line, about 0.3 s on CIFAR
            from imgclf.evaluation.inspection import warn_exact_duplicates

            warn_exact_duplicates(splits, cfg.data)
    if ckpt is not None and ckpt["classes"] != splits.classes:
        raise UserError(f"the checkpoint was trained on classes {ckpt['classes'][:3]}..., the data has "
                        f"{splits.classes[:3]}...")
    if ckpt is None and is_main and (cfg.class_weights, cfg.sampler) == ("none", "shuffle") and not splits.multilabel:
        warning = imbalance_warning(splits.train.labels, splits.classes)
        if warning:
            print(warning, file=sys.stderr)
    return splits


def planned(cfg: TrainConfig, splits: Splits, device: torch.device, fresh: bool, announce: bool) -> TrainConfig:
    """config.resolve with this machine's measured training rate (a from-scratch CPU run under a budget sizes
    its net by it); a resumed config is already resolved and comes back unchanged."""
    cfg = resolve(cfg, splits, device,
                  measure=lambda c: training_rate(c, splits.train, len(splits.classes), device))
    if "threads" in cfg.extra and announce:
        print(f"imgclf: this CPU is busy with other work: training with {cfg.threads} thread(s), measured faster "
              f"here than all cores (ms by threads: {cfg.extra['threads']['ms_by_threads']}; --threads N to "
              "choose)", file=sys.stderr)
    if "sizing" in cfg.extra and fresh:
        seed_everything(cfg.seed)  # the probes drew random numbers: the run starts as an explicit --width would
        if announce:
            s = cfg.extra["sizing"]
            print(f"imgclf: sized for this CPU: width {s['width']} ({s['why']}; measured img/s by width: "
                  f"{s['images_per_second_by_width']})", file=sys.stderr)
    return cfg


def run_callbacks(cfg: TrainConfig, run: RunDir, is_main: bool, logger: cb.Callback | None) -> list[cb.Callback]:
    """The shipped callbacks a run's plan asks for (their `order` sets when each fires)."""
    callbacks: list[cb.Callback] = [cb.NaNGuard()]
    if cfg.time_budget:
        callbacks.append(cb.TimeBudget())
    if cfg.early_stop_patience:
        callbacks.append(cb.EarlyStopping(cfg.early_stop_patience, cfg.early_stop_min_delta))
    if is_main:
        # the per-step logs (written out by the Checkpointer just before each save: a resume trims what runs
        # ahead of last.pt), then the checkpoint, then history.csv, which never shows an epoch last.pt lacks
        logs = [cb.LRMonitor(run.path / "lr_schedule.csv"), *([logger] if logger else [])]
        every_steps, every_seconds = checkpoint_interval(cfg.checkpoint_every)
        callbacks += [*logs, cb.Checkpointer(run.checkpoints, every_steps, every_seconds,
                                             before_save=[log.write for log in logs]),
                      cb.HistoryCSV(run.path / "history.csv"), cb.ProgressBar(False if cfg.quiet else None)]
    return callbacks


def head_curve_val(cfg: TrainConfig, splits: Splits, device: torch.device) -> Any:
    """Validation batches that score the head phase's time-curve points: under a time budget (what compare
    runs), one label an image, at most HEAD_CURVE_VAL_IMAGES of them (a seeded subset); else None."""
    if not cfg.time_budget or cfg.task == "multilabel" or splits.val is None or not len(splits.val):
        return None
    val = splits.val
    if len(val) > HEAD_CURVE_VAL_IMAGES:
        val = val.take(np.random.default_rng(cfg.seed).permutation(len(val))[:HEAD_CURVE_VAL_IMAGES])
    return eval_loader_for(cfg, val, device)


def build_trainer(cfg: TrainConfig, splits: Splits, device: torch.device, dist: Any, ckpt: dict[str, Any] | None,
                  callbacks: list[cb.Callback]) -> tuple[Trainer, dict[str, Any]]:
    """Model, loaders, the staged head phase (fine-tuning), optimizer groups and the Trainer, restored from
    `ckpt` when resuming; also the checkpoint's extra entries (the evaluation view, the head phase's plan)."""
    amp_dtype = resolve_amp(cfg, device)
    model = model_for(cfg, len(splits.classes), device)
    train_loader = train_loader_for(cfg, splits.train, device)
    extra: dict[str, Any] = {"input_size": cfg.image_size, "preprocess": preprocess_for(cfg).to_dict()}
    if cfg.strategy == "staged":
        extra["staged"] = ckpt["staged"] if ckpt is not None else None
        if ckpt is None:
            # the clean view in a seeded random order: a head phase the budget cuts short still sees every class
            shuffled = splits.train.take(np.random.default_rng(cfg.seed).permutation(len(splits.train)))
            cfg, extra["staged"] = stage_head(model, cfg, eval_loader_for(cfg, shuffled, device), train_loader,
                                              len(splits.train), amp_dtype, announce=dist.is_main and not cfg.quiet,
                                              val=head_curve_val(cfg, splits, device))
    plan = plan_finetune(model, cfg)
    optimizer = build_optimizer(optimizer_groups(model, cfg, plan), cfg)
    train_model = dist.wrap(model, cfg, find_unused=plan is not None) if dist.active else model
    if cfg.compile:
        train_model = torch.compile(train_model)
    if dist.active:
        train_loader.shard(dist.rank, dist.world_size)
    head_seconds = (extra.get("staged") or {}).get("seconds", 0.0)  # ran before the Trainer's clock
    trainer = Trainer(model, cfg, train_loader, eval_loader_for(cfg, splits.val, device), optimizer=optimizer,
                      max_epochs=cfg.epochs or UNBOUNDED_EPOCHS, classes=splits.classes,
                      callbacks=([plan.callback] if plan is not None else []) + callbacks,
                      amp_dtype=amp_dtype, train_model=train_model, is_main=dist.is_main,
                      agree=dist.agree if dist.active else None, checkpoint_extra=extra,
                      # the head phase may have used it all (a slow CPU): then the top trains one batch
                      time_budget=max(cfg.time_budget - head_seconds, 1e-3) if cfg.time_budget else None,
                      criterion=criterion_for(cfg, splits.train.labels, len(splits.classes)).to(device))
    if ckpt is not None:
        if plan is not None:
            plan.prepare_resume(trainer, ckpt["trainer"]["epoch"])
        trainer.load_state_dict(ckpt)
    return trainer, extra


def deliver_best_weights(trainer: Trainer, run: RunDir) -> str:
    """After fit, the model holds what best.pt holds, so every figure the run reports (and the model it
    returns) is that of the weights it delivers: the best epoch's when a later one scored lower (a small photo
    set fine-tuned at a peak LR can fall 5 points and recover less), else the last epoch's, with --ema the
    averaged weights where they won. Returns "raw" or "ema"."""
    best = run.checkpoints / "best.pt"
    if trainer.best_epoch and trainer.best_epoch != trainer.epoch and best.is_file():
        saved = load_checkpoint(best)
        trainer.model.load_state_dict(saved["model"])
        return saved.get("weights", "raw")
    return trainer.adopt_better_weights()  # --ema: the averaged weights when they beat the raw ones


def training_rate(cfg: TrainConfig, data: Any, num_classes: int, device: torch.device) -> float:
    """Training images per second of a resolved `cfg` on this machine, loader included: the median of
    RATE_PROBE_STEPS timed steps after one untimed, on a throwaway model. The median, not the sum, so one step
    stalled by another process does not decide the width. A machine busy throughout still measures slow (on 2
    cores shared with two test runs, width 1.0 measured 123 img/s where it trains at about 2,700 alone)."""
    if cfg.threads:  # the count the run will train with (the plan decided it just before)
        torch.set_num_threads(cfg.threads)
    model = model_for(cfg, num_classes, device).train()
    optimizer = build_optimizer(decay_split(model.parameters(), cfg.lr, cfg.weight_decay), cfg)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype = resolve_amp(cfg, device)
    batches = endless(train_loader_for(cfg, data, device))
    rates = []
    for step in range(RATE_PROBE_STEPS + 1):
        tick = time.perf_counter()
        x, y = next(batches)
        plain_step(model, optimizer, criterion, x, y, amp_dtype)
        if step:
            rates.append(len(y) / max(time.perf_counter() - tick, 1e-9))
    return float(np.median(rates))


def scored(fitted: Fitted, splits: Splits, run: RunDir, is_main: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Val and test numbers of the delivered weights, the same for every engine; the logits are saved for the
    report (test is read only here). Also the calibration fitted on the val logits (evaluation.selective; for a
    multi-label run the per-class thresholds of evaluation.multilabel, at which both splits are scored): on
    the plain ones where the run scores with TTA, since predict and serve run without it unless asked."""
    cfg, model = fitted.config, fitted.model
    results: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    for name in ("val", "test"):
        part = getattr(splits, name)
        if part is None:
            results[name] = None
            continue
        logits, labels, plain = fitted.logits(part)
        if name == "val":
            fit = threshold_calibration if splits.multilabel else calibrate
            calibration = fit((logits if plain is None else plain).numpy(), labels.numpy())
        results[name] = summarize(logits, labels, splits.classes, calibration.get("thresholds"))
        if plain is not None:  # what the views added, measured rather than assumed
            results[name]["accuracy_without_tta"] = loss_and_accuracy(plain, labels)[1]
        if is_main:
            run.save_predictions(name, logits, labels)
    note = (calibration.get("selective") or {}).get("note")
    task = {"task": "multilabel", "thresholds": results["val"]["thresholds"],
            **{f"{name}_{key}": results[name][key] if results[name] else None for name in ("val", "test")
               for key in MULTILABEL_KEYS}} if splits.multilabel else {"task": "multiclass"}
    return {
        "val_accuracy": results["val"]["accuracy"],
        "test_accuracy": results["test"]["accuracy"] if results["test"] else None,
        **({f"{name}_accuracy_without_tta": results[name]["accuracy_without_tta"]
            for name in ("val", "test") if results[name]} if cfg.tta else {}),
        "val_loss": results["val"]["loss"],
        "test_loss": results["test"]["loss"] if results["test"] else None,
        "model": cfg.model,
        "num_params": sum(p.numel() for p in model.parameters()),
        "input_size": cfg.image_size,
        "device": str(next(model.parameters()).device),
        "tta": cfg.tta,
        "per_class_test_accuracy": results["test"]["per_class_accuracy"] if results["test"] else None,
        **{f"{name}_{key}": results[name][key] if results[name] else None for name in ("val", "test")
           for key in SCORE_KEYS},  # val_macro_f1, test_per_class, ...
        "temperature": calibration.get("temperature"),  # fitted on val; predict, serve and export divide logits by it
        **({"temperature_note": note} if note else {}),
        **task,  # multi-label: val_map, test_map, ... and the per-class thresholds chosen on val
    }, calibration
