"""imgclf.numpy_nn training: digits accuracy, the training loop's contracts, and `imgclf scratch-nn`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from imgclf import numpy_nn as nn
from imgclf.cli import main
from imgclf.numpy_nn import command
from imgclf.numpy_nn.command import Normalizer


def _standin_digits(seed: int) -> SimpleNamespace:
    """Digits in the data layer's shape (uint8 NHWC RGB, 20 % fixed test split), for when it is absent."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.repeat(np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None], 3, axis=3)
    labels = bunch.target.astype(np.int64)
    classes = [str(c) for c in bunch.target_names]
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=1234)
    train, val = train_test_split(rest, test_size=0.1, stratify=labels[rest], random_state=seed)

    def part(i: np.ndarray) -> SimpleNamespace:
        return SimpleNamespace(images=images[i], labels=labels[i], classes=classes)

    return SimpleNamespace(train=part(train), val=part(val), test=part(test))


def _has_data_layer() -> bool:
    try:
        from imgclf.data import load_splits  # noqa: F401
    except ImportError:
        return False
    return True


def load_digits_splits(seed: int = 0) -> object:
    if _has_data_layer():
        return command.load_data("digits", None, None, seed, None)
    return _standin_digits(seed)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture
def digits_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route `scratch-nn --data digits` to the stand-in while the project's data layer does not exist."""
    if not _has_data_layer():
        real = command.load_data

        def fake(data: str, *args: object) -> object:
            return _standin_digits(int(args[2])) if data == "digits" else real(data, *args)

        monkeypatch.setattr(command, "load_data", fake)


def test_mlp_reaches_97_percent_on_digits() -> None:
    splits = load_digits_splits(seed=0)
    normalize = Normalizer(splits.train.images, "flat")
    model = nn.build_mlp(8 * 8 * 3, [256, 128], 10, dropout=0.2, seed=0)
    loss = nn.SoftmaxCrossEntropy(label_smoothing=0.1)
    opt = nn.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    result = nn.fit(model, loss, opt, splits.train.images, splits.train.labels, splits.val.images,
                    splits.val.labels, epochs=30, batch_size=64, seed=0, transform=normalize)
    _, test_acc = nn.evaluate(model, loss, splits.test.images, splits.test.labels, transform=normalize)
    assert test_acc >= 0.97, f"test accuracy {test_acc:.4f}"
    assert result.best_val_accuracy >= 0.95
    assert len(result.history) == 30


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_every_optimizer_fits_a_small_problem(optimizer: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = (x[:, 0] - 0.5 * x[:, 1] > 0.2).astype(np.int64)
    model = nn.build_mlp(6, [32], 2, seed=0)
    opt = command._optimizer(optimizer, model, command.DEFAULT_LR[optimizer], 0.0)
    loss = nn.SoftmaxCrossEntropy()
    first = nn.evaluate(model, loss, x, y)[0]
    result = nn.fit(model, loss, opt, x, y, epochs=40, batch_size=32, seed=0)
    last, acc = nn.evaluate(model, loss, x, y)
    assert last < 0.5 * first and acc > 0.9, (optimizer, first, last, acc)
    assert result.stop_reason == "epochs" and result.epochs_run == 40


def test_fit_stops_early_and_restores_the_best_weights() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    y = rng.integers(0, 3, 300)  # labels are noise: validation cannot keep improving
    xv, yv = rng.standard_normal((100, 20)).astype(np.float32), rng.integers(0, 3, 100)
    model = nn.build_mlp(20, [64], 3, seed=0)
    loss = nn.SoftmaxCrossEntropy()
    seen: list[dict[str, float]] = []
    result = nn.fit(model, loss, nn.Adam(model.parameters(), lr=1e-2), x, y, xv, yv, epochs=100,
                    batch_size=32, patience=3, seed=0, on_epoch=seen.append)
    assert result.stop_reason == "early_stop"
    assert result.epochs_run == result.best_epoch + 3 < 100
    assert seen == result.history
    best = result.history[result.best_epoch - 1]
    val_loss, val_acc = nn.evaluate(model, loss, xv, yv)
    assert val_acc == pytest.approx(best["val_acc"]) and val_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert not model.training


def test_fit_history_shuffling_and_schedule() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 2, 64)
    model = nn.build_mlp(4, [8], 2, seed=0)
    opt = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, x, y, x, y, epochs=4, batch_size=16, seed=0)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.01  # cosine annealing, per step
    secs = [r["seconds"] for r in result.history]
    assert secs == sorted(secs) and secs[-1] == pytest.approx(result.train_seconds)
    assert result.images_seen == 4 * 64
    orders = [nn.batches(10, 4, np.random.default_rng(s)) for s in (0, 1)]
    first, second = (np.concatenate(list(o)) for o in orders)
    assert sorted(first) == list(range(10)) and not np.array_equal(first, second)


def test_schedules() -> None:
    cos = nn.cosine_schedule()
    assert cos(0.0) == 1.0 and cos(0.5) == pytest.approx(0.5) and cos(1.0) == pytest.approx(0.0)
    warm = nn.cosine_schedule(warmup=0.1)
    assert warm(0.0) < 0.05 and warm(0.1) == pytest.approx(1.0)
    step = nn.step_schedule((0.5, 0.75), 0.1)
    assert [step(p) for p in (0.0, 0.6, 0.8)] == pytest.approx([1.0, 0.1, 0.01])
    with pytest.raises(ValueError):
        nn.make_schedule("nope")


def test_fit_time_budget_ends_the_run_and_the_cosine(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.numpy_nn import train

    now = [0.0]

    def fake_clock() -> float:  # every reading advances 10 ms: one reading per step, two per epoch
        now[0] += 0.01
        return now[0]

    monkeypatch.setattr(train, "clock", fake_clock)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((640, 8)).astype(np.float32), rng.integers(0, 4, 640)
    model = nn.build_mlp(8, [16], 4, seed=0)
    lrs: list[float] = []
    opt = nn.SGD(model.parameters(), lr=0.1)
    original_step = opt.step

    def step() -> None:
        lrs.append(opt.lr)
        original_step()

    opt.step = step  # type: ignore[method-assign]
    result = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, x, y, x[:64], y[:64], epochs=10_000, batch_size=32,
                    time_budget=1.0, seed=0)
    assert result.stop_reason == "time_budget"
    assert 1.0 <= result.train_seconds <= 1.05
    assert 85 <= len(lrs) <= 100 and result.epochs_run == math.ceil(len(lrs) / 20)
    assert lrs[0] == pytest.approx(0.1, rel=0.01) and lrs[-1] < 0.002  # annealed by elapsed time, not epochs
    assert lrs == sorted(lrs, reverse=True)


def test_fit_time_budget_on_the_real_clock() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4000, 64)).astype(np.float32), rng.integers(0, 4, 4000)
    model = nn.build_mlp(64, [256, 256], 4, seed=0)
    result = nn.fit(model, nn.SoftmaxCrossEntropy(), nn.Adam(model.parameters()), x, y, x[:200], y[:200],
                    epochs=10_000, batch_size=32, time_budget=0.3, seed=0)
    assert result.stop_reason == "time_budget"
    assert 0.3 <= result.train_seconds < 5.0
    assert result.history[-1]["lr"] < 1e-3


def test_cli_writes_a_run_directory(tmp_path: Path, digits_cli: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["scratch-nn", "--data", "digits", "--out", str(out), "--epochs", "6", "--seed", "1",
                 "--optimizer", "nesterov", "--hidden", "64", "--dropout", "0.1"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "history.csv", "metrics.json", "classes.json",
                                               "model.npz"}
    with open(out / "history.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"
    rows = list(csv.DictReader(lines))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == metrics["epochs_run"] <= 6
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 and 0.0 <= float(r["train_acc"]) <= 1.0 for r in rows)
    for key in ["val_accuracy", "test_accuracy", "best_epoch", "epochs_run", "train_seconds",
                "images_per_second", "model", "num_params"]:
        assert key in metrics
    assert metrics["model"] == "numpy-mlp" and metrics["test_accuracy"] > 0.9
    assert metrics["images_per_second"] > 0 and math.isclose(float(rows[-1]["seconds"]),
                                                             metrics["train_seconds"], rel_tol=1e-4)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["optimizer"] == "nesterov" and config["seed"] == 1 and config["hidden"] == [64]
    assert config["lr"] == command.DEFAULT_LR["nesterov"]
    assert json.loads((out / "classes.json").read_text()) == [str(i) for i in range(10)]
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == metrics["test_accuracy"]

    # the saved model reproduces the reported test accuracy on its own
    model = nn.Sequential.load(out / "model.npz")
    meta = nn.read_meta(out / "model.npz")
    splits = load_digits_splits(seed=1)
    norm = Normalizer(splits.train.images, meta["layout"])
    assert np.allclose(norm.mean, meta["mean"])
    _, acc = nn.evaluate(model, nn.SoftmaxCrossEntropy(), splits.test.images, splits.test.labels, transform=norm)
    assert acc == pytest.approx(metrics["test_accuracy"])


def test_cli_small_cnn(tmp_path: Path, digits_cli: None) -> None:
    out = tmp_path / "cnn"
    assert main(["scratch-nn", "--data", "digits", "--conv", "--out", str(out), "--epochs", "2",
                 "--subset", "400", "--hidden", "32", "--batch-size", "32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "numpy-cnn" and metrics["epochs_run"] == 2 and metrics["test_accuracy"] > 0.5
    assert metrics["num_train"] == 400
    assert any("Conv2D" in layer for layer in metrics["architecture"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "digits"], "--out"),
    (["--data", "digits", "--out", "{tmp}", "--epochs", "0"], "--epochs"),
    (["--data", "digits", "--out", "{tmp}", "--dropout", "1.0"], "--dropout"),
    (["--data", "digits", "--out", "{tmp}", "--lr", "-1"], "--lr"),
    (["--data", "digits", "--out", "{tmp}", "--hidden", "0"], "--hidden"),
    (["--data", "/no/such/folder", "--out", "{tmp}"], "no/such/folder"),
])
def test_cli_user_errors_exit_2(tmp_path: Path, digits_cli: None, capsys: pytest.CaptureFixture[str],
                                argv: list[str], message: str) -> None:
    if "/no/such/folder" in argv and not _has_data_layer():
        pytest.skip("needs the project's data layer")
    argv = [a.replace("{tmp}", str(tmp_path / "run")) for a in argv]
    try:
        code = main(["scratch-nn", *argv])
    except SystemExit as stop:  # values argparse itself refuses
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgclf: error:") and message in err and "\n" not in err
