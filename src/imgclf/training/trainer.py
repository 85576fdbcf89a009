"""The Trainer: owns the loop (mixed precision, clipping, schedule, time budget) and its resumable state.

What a run adds to the plain step (--mixup / --cutmix, --low-res, --ema, and any callback of the caller's) hooks
into the loop's ordered events (imgclf.training.callbacks); --accumulate is the step's strategy
(imgclf.training.accumulation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.defaults import NOMINAL_BUDGET_EPOCHS
from imgclf.errors import UserError
from imgclf.evaluation.metrics import (
    exact_matches,
    loss_and_accuracy,
    macro_f1,
    mean_average_precision,
    predict_logits,
)
from imgclf.models.checkpoint import checkpoint_payload
from imgclf.runtime import autocast
from imgclf.training.accumulation import Batch, GradientAccumulation
from imgclf.training.callbacks import Callback
from imgclf.training.checkpoint import FORMAT, rng_state, save_atomic, set_rng_state
from imgclf.training.ema import WeightEMA
from imgclf.training.losses import criterion_for
from imgclf.training.low_res import LowRes
from imgclf.training.mixing import batch_mixer, dominant_labels
from imgclf.training.schedules import lr_multiplier

MONITORED = {"val_acc": "val_acc", "macro_f1": "val_macro_f1", "map": "val_map"}  # --monitor -> its history column


class Trainer:
    """Runs epochs of `train_loader`, validates on `val_loader`, and fires the events of
    imgclf.training.callbacks (in their documented order) to `callbacks` plus those the config asks for
    (--mixup / --cutmix, --low-res, --ema), all sorted once by `order`.

    The LR of every optimizer group is its `peak_lr` times the schedule at the current progress, so a
    resumed run (same step, same seconds) continues the schedule exactly.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_loader: Any, val_loader: Any, *,
                 optimizer: torch.optim.Optimizer, max_epochs: int, classes: list[str],
                 callbacks: list[Callback] | None = None, amp_dtype: torch.dtype | None = None,
                 train_model: nn.Module | None = None, is_main: bool = True,
                 agree: Callable[[float, bool], tuple[float, bool]] | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, time_budget: float | None = None,
                 criterion: nn.Module | None = None) -> None:
        self.model = model  # the plain module: what checkpoints hold
        self.train_model = train_model or model  # what the loop calls (compiled or DDP-wrapped)
        self.config, self.train_loader, self.val_loader = config, train_loader, val_loader
        self.optimizer, self.max_epochs, self.classes = optimizer, max_epochs, classes
        self.amp_dtype = amp_dtype
        use_scaler = amp_dtype == torch.float16 and next(model.parameters()).device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # run.py passes the loss built from the training labels (class weights need them)
        self.criterion = criterion if criterion is not None else criterion_for(config)
        self.accumulation = GradientAccumulation(config.accumulate)
        self.ema = WeightEMA(model, config.ema) if config.ema else None
        own = [batch_mixer(config, len(classes)), LowRes(config.low_res) if config.low_res else None, self.ema]
        self.callbacks = sorted([c for c in own if c is not None] + list(callbacks or []), key=lambda c: c.order)
        self.best_weights = "raw"  # which weights won the best epoch: "raw", or "ema" (best.pt holds them)
        self.is_main = is_main
        self.agree = agree  # DDP: ranks agree on the clock and on stopping after every step
        self.checkpoint_extra = checkpoint_extra or {}
        # seconds this loop may train: the config's budget less what ran before it (a staged head phase)
        self.time_budget = time_budget if time_budget is not None else config.time_budget
        for group in optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
        self.epoch = 0  # the next epoch to run (0-based)
        self.step = 0
        # inside an epoch: its batches done and their (loss sum, correct, seen), which a mid-epoch checkpoint
        # holds so that a resume runs only the rest of the epoch and its history row comes out the same
        self.batch = 0
        self.epoch_sums: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.best_val_acc = -1.0  # val accuracy of the best epoch
        self.best_epoch = 0
        self.monitor_key = MONITORED[config.monitor]
        self.best_score = -1.0  # the best epoch's value of the monitored column (val_acc, val_macro_f1, val_map)
        self.stop_reason: str | None = None
        self.current_lr = optimizer.param_groups[-1]["lr"]
        # during a step: the batch (inputs, targets) going into the forward pass, its output and loss, which the
        # events on_forward_start and on_loss let callbacks read and replace
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self._check_state_keys()

    # -- the loop ----------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        self._call("on_fit_start")
        while self.epoch < self.max_epochs and self.stop_reason is None:
            self.train_loader.set_epoch(self.epoch, start=self.batch)
            self._call("on_epoch_start")
            train_loss, train_acc = self._train_epoch()
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                   **self.validate(self.model),
                   "lr": float(f"{self.current_lr:.6g}"), "seconds": round(self.train_seconds, 3)}
            self._call("on_validation_end", row)  # --ema: the averaged weights' columns
            self.history.append(row)
            weights = self.better_weights(row)
            suffix = "_ema" if weights == "ema" else ""
            # a later epoch that ties the best replaces it: the schedule has annealed further, and on a validation
            # set of 100 photos ties are common (flowers5, Lite2: val 0.90 at epochs 2-5 and epoch 2 tested 92.4 %;
            # the earlier code delivered the last epoch, and its run in the same sitting tested 96.0 %)
            if row[self.monitor_key + suffix] >= self.best_score:
                self.best_score, self.best_val_acc = row[self.monitor_key + suffix], row["val_acc" + suffix]
                self.best_epoch, self.best_weights = self.epoch, weights
            self._call("on_epoch_end", row)
        self._call("on_fit_end")
        return self.history

    def validate(self, model: nn.Module, suffix: str = "") -> dict[str, float]:
        """Val loss, accuracy and macro F1 (and mAP, multi-label) of `model` as history columns (names + `suffix`)."""
        logits, labels = predict_logits(model, self.val_loader, amp_dtype=self.amp_dtype)
        loss, acc = loss_and_accuracy(logits, labels)  # multi-label: binary cross-entropy, exact match at 0.5
        row = {f"val_loss{suffix}": round(loss, 6), f"val_acc{suffix}": round(acc, 6),
               f"val_macro_f1{suffix}": round(macro_f1(logits, labels), 6)}  # milliseconds: always recorded
        if labels.ndim == 2:  # multi-label: mean average precision, what best.pt selects on by default
            row[f"val_map{suffix}"] = round(mean_average_precision(logits, labels), 6)
        return row

    def _train_epoch(self) -> tuple[float, float]:
        self.train_model.train()
        device = next(self.model.parameters()).device
        total_loss, correct, seen = self._resumed_sums(device)
        tick = time.perf_counter()
        for group in self.accumulation.groups(self.train_loader):
            self._call("on_batch_start")
            self._set_lr()
            step_loss, step_correct, step_seen = self._step(group, device)
            self.step += 1
            loss_value = (step_loss / max(step_seen, 1)).item()
            total_loss += step_loss
            correct += step_correct
            seen += step_seen
            self.batch, self.epoch_sums = self.batch + len(group), (total_loss, correct, seen)
            now = time.perf_counter()
            self.train_seconds += now - tick
            tick = now
            self._call("on_batch_end", loss_value)
            if self.agree is not None:
                self.train_seconds, stop = self.agree(self.train_seconds, self.stop_reason is not None)
                if stop and self.stop_reason is None:
                    self.stop_reason = "another rank stopped"
            if self.stop_reason is not None:
                break
        self.batch, self.epoch_sums = 0, None
        return (total_loss / max(seen, 1)).item(), (correct.float() / max(seen, 1)).item()

    def _step(self, group: list[Batch], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer step over a group of batches (see GradientAccumulation): for each batch, forward under
        autocast, loss, backward; then clip and step. Returns the step's loss sum, correct count (against each
        mixed target's dominant class) and number of images."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for i, (self.x, self.y) in enumerate(group):
            self._call("on_forward_start")  # --mixup / --cutmix, then --low-res
            with self.accumulation.sync(self.train_model, last=i == len(group) - 1):
                with autocast(device, self.amp_dtype):
                    self.out = self.train_model(self.x)
                    self.loss = self.criterion(self.out, self.y)
                self._call("on_loss")
                self.scaler.scale(self.loss / len(group)).backward()  # the group's sum: the mean of them all
            loss_sum += self.loss.detach() * len(self.y)
            correct += (exact_matches(self.out, self.y).sum() if self.config.task == "multilabel"
                        else (self.out.argmax(1) == dominant_labels(self.y)).sum())
            seen += len(self.y)
        self.x = self.y = self.out = self.loss = None
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._call("on_step_end")  # --ema
        return loss_sum, correct, seen

    def _resumed_sums(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The epoch's running (loss sum, correct, seen): zeros, or what a mid-epoch checkpoint held."""
        if self.epoch_sums is None:
            return torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
        loss_sum, correct, seen = self.epoch_sums
        return loss_sum.to(device), correct.to(device), seen

    def progress(self) -> float:
        """Share of training done: by steps, or by seconds when a time budget is set (whichever is further)."""
        total_steps = max(1, self.max_epochs * self.accumulation.steps(len(self.train_loader)))
        by_steps = self.step / total_steps
        if self.time_budget:
            return max(by_steps, self.train_seconds / self.time_budget)
        return by_steps

    def _set_lr(self) -> None:
        factor = lr_multiplier(self.config.schedule, self.progress(), self._warmup_share())
        for group in self.optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        self.current_lr = self.optimizer.param_groups[-1]["lr"]

    def _warmup_share(self) -> float:
        if not self.config.warmup_epochs:
            return 0.0
        if self.time_budget and self.config.epochs is None:  # epochs unknown in advance: a share of time
            return min(0.5, self.config.warmup_epochs / NOMINAL_BUDGET_EPOCHS)
        return min(0.5, self.config.warmup_epochs / self.max_epochs)

    def _call(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def _stateful(self) -> list[Callback]:
        return [c for c in self.callbacks if c.state_key is not None]

    def _check_state_keys(self) -> None:
        """Each stateful callback's state is a top-level entry of the checkpoint: no two may share a key, nor
        take one of the trainer's own."""
        taken = {"format", "model", "optimizer", "scaler", "rng", "config", "classes", "trainer", "best_weights",
                 "raw_model", "weights", *self.checkpoint_extra}
        for callback in self._stateful():
            if callback.state_key in taken:
                raise ValueError(f"{type(callback).__name__}.state_key {callback.state_key!r} is already a "
                                 "checkpoint entry")
            taken.add(callback.state_key)

    # -- state ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.checkpoint_extra.items() if k not in ("input_size", "preprocess")}
        return checkpoint_payload(
            self.model.state_dict(), self.config, self.classes, self.checkpoint_extra.get("preprocess"),
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(),
            trainer= {"epoch": self.epoch, "step": self.step, "train_seconds": self.train_seconds,
                            "history": list(self.history), "best_val_acc": self.best_val_acc,
                            "best_epoch": self.best_epoch, "best_score": self.best_score, "batch": self.batch,
                            "epoch_sums": None if self.epoch_sums is None
                            else [s.to("cpu", copy=True) for s in self.epoch_sums[:2]] + [self.epoch_sums[2]]},
            **({"best_weights": self.best_weights} if self.ema else {}),
            **{c.state_key: c.state_dict() for c in self._stateful()},  # --ema's under "ema"
            **extra)

    def better_weights(self, row: dict[str, Any]) -> str:
        """"ema" when the averaged weights beat the raw ones on the monitored column of an epoch's row."""
        return "ema" if row.get(self.monitor_key + "_ema", -1.0) > row[self.monitor_key] else "raw"

    def best_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """best.pt from the best epoch's `state`: its `model` (what evaluate, predict, serve and export load) is
        the weights that won, named in "weights"; when the EMA won, the raw ones stay as "raw_model", so a
        resume from best.pt continues exactly."""
        if self.best_weights == "raw":
            return {**state, "weights": "raw"}
        return {**state, "model": self.ema.module.state_dict(), "raw_model": state["model"], "weights": "ema"}

    def adopt_better_weights(self) -> str:
        """After fit: load the EMA weights into the model when they beat the raw ones in the last epoch (the
        final evaluation, predictions and the returned model then use them); returns "ema" or "raw"."""
        if self.ema is None or not self.history or self.better_weights(self.history[-1]) == "raw":
            return "raw"
        self.model.load_state_dict(self.ema.module.state_dict())
        return "ema"

    def save(self, path: Path, state: dict[str, Any] | None = None) -> None:
        if self.is_main:
            save_atomic(state or self.state_dict(), path)

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off (weights, optimizer, scaler, RNG, counters, and the
        state of every stateful callback)."""
        if ckpt.get("format") != FORMAT:
            raise UserError(f"this checkpoint was written by an older imgclf ({ckpt.get('format')}, this one writes "
                            f"{FORMAT}): its weights still evaluate, predict, serve and export, but its training "
                            "cannot be resumed; start a new run")
        missing = [f"{c.state_key} ({type(c).__name__})" for c in self._stateful() if c.state_key not in ckpt]
        if missing:
            raise UserError(f"the checkpoint holds no state for {', '.join(missing)}: it was written by a run "
                            "without that callback, so it cannot continue with it")
        self.model.load_state_dict(ckpt.get("raw_model", ckpt["model"]))  # best.pt whose EMA won holds both
        for callback in self._stateful():
            callback.load_state_dict(ckpt[callback.state_key])
        if self.ema is not None:
            self.best_weights = ckpt["best_weights"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        t = ckpt["trainer"]
        self.epoch, self.step, self.train_seconds = t["epoch"], t["step"], t["train_seconds"]
        self.history = list(t["history"])
        self.best_val_acc, self.best_epoch = t["best_val_acc"], t["best_epoch"]
        self.best_score = t.get("best_score", t["best_val_acc"])  # older checkpoints monitored val_acc
        self.batch = t.get("batch", 0)  # checkpoints from before mid-epoch saves were all at an epoch's end
        self.epoch_sums = tuple(t["epoch_sums"]) if t.get("epoch_sums") is not None else None
