"""Training diagnosis on synthetic histories, and the calibration numbers the report prints."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgclf.evaluation import calibration as cal
from imgclf.evaluation.diagnosis import OVERFIT, UNDERFIT, WELL_FIT, diagnose, read_history
from imgclf.mathutil import softmax


def history(train_acc: list[float], val_acc: list[float], train_loss: list[float],
            val_loss: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": i + 1, "train_acc": ta, "val_acc": va, "train_loss": tl, "val_loss": vl, "lr": 0.1,
             "seconds": float(i)}
            for i, (ta, va, tl, vl) in enumerate(zip(train_acc, val_acc, train_loss, val_loss, strict=True))]


# Train accuracy runs to 99 % while val loss bottoms out at epoch 6 and climbs.
OVERFIT_RUN = history(
    train_acc=[0.40, 0.55, 0.66, 0.75, 0.82, 0.88, 0.92, 0.95, 0.97, 0.98, 0.99, 0.995],
    val_acc=[0.42, 0.55, 0.63, 0.68, 0.71, 0.73, 0.74, 0.74, 0.73, 0.72, 0.72, 0.71],
    train_loss=[1.7, 1.3, 1.0, 0.75, 0.55, 0.40, 0.28, 0.18, 0.11, 0.07, 0.05, 0.03],
    val_loss=[1.6, 1.3, 1.1, 0.95, 0.88, 0.85, 0.88, 0.95, 1.05, 1.15, 1.25, 1.35])


def test_clearly_overfit_run() -> None:
    """Train accuracy runs to 99 % while val loss bottoms out at epoch 6 and climbs."""
    d = diagnose(OVERFIT_RUN, {"weight_decay": 5e-4, "dropout": 0.0})
    assert d.verdict == OVERFIT and "clearly" in d.headline
    assert d.turn_epoch == 6 and d.numbers["best_val_epoch"] == 7
    steps = " ".join(d.next_steps)
    for hint in ("--weight-decay 0.001", "--dropout 0.2", "--cutout", "--early-stop"):
        assert hint in steps, hint
    assert "epoch 6" in " ".join(d.evidence)


def test_clearly_underfit_run_still_rising() -> None:
    """Both accuracies still climbing a few points an epoch when training stops, no gap."""
    train_acc = [0.30, 0.38, 0.45, 0.50, 0.55, 0.59]
    val_acc = [0.32, 0.40, 0.46, 0.51, 0.55, 0.58]
    loss = [2.0, 1.8, 1.6, 1.45, 1.35, 1.25]
    d = diagnose(history(train_acc, val_acc, loss, loss), {"width": 0.5, "model": "fastcnn"})
    assert d.verdict == UNDERFIT and "still improving" in d.headline
    steps = " ".join(d.next_steps)
    assert "--epochs 12" in steps and "width=1" in steps and "lr-find" in steps


def test_underfit_run_that_has_flattened_low() -> None:
    """A model too small for the task: flat at 45 % on train and val alike."""
    acc = [0.40, 0.44, 0.45, 0.45, 0.45, 0.45, 0.45]
    loss = [1.6, 1.5, 1.48, 1.47, 1.47, 1.47, 1.47]
    d = diagnose(history(acc, [a - 0.01 for a in acc], loss, loss))
    assert d.verdict == UNDERFIT and "bigger model" in " ".join(d.next_steps)
    assert "--epochs" not in " ".join(d.next_steps)


def test_well_fit_run() -> None:
    train_acc = [0.60, 0.80, 0.88, 0.92, 0.94, 0.95, 0.955, 0.957]
    val_acc = [0.62, 0.79, 0.86, 0.89, 0.91, 0.915, 0.918, 0.918]
    train_loss = [1.2, 0.8, 0.6, 0.5, 0.45, 0.43, 0.42, 0.42]
    val_loss = [1.1, 0.7, 0.5, 0.38, 0.33, 0.31, 0.30, 0.30]
    d = diagnose(history(train_acc, val_acc, train_loss, val_loss))
    assert d.verdict == WELL_FIT and d.turn_epoch is None and d.next_steps


def test_no_history_is_unknown_not_an_error() -> None:
    assert diagnose([]).verdict == "unknown"


def test_read_history_round_trip(tmp_path: Path) -> None:
    rows = history([0.5, 0.6], [0.5, 0.55], [1.0, 0.9], [1.0, 0.95])
    path = tmp_path / "history.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    back = read_history(path)
    assert back[1]["epoch"] == 2 and back[1]["val_acc"] == pytest.approx(0.55)


def test_calibration_numbers() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, size=(4000, 5))
    probs = softmax(z)
    labels = np.array([rng.choice(5, p=p) for p in probs])  # labels drawn from the model's own beliefs
    assert cal.expected_calibration_error(z, labels) < 0.03
    sharp = 3.0 * z  # the same ranking, three times too confident
    rel = cal.reliability(softmax(sharp), labels)
    assert rel.ece > 0.1 and "overconfident" in cal.describe(rel)
    assert sum(rel.counts) == len(labels)
    assert cal.fit_temperature(sharp, labels) == pytest.approx(3.0, rel=0.15)


def test_augmentation_advice_follows_the_data_path() -> None:
    """Cutout only reaches small square images; a photo run is told about its own augmentation knobs."""
    runs = OVERFIT_RUN
    photo = {"crop_fraction": 0.875, "augment_policy": "none", "min_crop_scale": 0.5}
    steps = " ".join(diagnose(runs, photo).next_steps)
    assert "augment_policy=trivial" in steps and "--cutout" not in steps
    steps = " ".join(diagnose(runs, {**photo, "augment_policy": "trivial"}).next_steps)
    assert "min_crop_scale=0.08" in steps and "--cutout" not in steps
    squares = " ".join(diagnose(runs, {"crop_fraction": 1.0, "cutout": 8}).next_steps)
    assert "--cutout 12" in squares
