"""Training diagnosis: read a run's history and say, in words, whether it over- or underfit and what to try.

The rules look at accuracies first (train and val losses are not comparable when the training loss
includes label smoothing) and at the shape of the curves: where validation loss bottomed out, whether
the generalization gap kept growing, and whether training accuracy was still climbing at the end.
Train accuracy in history.csv is measured on augmented batches while the weights move, so it runs a
little below what the final model scores on clean training images; the thresholds allow for that.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import DEFAULT_WEIGHT_DECAY, FINETUNE_OPTIMIZER, SCRATCH_OPTIMIZER, TrainConfig

OVERFIT, UNDERFIT, WELL_FIT = "overfitting", "underfitting", "well fit"

# Thresholds, as fractions (0.05 = 5 accuracy points).
BIG_GAP = 0.15  # train - val accuracy this large is overfitting whatever the trend
GAP_WORRY = 0.08  # a gap this large that is still growing is overfitting
GAP_GROWTH = 0.04  # growth of the gap since its smallest point that counts as "growing"
VAL_LOSS_RISE = 0.10  # relative rise of val loss above its minimum that counts as "turned up"
VAL_ACC_DROP = 0.02  # val accuracy this far below its best at the end
LOW_TRAIN_ACC = 0.85  # the model does not even fit the training images
STILL_RISING = 0.01  # train accuracy gain per epoch over the last stretch that means "not done"


@dataclass
class Diagnosis:
    """A verdict with the numbers behind it and the next steps, ready to print or render."""

    verdict: str  # overfitting | underfitting | well fit | unknown
    headline: str
    evidence: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    turn_epoch: int | None = None  # epoch where val loss bottomed out before rising (overfitting runs)


def read_history(path: str | Path) -> list[dict[str, float]]:
    """history.csv as a list of rows of floats (epoch as int); blank cells become NaN."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float] = {}
            for key, value in raw.items():
                if key is None:
                    continue
                try:
                    row[key] = float(value) if value not in ("", None) else float("nan")
                except ValueError:
                    row[key] = float("nan")
            if "epoch" in row and np.isfinite(row["epoch"]):
                row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _setting(config: dict[str, Any], key: str) -> Any:
    """The run's value for `key`, else TrainConfig's default (a config.yaml from an older or foreign run)."""
    value = config.get(key)
    return _FIELD_DEFAULTS.get(key) if value is None else value


def _column(history: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r.get(key, np.nan)) for r in history], dtype=float)


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


@dataclass(frozen=True)
class _Curves:
    """The history's columns and the summary numbers the verdict rules read, computed once so each rule stays short."""

    train_acc: np.ndarray
    val_acc: np.ndarray
    val_loss: np.ndarray
    epochs: list[int]
    n: int
    final_gap: float
    gap_growth: float
    best_val_i: int
    min_loss_i: int
    min_val_loss: float
    loss_rise: float
    k: int  # the last stretch of epochs whose slope says "still learning"
    train_slope: float
    val_slope: float
    val_drop: float
    train_loss_fell_after: bool

    def numbers(self) -> dict[str, Any]:
        """The figures behind the verdict, for reports and JSON (fractions; epochs as numbered in history)."""
        return {
            "epochs": self.n, "final_train_acc": float(self.train_acc[-1]), "final_val_acc": float(self.val_acc[-1]),
            "final_gap": self.final_gap, "gap_growth": self.gap_growth,
            "best_val_acc": float(self.val_acc[self.best_val_i]), "best_val_epoch": self.epochs[self.best_val_i],
            "min_val_loss": self.min_val_loss, "min_val_loss_epoch": self.epochs[self.min_loss_i],
            "val_loss_rise": self.loss_rise, "train_acc_slope": self.train_slope, "val_acc_slope": self.val_slope,
        }


def _measure(history: list[dict[str, Any]]) -> _Curves | None:
    """Summarize the curves, or None when there is no finite train and val accuracy to judge (nan-argmax would fail)."""
    train_acc, val_acc = _column(history, "train_acc"), _column(history, "val_acc")
    train_loss, val_loss = _column(history, "train_loss"), _column(history, "val_loss")
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    n = len(history)
    if n == 0 or not np.isfinite(train_acc).any() or not np.isfinite(val_acc).any():
        return None

    gap = train_acc - val_acc
    final_gap = float(gap[-1])
    best_val_i = int(np.nanargmax(val_acc))
    min_loss_i = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else n - 1
    min_val_loss = float(val_loss[min_loss_i]) if np.isfinite(val_loss).any() else float("nan")
    loss_rise = (float(val_loss[-1]) - min_val_loss) / max(min_val_loss, 1e-8) if np.isfinite(min_val_loss) else 0.0
    smallest_gap = float(np.nanmin(gap))
    k = max(1, min(3, n // 3))
    return _Curves(
        train_acc=train_acc, val_acc=val_acc, val_loss=val_loss, epochs=epochs, n=n, final_gap=final_gap,
        gap_growth=final_gap - smallest_gap, best_val_i=best_val_i, min_loss_i=min_loss_i,
        min_val_loss=min_val_loss, loss_rise=loss_rise, k=k,
        train_slope=float((train_acc[-1] - train_acc[-1 - k]) / k) if n > k else float("nan"),
        val_slope=float((val_acc[-1] - val_acc[-1 - k]) / k) if n > k else float("nan"),
        val_drop=float(val_acc[best_val_i] - val_acc[-1]),
        train_loss_fell_after=bool(n > min_loss_i + 1 and train_loss[-1] < train_loss[min_loss_i]),
    )


def diagnose(history: list[dict[str, Any]], config: dict[str, Any] | None = None) -> Diagnosis:
    """Verdict on a run from its per-epoch history (train/val loss and accuracy as fractions).

    `config` (the run's config.yaml as a dict) only sharpens the advice: it lets the next steps name
    concrete values, such as doubling the current weight decay.
    """
    config = config or {}
    c = _measure(history)
    if c is None:
        return Diagnosis("unknown", "No usable training history, so there is nothing to diagnose.",
                         next_steps=["Check that the run finished at least one epoch (history.csv)."])
    # Overfitting is checked first: a run that overfits may also still be climbing on the training images.
    overfit = _diagnose_overfit(c, config)
    if overfit is not None:
        return overfit
    underfit = _diagnose_underfit(c, config)
    if underfit is not None:
        return underfit
    return _diagnose_well_fit(c, config)


def _diagnose_overfit(c: _Curves, config: dict[str, Any]) -> Diagnosis | None:
    """The overfitting verdict when val loss turned up, the gap is big or growing, or val accuracy fell; else None."""
    n, epochs, val_loss, min_val_loss = c.n, c.epochs, c.val_loss, c.min_val_loss
    turned_up = (c.min_loss_i < n - 1 and c.loss_rise > VAL_LOSS_RISE and float(val_loss[-1]) - min_val_loss > 0.02
                 and c.train_loss_fell_after)
    gap_growing = c.gap_growth > GAP_GROWTH and c.final_gap > GAP_WORRY
    acc_fell = c.val_drop > VAL_ACC_DROP and c.best_val_i < n - 1
    if not (turned_up or gap_growing or c.final_gap > BIG_GAP or acc_fell):
        return None
    evidence: list[str] = []
    if turned_up:
        evidence.append(f"Validation loss bottomed out at epoch {epochs[c.min_loss_i]} ({min_val_loss:.3f}) and then "
                        f"rose {100 * c.loss_rise:.0f}% to {val_loss[-1]:.3f} while the training loss kept falling.")
    if gap_growing or c.final_gap > BIG_GAP:
        evidence.append(f"Train accuracy ends {_pts(c.final_gap)} points above validation accuracy "
                        f"({_pts(c.train_acc[-1])}% vs {_pts(c.val_acc[-1])}%); the gap grew "
                        f"{_pts(c.gap_growth)} points from its smallest.")
    if acc_fell:
        evidence.append(f"Validation accuracy peaked at {_pts(c.val_acc[c.best_val_i])}% in epoch "
                        f"{epochs[c.best_val_i]} and ended {_pts(c.val_drop)} points lower.")
    clear = (turned_up and gap_growing) or c.final_gap > BIG_GAP
    severity = "clearly" if clear else "mildly"
    stop_at = epochs[c.best_val_i] if acc_fell else epochs[c.min_loss_i] if turned_up else None
    headline = (f"The model is {severity} overfitting: it keeps getting better on the training images "
                f"but not on the validation images.")
    return Diagnosis(OVERFIT, headline, evidence, _overfit_steps(config, n, stop_at), c.numbers(),
                     turn_epoch=epochs[c.min_loss_i] if turned_up else None)


def _diagnose_underfit(c: _Curves, config: dict[str, Any]) -> Diagnosis | None:
    """The underfitting verdict when accuracy was still climbing or train accuracy is low; else None.

    Still learning means validation improving at the end, or training accuracy climbing while still low:
    train accuracy that rises while validation is flat and high only widens the gap, which is not underfitting.
    """
    val_rising = (np.isfinite(c.val_slope) and c.val_slope > STILL_RISING / 2
                  and c.val_acc[-1] >= c.val_acc[c.best_val_i] - 0.005)
    train_rising = np.isfinite(c.train_slope) and c.train_slope > STILL_RISING and c.train_acc[-1] < LOW_TRAIN_ACC
    saturated = c.val_acc[-1] >= 0.995
    rising = (val_rising or train_rising) and not saturated
    low = c.train_acc[-1] < LOW_TRAIN_ACC and not saturated
    if not (rising or low):
        return None
    evidence: list[str] = []
    if rising:
        evidence.append(f"Accuracy was still climbing at the end: train +{_pts(c.train_slope)} and val "
                        f"+{_pts(c.val_slope)} points per epoch over the last {c.k} epoch(s).")
    if low:
        evidence.append(f"Train accuracy is only {_pts(c.train_acc[-1])}%: the model does not yet fit the "
                        "images it is trained on.")
    evidence.append(_underfit_gap_evidence(c.final_gap))
    if c.n < 3:
        evidence.append(f"Only {c.n} epoch(s) ran, so the trend is uncertain.")
    headline = ("The model is underfitting: it has not yet learned what the data can teach it"
                + (" and was still improving when training stopped." if rising else "."))
    return Diagnosis(UNDERFIT, headline, evidence, _underfit_steps(config, c.n, bool(rising), bool(low)), c.numbers())


def _underfit_gap_evidence(final_gap: float) -> str:
    """What the train/val gap says about an underfit run: a small or negative gap rules out too much regularization."""
    if final_gap < -0.01:
        return (f"Validation accuracy is {_pts(-final_gap)} points above train accuracy (train accuracy is "
                "measured on augmented batches while the weights still move), so regularization is not "
                "what holds the model back.")
    if final_gap < 0.05:
        return f"The train/val gap is small ({_pts(final_gap)} points), so regularization is not what holds it back."
    return f"The train/val gap ({_pts(final_gap)} points) is not growing."


def _diagnose_well_fit(c: _Curves, config: dict[str, Any]) -> Diagnosis:
    """The verdict when neither rule fired: the curves agree and have flattened, so point past tuning."""
    evidence = [f"Train and validation accuracy end {_pts(c.final_gap)} points apart "
                f"({_pts(c.train_acc[-1])}% vs {_pts(c.val_acc[-1])}%) and the curves have flattened.",
                f"Validation accuracy is at or near its best ({_pts(c.val_acc[c.best_val_i])}% in epoch "
                f"{c.epochs[c.best_val_i]}), and validation loss did not turn up."]
    headline = "The run looks well fit: training and validation agree and both have levelled off."
    steps = ["Nothing is broken. Further gains come from more (or pretrained) knowledge rather than tuning: "
             "fine-tune a pretrained network (`--model efficientnet_lite0 --pretrained`), collect more data, "
             "or evaluate with flip test-time augmentation (`--tta`).",
             "A longer run with slightly stronger augmentation often adds a point or two"
             + (f": {_stronger_augmentation(config)}" if _stronger_augmentation(config) else ".")]
    return Diagnosis(WELL_FIT, headline, evidence, steps, c.numbers())


def _stronger_augmentation(config: dict[str, Any]) -> str | None:
    """The next augmentation step for the run's data path, or None where it is already at full strength.

    Photos (crop fraction under 1) are augmented per image by a random-resized crop and a policy; cutout and
    translation apply only to small square images (imgclf.data.loaders.BatchAugment).
    """
    if float(config.get("crop_fraction") or 1.0) < 1.0:
        if _setting(config, "augment_policy") == "none":
            return "turn the photo policy on (`--set augment_policy=trivial`)."
        scale = float(_setting(config, "min_crop_scale"))
        return f"crop smaller parts of each photo (`--set min_crop_scale=0.08`, now {scale:g})." if scale > 0.08 \
            else None
    cutout = config.get("cutout", 0)
    if not cutout:
        return "add cutout (`--cutout 8`) on top of crops and flips."
    return f"a larger cutout (`--cutout {int(cutout) * 3 // 2}`)."


def _overfit_steps(config: dict[str, Any], epochs: int, stop_at: int | None) -> list[str]:
    steps = []
    photos = float(config.get("crop_fraction") or 1.0) < 1.0
    if not config.get("flip", True) or not (photos or config.get("crop_pad", 4)):
        steps.append("Turn on augmentation: `--flip`" + ("" if photos else " --crop-pad 4")
                     + " (mirror images" + ("" if photos else " and random translations") + ").")
    elif stronger := _stronger_augmentation(config):
        steps.append(f"Augment more strongly: {stronger}")
    optimizer = config.get("optimizer") or SCRATCH_OPTIMIZER
    default_wd = DEFAULT_WEIGHT_DECAY.get(optimizer, DEFAULT_WEIGHT_DECAY[FINETUNE_OPTIMIZER])  # adam & co: AdamW's
    wd = config.get("weight_decay")
    wd_now = wd if wd is not None else default_wd
    steps.append(f"Raise weight decay: `--weight-decay {(2 * wd_now if wd_now else default_wd):g}` "
                 f"(now {wd_now:g}).")
    dropout = float(config.get("dropout", 0.0) or 0.0)
    steps.append(f"Add dropout before the classifier: `--dropout {min(0.5, dropout + 0.2):.1f}` (now {dropout:g}).")
    if stop_at is not None and stop_at < epochs:
        steps.append(f"Stop earlier: the best validation epoch was {stop_at} of {epochs}; use `--epochs {stop_at}` "
                     "(the schedule then anneals in time) or `--early-stop 3`.")
    else:
        steps.append("Stop earlier with `--early-stop 3`, or get more training data.")
    return steps


def _underfit_steps(config: dict[str, Any], epochs: int, rising: bool, low: bool) -> list[str]:
    steps = []
    if rising:
        steps.append(f"Train longer: `--epochs {max(2 * epochs, epochs + 5)}` (the curves had not flattened).")
    width = float(_setting(config, "width") or 1.0)
    model = _setting(config, "model")
    if low:
        steps.append(f"Use a bigger model: `--set width={2 * width:g}` or `--model resnet18` (now {model}, "
                     f"width {width:g}), or fine-tune a pretrained one.")
    lr = config.get("lr")
    steps.append("Use a higher learning rate" + (f" than {lr:g}" if isinstance(lr, int | float) else "")
                 + ": run `imgclf lr-find` with the same data and model and pass its suggestion as `--lr`.")
    if low and (config.get("dropout") or float(config.get("label_smoothing", 0) or 0) > 0.1):
        steps.append("Loosen regularization (less dropout or label smoothing) until the training images fit.")
    return steps
