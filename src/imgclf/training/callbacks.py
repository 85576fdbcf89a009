"""Callbacks: named hooks the Trainer calls (fit / epoch / batch, start and end), Lightning-style.

Each hook receives the Trainer; a callback stops training by setting `trainer.stop_reason`.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from imgclf.errors import TrainingDiverged
from imgclf.fileio import atomic_file

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"]


class Callback:
    """No-op hooks; subclasses override what they need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: float) -> None: ...
    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


class ProgressBar(Callback):
    """Progress on stderr; off with --quiet. On a terminal a tqdm bar per epoch; elsewhere (a log file, a pipe,
    CI) one flushed line an epoch, since tqdm there would print nothing for minutes."""

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

    def __init__(self, run_dir: Path, stream: TextIO | None = None) -> None:
        self.run_dir, self.stream = run_dir, stream or sys.stderr

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main:
            print(f"imgclf: training; run directory: {self.run_dir}", file=self.stream, flush=True)


class HistoryCSV(Callback):
    """RUN_DIR/history.csv, rewritten whole each epoch from the trainer's history (so resume stays consistent)."""

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

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        accs = [r[trainer.monitor_key] for r in trainer.history]
        best_before = max(accs[:-self.patience], default=-math.inf)
        if len(accs) > self.patience and max(accs[-self.patience:]) < best_before + self.min_delta:
            trainer.stop_reason = f"early stop: no {trainer.monitor_key} gain for {self.patience} epochs"


class LRMonitor(Callback):
    """Records the LR of every step (RUN_DIR/lr_schedule.csv) for the report's schedule plot; the file is
    written by `write`, which the Checkpointer calls before each save (so it never falls behind last.pt)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[int, float]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.path.is_file() and trainer.step > 0:  # resumed: keep the steps already taken
            with open(self.path) as f:
                self.rows = [(int(s), float(lr)) for s, lr in list(csv.reader(f))[1:] if int(s) <= trainer.step]

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        self.rows.append((trainer.step, trainer.current_lr))

    def write(self) -> None:
        with atomic_file(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr"])
            writer.writerows(self.rows)


class NaNGuard(Callback):
    """Stops on a non-finite loss with a clear message; last.pt from the previous epoch is left untouched."""

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at epoch {trainer.epoch + 1}, step {trainer.step}; "
                                   "stopped. The last good checkpoint is kept; try a lower --lr or --grad-clip")


class TimeBudget(Callback):
    """Stops mid-epoch once the training seconds reach the trainer's budget; the run still evaluates and saves."""

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.time_budget and trainer.train_seconds >= trainer.time_budget:
            trainer.stop_reason = f"time budget of {trainer.config.time_budget:g}s reached"
