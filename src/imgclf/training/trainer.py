"""The Trainer: owns the loop (mixed precision, clipping, schedule, time budget) and its resumable state."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.evaluation.metrics import loss_and_accuracy, predict_logits
from imgclf.runtime import autocast
from imgclf.training.callbacks import Callback
from imgclf.training.checkpoint import FORMAT, rng_state, save_atomic, set_rng_state
from imgclf.training.schedules import lr_multiplier


class Trainer:
    """Runs epochs of `train_loader`, validates on `val_loader`, and calls the callbacks' hooks.

    The LR of every optimizer group is its `peak_lr` times the schedule at the current progress, so a
    resumed run (same step, same seconds) continues the schedule exactly.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_loader: Any, val_loader: Any, *,
                 optimizer: torch.optim.Optimizer, max_epochs: int, classes: list[str],
                 callbacks: list[Callback] | None = None, amp_dtype: torch.dtype | None = None,
                 train_model: nn.Module | None = None, is_main: bool = True,
                 agree: Callable[[float, bool], tuple[float, bool]] | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, time_budget: float | None = None) -> None:
        self.model = model  # the plain module: what checkpoints hold
        self.train_model = train_model or model  # what the loop calls (compiled or DDP-wrapped)
        self.config, self.train_loader, self.val_loader = config, train_loader, val_loader
        self.optimizer, self.max_epochs, self.classes = optimizer, max_epochs, classes
        self.callbacks = callbacks or []
        self.amp_dtype = amp_dtype
        use_scaler = amp_dtype == torch.float16 and next(model.parameters()).device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.is_main = is_main
        self.agree = agree  # DDP: ranks agree on the clock and on stopping after every step
        self.checkpoint_extra = checkpoint_extra or {}
        # seconds this loop may train: the config's budget less what ran before it (a staged head phase)
        self.time_budget = time_budget if time_budget is not None else config.time_budget
        for group in optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
        self.epoch = 0  # the next epoch to run (0-based)
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.stop_reason: str | None = None
        self.current_lr = optimizer.param_groups[-1]["lr"]

    # -- the loop ----------------------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        self._call("on_fit_start")
        while self.epoch < self.max_epochs and self.stop_reason is None:
            self.train_loader.set_epoch(self.epoch)
            self._call("on_epoch_start")
            train_loss, train_acc = self._train_epoch()
            val_loss, val_acc = loss_and_accuracy(*predict_logits(self.model, self.val_loader,
                                                                  amp_dtype=self.amp_dtype))
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                   "val_loss": round(val_loss, 6), "val_acc": round(val_acc, 6),
                   "lr": float(f"{self.current_lr:.6g}"), "seconds": round(self.train_seconds, 3)}
            self.history.append(row)
            if val_acc > self.best_val_acc:
                self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self._call("on_epoch_end", row)
        self._call("on_fit_end")
        return self.history

    def _train_epoch(self) -> tuple[float, float]:
        self.train_model.train()
        device = next(self.model.parameters()).device
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        tick = time.perf_counter()
        for x, y in self.train_loader:
            self._call("on_batch_start")
            self._set_lr()
            with autocast(device, self.amp_dtype):
                out = self.train_model(x)
                loss = self.criterion(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            loss_value = loss.item()
            total_loss += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
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
        return (total_loss / max(seen, 1)).item(), (correct.float() / max(seen, 1)).item()

    def progress(self) -> float:
        """Share of training done: by steps, or by seconds when a time budget is set (whichever is further)."""
        total_steps = max(1, self.max_epochs * len(self.train_loader))
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
            return min(0.5, self.config.warmup_epochs / 10)
        return min(0.5, self.config.warmup_epochs / self.max_epochs)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- state ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "config": self.config.to_dict(),
                "classes": self.classes,
                "trainer": {"epoch": self.epoch, "step": self.step, "train_seconds": self.train_seconds,
                            "history": list(self.history), "best_val_acc": self.best_val_acc,
                            "best_epoch": self.best_epoch},
                **self.checkpoint_extra}

    def save(self, path: Path, state: dict[str, Any] | None = None) -> None:
        if self.is_main:
            save_atomic(state or self.state_dict(), path)

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off (weights, optimizer, scaler, RNG, counters)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        t = ckpt["trainer"]
        self.epoch, self.step, self.train_seconds = t["epoch"], t["step"], t["train_seconds"]
        self.history = list(t["history"])
        self.best_val_acc, self.best_epoch = t["best_val_acc"], t["best_epoch"]
