"""Callbacks: the Trainer's events, fired in a fixed order to every callback sorted by its `order`.

One run fires (indented: inside the line above; a step is one optimizer step, --accumulate loader batches):

    on_fit_start
      on_epoch_start                    (each epoch)
        on_batch_start                  (each step, before its LR is set)
          on_forward_start              (each loader batch of the step: trainer.x, trainer.y may be replaced)
          on_loss                       (its trainer.out and trainer.loss, before backward)
        on_step_end                     (after clipping and the optimizer step: the weights are new)
        on_batch_end(loss)              (counters updated: trainer.step, trainer.batch, trainer.train_seconds)
      on_validation_end(row)            (the epoch's history row, before it is recorded: add columns to it)
      on_epoch_end(row)                 (recorded, and the best epoch chosen)
    on_fit_end

Every hook receives the Trainer (typed by a TYPE_CHECKING-only import: this module never imports the
trainer); a callback stops training by setting `trainer.stop_reason`. At each event callbacks run by
ascending `order` (the Trainer sorts them once; equal orders keep the order they were given in). A stateful
callback names its entry in the checkpoint (`state_key`) and defines `state_dict` / `load_state_dict`:
checkpoints hold that state and a resume restores it.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tqdm import tqdm

from imgclf.errors import TrainingDiverged
from imgclf.fileio import atomic_file

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"]

# Callback.order of the shipped callbacks (lower runs first at every event)
INPUTS = 10  # change a batch before its forward pass: --mixup / --cutmix (10), then --low-res (11)
WEIGHTS = 20  # --ema: averages the weights after each step, scores them after each validation
GUARDS = 40  # NaNGuard, TimeBudget, EarlyStopping: decide to stop before anything is saved
LOGS = 50  # LRMonitor, TensorBoardLogger: record a step before the checkpoint that must hold it
CHECKPOINT = 60  # Checkpointer
HISTORY = 70  # HistoryCSV: never shows an epoch that last.pt lacks
PROGRESS = 80  # ProgressBar, AnnounceRunDir
# any other callback (the fine-tuning plan's, a caller's extra_callbacks): after those above, so it sees what they
# saved and logged; equal orders keep the order of the list run.py builds (the plan's first)
DEFAULT_ORDER = 100


class Callback:
    """No-op hooks, one per event (see the module docstring for their order); subclasses override what they
    need. `order` places a callback among the others; `state_key` (with `state_dict`, `load_state_dict`)
    makes it stateful: its state is saved in every checkpoint under that key and restored on resume."""

    order: int = DEFAULT_ORDER
    state_key: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_start(self, trainer: Trainer) -> None: ...
    def on_forward_start(self, trainer: Trainer) -> None: ...
    def on_loss(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: float) -> None: ...
    def on_validation_end(self, trainer: Trainer, row: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs (tensors and plain containers: checkpoints load with weights_only=True)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ProgressBar(Callback):
    """Progress on stderr; off with --quiet. On a terminal a tqdm bar per epoch; elsewhere (a log file, a pipe,
    CI) one flushed line an epoch, since tqdm there would print nothing for minutes."""

    order = PROGRESS

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.enabled = True if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.bars = self.enabled and self.stream.isatty()
        self.bar: tqdm | None = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.bars:
            self.bar = tqdm(total=len(trainer.train_loader), initial=trainer.batch, desc=f"epoch {trainer.epoch + 1}",
                            leave=False, file=self.stream)

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{trainer.current_lr:.2e}")

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled:
            tqdm.write(epoch_line(trainer, row), file=self.stream)
            self.stream.flush()


def epoch_line(trainer: Trainer, row: dict[str, Any]) -> str:
    """One epoch in one line: how far (of the epochs or the time budget), losses, accuracies, training time."""
    cfg = trainer.config
    of = f"/{cfg.epochs}" if cfg.epochs else ""
    clock = f"{row['seconds']:.1f}s" + (f" of {trainer.time_budget:g}s" if trainer.time_budget else "")
    dominant = " (dominant class of the mix)" if cfg.mixup or cfg.cutmix else ""
    ema = f" | ema val loss {row['val_loss_ema']:.4f} acc {row['val_acc_ema']:.4f}" if "val_acc_ema" in row else ""
    return (f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}{dominant} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{ema} | lr {row['lr']:.2e} | {clock}")


class AnnounceRunDir(Callback):
    """Says where the run is written once training starts (after its inputs were checked), on rank 0 only."""

    order = PROGRESS

    def __init__(self, run_dir: Path, stream: TextIO | None = None) -> None:
        self.run_dir, self.stream = run_dir, stream or sys.stderr

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main:
            print(f"imgclf: training; run directory: {self.run_dir}", file=self.stream, flush=True)


class HistoryCSV(Callback):
    """RUN_DIR/history.csv, rewritten whole each epoch from the trainer's history (so resume stays consistent)."""

    order = HISTORY

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        # then the columns only some runs have (--ema: val_loss_ema, val_acc_ema, val_macro_f1_ema)
        fields = HISTORY_FIELDS + [k for k in row if k not in HISTORY_FIELDS]
        with atomic_file(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            # rows resumed from a checkpoint written before a column existed leave it blank
            writer.writerows({k: r.get(k, "") for k in fields} for r in trainer.history)


class Checkpointer(Callback):
    """checkpoints/last.pt every epoch, best.pt whenever val accuracy improves; both atomic.

    With `every_steps` or `every_seconds` (--checkpoint-every) last.pt is also written inside an epoch, holding
    the position in it (Trainer.batch), so a kill loses at most that much training. `before_save` writes the
    per-step files (lr_schedule.csv, TensorBoard events) first: a resume trims what runs ahead of last.pt, but
    nothing could fill a gap behind it.
    """

    order = CHECKPOINT

    def __init__(self, folder: Path, every_steps: int | None = None, every_seconds: float | None = None,
                 before_save: Sequence[Callable[[], None]] = ()) -> None:
        self.folder = folder
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.before_save = list(before_save)
        self.saved_at = time.monotonic()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.saved_at = time.monotonic()

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.stop_reason is not None or trainer.batch >= len(trainer.train_loader):
            return  # the epoch ends here and saves at its end
        if ((self.every_steps and trainer.step % self.every_steps == 0)
                or (self.every_seconds and time.monotonic() - self.saved_at >= self.every_seconds)):
            self._save_last(trainer)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        state = self._save_last(trainer)
        if trainer.best_epoch == row["epoch"]:
            trainer.save(self.folder / "best.pt", trainer.best_state(state))

    def _save_last(self, trainer: Trainer) -> dict[str, Any]:
        for write in self.before_save:
            write()
        state = trainer.state_dict()
        trainer.save(self.folder / "last.pt", state)
        self.saved_at = time.monotonic()
        return state


class EarlyStopping(Callback):
    """Stop when the monitored value (val accuracy, or macro F1 with --monitor macro_f1) has not improved by
    min_delta for `patience` epochs."""

    order = GUARDS

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        accs = [r[trainer.monitor_key] for r in trainer.history]
        best_before = max(accs[:-self.patience], default=-math.inf)
        if len(accs) > self.patience and max(accs[-self.patience:]) < best_before + self.min_delta:
            trainer.stop_reason = f"early stop: no {trainer.monitor_key} gain for {self.patience} epochs"


class LRMonitor(Callback):
    """Records the LR of every step (RUN_DIR/lr_schedule.csv) for the report's schedule plot; the file is
    written by `write`, which the Checkpointer calls before each save (so it never falls behind last.pt).
    Stateful: every checkpoint holds the steps recorded so far, so a resume continues exactly those (not the
    file, which may run ahead of the checkpoint, or be absent in a run directory moved by --out)."""

    order = LOGS
    state_key = "lr_schedule"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[int, float]] = []

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        self.rows.append((trainer.step, trainer.current_lr))

    def state_dict(self) -> dict[str, Any]:
        # float64 holds a Python float exactly, so lr_schedule.csv comes out the same after a resume
        return {"step": torch.tensor([step for step, _ in self.rows], dtype=torch.int64),
                "lr": torch.tensor([lr for _, lr in self.rows], dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(zip(state["step"].tolist(), state["lr"].tolist(), strict=True))

    def write(self) -> None:
        with atomic_file(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr"])
            writer.writerows(self.rows)


class NaNGuard(Callback):
    """Stops on a non-finite loss with a clear message; last.pt from the previous epoch is left untouched."""

    order = GUARDS

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at epoch {trainer.epoch + 1}, step {trainer.step}; "
                                   "stopped. The last good checkpoint is kept; try a lower --lr or --grad-clip")


class TimeBudget(Callback):
    """Stops mid-epoch once the training seconds reach the trainer's budget; the run still evaluates and saves."""

    order = GUARDS

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.time_budget and trainer.train_seconds >= trainer.time_budget:
            trainer.stop_reason = f"time budget of {trainer.config.time_budget:g}s reached"
