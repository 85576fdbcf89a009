"""Mini-batch training: shuffled batches, a learning-rate schedule, per-epoch history, early stopping.

Schedules are functions of training progress in [0, 1] rather than of the epoch number, so the same
cosine curve anneals to zero whether the run ends by epoch count or by a time budget (progress is the
larger of the step fraction and the elapsed fraction of the budget).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from imgclf.numpy_nn.losses import Loss
from imgclf.numpy_nn.model import Sequential
from imgclf.numpy_nn.optimizers import Optimizer

Schedule = Callable[[float], float]  # progress in [0, 1] -> multiplier of the base learning rate
Transform = Callable[[np.ndarray], np.ndarray]  # a raw batch (for example uint8 images) -> network input

clock = time.perf_counter  # wall clock of the time budget; a module attribute so tests can drive it

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def constant_schedule() -> Schedule:
    return lambda progress: 1.0


def cosine_schedule(warmup: float = 0.0, final: float = 0.0) -> Schedule:
    """Linear warm-up over the first `warmup` fraction, then half a cosine down to `final`."""

    def f(progress: float) -> float:
        if warmup > 0 and progress < warmup:
            return (progress + 1e-3) / (warmup + 1e-3)
        t = min(max((progress - warmup) / max(1.0 - warmup, 1e-12), 0.0), 1.0)
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def step_schedule(milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1) -> Schedule:
    """Multiply by `gamma` at each milestone (fractions of training)."""
    return lambda progress: gamma ** sum(progress >= m for m in milestones)


SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "cosine": cosine_schedule, "step": step_schedule, "constant": constant_schedule,
}


def make_schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]()
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}") from None


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Index arrays covering range(n) once; shuffled when an rng is given (a fresh order every epoch)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def predict_logits(model: Sequential, x: np.ndarray, batch_size: int = 512,
                   transform: Transform | None = None) -> np.ndarray:
    """Eval-mode outputs for all of x, in batches (restores the model's previous mode)."""
    transform = transform or _identity
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model.forward(transform(x[idx])) for idx in batches(len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: Sequential, loss: Loss, x: np.ndarray, y: np.ndarray, batch_size: int = 512,
             transform: Transform | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode."""
    logits = predict_logits(model, x, batch_size, transform)
    return loss.forward(logits, y), float(np.mean(logits.argmax(axis=1) == y))


@dataclass
class FitResult:
    """What a training run produced; the model itself holds the best weights afterwards."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    epochs_run: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # CPU time of the process while training: tells a busy machine apart
    images_seen: int = 0
    stop_reason: str = "epochs"  # epochs | early_stop | time_budget

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class _Pacer:
    """Maps training progress to the learning rate and says when the time budget is spent.

    Progress is the step fraction, or the elapsed fraction of the budget when that is larger, so the
    schedule anneals in time whether the run ends by epoch count or by the budget.
    """

    schedule: Schedule
    base_lr: float
    total_steps: int
    time_budget: float | None
    step: int = 0  # optimizer steps taken so far, across epochs

    def out_of_time(self, elapsed: float) -> bool:
        return self.time_budget is not None and elapsed >= self.time_budget

    def lr(self, elapsed: float) -> float:
        progress = self.step / self.total_steps
        if self.time_budget:
            progress = max(progress, elapsed / self.time_budget)
        return self.base_lr * self.schedule(min(progress, 1.0))


@dataclass
class _EpochTally:
    """Running totals of one epoch's training batches, so the history row needs no second pass over the data."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    out_of_time: bool = False  # the budget ran out mid-epoch

    def history_row(self, epoch: int, lr: float, seconds: float) -> dict[str, float]:
        """The epoch's row of HISTORY_FIELDS; validation columns stay NaN until (unless) it is evaluated."""
        return {"epoch": epoch, "train_loss": self.loss_sum / self.seen, "train_acc": self.correct / self.seen,
                "val_loss": math.nan, "val_acc": math.nan, "lr": lr, "seconds": seconds}


@dataclass
class _BestEpoch:
    """The best validation scores so far and a copy of their weights, restored when training ends."""

    acc: float = -math.inf
    loss: float = math.inf
    state: dict[str, np.ndarray] | None = None

    def update(self, row: dict[str, float], min_delta: float, model: Sequential) -> bool:
        """Keep this epoch if val accuracy beat the best by more than `min_delta` (or tied it with lower loss)."""
        improved = row["val_acc"] > self.acc + min_delta or (row["val_acc"] >= self.acc and row["val_loss"] < self.loss)
        if improved:
            self.acc, self.loss = row["val_acc"], row["val_loss"]
            self.state = model.state_dict()
        return improved


def _train_epoch(model: Sequential, loss: Loss, optimizer: Optimizer, pacer: _Pacer, x_train: np.ndarray,
                 y_train: np.ndarray, batch_size: int, rng: np.random.Generator, transform: Transform,
                 result: FitResult) -> _EpochTally:
    """One shuffled pass of optimizer steps, checking the budget before every step; adds its time to `result`.

    The clock is read once per step plus once at each end of the epoch (tests drive the budget by that count).
    """
    model.train()
    start = clock()
    cpu_start = time.process_time()
    tally = _EpochTally()
    for idx in batches(len(y_train), batch_size, rng):
        elapsed = result.train_seconds + clock() - start
        if pacer.out_of_time(elapsed):
            tally.out_of_time = True
            break
        optimizer.lr = pacer.lr(elapsed)
        xb, yb = transform(x_train[idx]), y_train[idx]
        logits = model.forward(xb)
        batch_loss = loss.forward(logits, yb)
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
        pacer.step += 1
        tally.loss_sum += batch_loss * len(idx)
        tally.correct += int(np.sum(logits.argmax(axis=1) == yb))
        tally.seen += len(idx)
    result.train_seconds += clock() - start
    result.train_cpu_seconds += time.process_time() - cpu_start
    return tally


def fit(model: Sequential, loss: Loss, optimizer: Optimizer, x_train: np.ndarray, y_train: np.ndarray,
        x_val: np.ndarray | None = None, y_val: np.ndarray | None = None, *, epochs: int = 10,
        batch_size: int = 64, schedule: Schedule | str = "cosine", patience: int | None = None,
        min_delta: float = 0.0, time_budget: float | None = None, seed: int = 0,
        transform: Transform | None = None, eval_batch_size: int = 512,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train with shuffled mini-batches; keep (and finally restore) the weights of the best validation epoch.

    Early stopping: stop once `patience` epochs pass without the validation accuracy improving by more
    than `min_delta` (equal accuracy with lower loss also counts). `time_budget` bounds training seconds
    (evaluation excluded) and is checked every step, so a slow epoch cannot overshoot it by much.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    schedule_fn = make_schedule(schedule) if isinstance(schedule, str) else schedule
    transform = transform or _identity
    rng = np.random.default_rng(seed)
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    pacer = _Pacer(schedule_fn, optimizer.lr, epochs * math.ceil(len(y_train) / batch_size), time_budget)

    result, best = FitResult(), _BestEpoch()
    for epoch in range(1, epochs + 1):
        tally = _train_epoch(model, loss, optimizer, pacer, x_train, y_train, batch_size, rng, transform, result)
        if tally.seen == 0:  # the budget ran out before this epoch took a step
            result.stop_reason = "time_budget"
            break
        result.images_seen += tally.seen
        result.epochs_run = epoch
        row = tally.history_row(epoch, optimizer.lr, result.train_seconds)
        if has_val:
            row["val_loss"], row["val_acc"] = evaluate(model, loss, x_val, y_val, eval_batch_size, transform)
            if best.update(row, min_delta, model):
                result.best_epoch = epoch
        else:
            result.best_epoch = epoch
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if tally.out_of_time:
            result.stop_reason = "time_budget"
            break
        if has_val and patience and epoch - result.best_epoch >= patience:
            result.stop_reason = "early_stop"
            break
    if best.state is not None:
        model.load_state_dict(best.state)
        result.best_val_accuracy, result.best_val_loss = best.acc, best.loss
    model.eval()
    return result
