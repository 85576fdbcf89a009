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
    n = len(y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    base_lr = optimizer.lr

    result = FitResult()
    best_state: dict[str, np.ndarray] | None = None
    best_acc, best_loss = -math.inf, math.inf
    step = 0
    out_of_time = False
    for epoch in range(1, epochs + 1):
        model.train()
        start = clock()
        cpu_start = time.process_time()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in batches(n, batch_size, rng):
            elapsed = result.train_seconds + clock() - start
            if time_budget is not None and elapsed >= time_budget:
                out_of_time = True
                break
            progress = step / total_steps
            if time_budget:
                progress = max(progress, elapsed / time_budget)
            optimizer.lr = base_lr * schedule_fn(min(progress, 1.0))
            xb, yb = transform(x_train[idx]), y_train[idx]
            logits = model.forward(xb)
            batch_loss = loss.forward(logits, yb)
            model.backward(loss.backward(), input_grad=False)
            optimizer.step()
            step += 1
            loss_sum += batch_loss * len(idx)
            correct += int(np.sum(logits.argmax(axis=1) == yb))
            seen += len(idx)
        result.train_seconds += clock() - start
        result.train_cpu_seconds += time.process_time() - cpu_start
        if seen == 0:  # the budget ran out before this epoch took a step
            result.stop_reason = "time_budget"
            break
        result.images_seen += seen
        result.epochs_run = epoch
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "val_loss": math.nan, "val_acc": math.nan, "lr": optimizer.lr, "seconds": result.train_seconds}
        if has_val:
            row["val_loss"], row["val_acc"] = evaluate(model, loss, x_val, y_val, eval_batch_size, transform)
            improved = row["val_acc"] > best_acc + min_delta or (
                row["val_acc"] >= best_acc and row["val_loss"] < best_loss)
            if improved:
                best_acc, best_loss = row["val_acc"], row["val_loss"]
                best_state = model.state_dict()
                result.best_epoch = epoch
        else:
            result.best_epoch = epoch
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if out_of_time:
            result.stop_reason = "time_budget"
            break
        if has_val and patience and epoch - result.best_epoch >= patience:
            result.stop_reason = "early_stop"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_accuracy, result.best_val_loss = best_acc, best_loss
    model.eval()
    return result
