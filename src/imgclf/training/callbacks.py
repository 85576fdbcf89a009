"""Callbacks: named hooks the Trainer calls (fit / epoch / batch, start and end), Lightning-style.

Each hook receives the Trainer; a callback stops training by setting `trainer.stop_reason`.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from imgclf.errors import TrainingDiverged
from imgclf.fileio import atomic_file

if TYPE_CHECKING:
    from imgclf.training.trainer import Trainer

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


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
            self.bar = tqdm(total=len(trainer.train_loader), desc=f"epoch {trainer.epoch + 1}", leave=False,
                            file=self.stream)

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
    return (f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} | lr {row['lr']:.2e} | {clock}")


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
        with atomic_file(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows({k: r[k] for k in HISTORY_FIELDS} for r in trainer.history)


class Checkpointer(Callback):
    """checkpoints/last.pt every epoch, best.pt whenever val accuracy improves; both atomic."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        state = trainer.state_dict()
        trainer.save(self.folder / "last.pt", state)
        if trainer.best_epoch == row["epoch"]:
            trainer.save(self.folder / "best.pt", state)


class EarlyStopping(Callback):
    """Stop when val accuracy has not improved by min_delta for `patience` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        accs = [r["val_acc"] for r in trainer.history]
        best_before = max(accs[:-self.patience], default=-math.inf)
        if len(accs) > self.patience and max(accs[-self.patience:]) < best_before + self.min_delta:
            trainer.stop_reason = f"early stop: no val-accuracy gain for {self.patience} epochs"


class LRMonitor(Callback):
    """Records the LR of every step (RUN_DIR/lr_schedule.csv) for the report's schedule plot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[tuple[int, float]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.path.is_file() and trainer.step > 0:  # resumed: keep the steps already taken
            with open(self.path) as f:
                self.rows = [(int(s), float(lr)) for s, lr in list(csv.reader(f))[1:] if int(s) < trainer.step]

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        self.rows.append((trainer.step, trainer.current_lr))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
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
