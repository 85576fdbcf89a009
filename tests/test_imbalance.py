"""Class imbalance: --class-weights auto (inverse frequency, mean 1), --sampler balanced (seeded draws with
replacement that replay on a rerun and after a resume), --monitor macro_f1 (best.pt and early stopping),
and the warning `imgclf train` gives for a lopsided training split."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import benchmark_json, make_folder
from imgclf.cli import main
from imgclf.config import TrainConfig
from imgclf.data.imageset import ImageSet
from imgclf.data.loaders import PhotoLoader, TensorLoader
from imgclf.data.photos import PhotoSet, Preprocess
from imgclf.errors import UserError
from imgclf.evaluation.diagnosis import read_history
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training import trainer as trainer_module
from imgclf.training.losses import class_weights, criterion_for, imbalance_warning
from imgclf.training.run import train


def _cfg(data: Path, out: Path, **changes: object) -> TrainConfig:
    return TrainConfig(data=str(data), model="tiny", epochs=3, batch_size=16, quiet=True, device="cpu", lr=0.05,
                       out=str(out)).replace(**changes)


def _lopsided(root: Path, big: int, small: int) -> Path:
    """Three classes: class_0 with `big` images, class_1 and class_2 with `small` each."""
    make_folder(root, classes=3, per_class=big)
    for c in (1, 2):
        for f in sorted((root / f"class_{c}").iterdir(), key=lambda p: int(p.stem))[small:]:
            f.unlink()
    return root


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    labels = np.array([0] * 60 + [1] * 10 + [2] * 30)
    w = class_weights(labels, 3)
    assert w.dtype == torch.float32
    assert w.mean().item() == pytest.approx(1.0)
    assert (w * torch.tensor([60.0, 10.0, 30.0])).tolist() == pytest.approx([w[0].item() * 60] * 3)
    assert w[1].item() / w[0].item() == pytest.approx(6.0)
    absent = class_weights(np.array([0, 0, 2]), 4)  # classes 1 and 3 have no image: weight 0, the rest mean 1
    assert absent.tolist() == pytest.approx([2 / 3, 0.0, 4 / 3, 0.0])

    weighted = criterion_for(TrainConfig(class_weights="auto", label_smoothing=0.1), labels, 3)
    assert torch.equal(weighted.weight, w) and weighted.label_smoothing == 0.1
    assert criterion_for(TrainConfig()).weight is None
    logits = torch.randn(5, 3)
    # soft targets (mixup) go through the same weighted loss; one-hot targets give the index loss
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    assert torch.isfinite(weighted(logits, one_hot * 0.7 + 0.1))
    plain = criterion_for(TrainConfig(class_weights="auto", label_smoothing=0.0), labels, 3)
    assert plain(logits, one_hot).item() != pytest.approx(torch.nn.functional.cross_entropy(logits, one_hot).item())
    with pytest.raises(ValueError):
        criterion_for(TrainConfig(class_weights="auto"))


def _drawn(loader: TensorLoader | PhotoLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [int(v) for _, y in loader for v in y]


def test_balanced_sampler_draws_classes_evenly_seeded_and_replayable() -> None:
    labels = np.array([0] * 200 + [1] * 20)  # 10:1
    images = np.zeros((220, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(220) % 256  # which image was drawn, read back from the batch
    data = ImageSet(images, labels, ["big", "small"])

    def loader(seed: int = 3) -> TensorLoader:
        made = TensorLoader(data, 20, shuffle=True, seed=seed, channels_last=False)
        made.balance(labels)
        return made

    draws = [_drawn(loader(), e) for e in range(5)]
    assert all(len(d) == 220 for d in draws)  # as many draws an epoch as there are images
    share = np.mean([y for d in draws for y in d])
    assert 0.43 < share < 0.57, share  # unbalanced shuffling would give 1/11 = 0.09
    assert draws[0] != draws[1]  # a new draw every epoch
    again = loader()
    assert [_drawn(again, e) for e in (4, 0)] == [draws[4], draws[0]]  # a rerun, and a resume at any epoch
    assert _drawn(loader(seed=4), 0) != draws[0]
    plain = TensorLoader(data, 20, shuffle=True, seed=3, channels_last=False)
    assert np.mean(_drawn(plain, 0)) == pytest.approx(20 / 220)

    rng = np.random.default_rng(0)
    photos = PhotoSet([rng.integers(0, 255, (12, 10, 3), dtype=np.uint8) for _ in range(44)],
                      np.array([0] * 40 + [1] * 4), ["big", "small"], 8)
    photo_loader = PhotoLoader(photos, 11, preprocess=Preprocess(8), shuffle=True, seed=3, channels_last=False)
    photo_loader.balance(photos.labels)
    drawn = [y for e in range(6) for y in _drawn(photo_loader, e)]
    assert len(drawn) == 6 * 44 and 0.35 < np.mean(drawn) < 0.65


def test_balanced_sampler_resumes_exactly(tmp_path: Path) -> None:
    data = _lopsided(tmp_path / "imgs", big=36, small=6)
    straight = train(_cfg(data, tmp_path / "straight", sampler="balanced", schedule="constant"))
    train(_cfg(data, tmp_path / "part", sampler="balanced", schedule="constant", epochs=2))
    for changed in ({"sampler": "shuffle"}, {"class_weights": "auto"}, {"monitor": "macro_f1"}):
        with pytest.raises(UserError, match=f"cannot change {next(iter(changed))}"):
            train(TrainConfig(), resume=str(tmp_path / "part" / "checkpoints" / "last.pt"), overrides=changed)
    resumed = train(TrainConfig(), resume=str(tmp_path / "part" / "checkpoints" / "last.pt"),
                    overrides={"epochs": 3})
    def learned(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert learned(resumed.history) == learned(straight.history)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def scripted_validation(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[float]]]:
    """Each epoch's val accuracy and macro F1 taken from a script, so the two monitors disagree on purpose."""
    script = {"acc": [0.9, 0.5, 0.6, 0.55, 0.5], "f1": [0.3, 0.8, 0.5, 0.4, 0.3]}
    left = {kind: iter(values) for kind, values in script.items()}
    monkeypatch.setattr(trainer_module, "loss_and_accuracy", lambda logits, labels: (1.0, next(left["acc"])))
    monkeypatch.setattr(trainer_module, "macro_f1", lambda logits, labels: next(left["f1"]))
    yield script


@pytest.mark.parametrize("monitor", ["macro_f1", "val_acc"])
def test_monitor_selects_best_pt(tmp_path: Path, scripted_validation: dict[str, list[float]], monitor: str) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=10)
    result = train(_cfg(data, tmp_path / "run", monitor=monitor))
    best_epoch = 2 if monitor == "macro_f1" else 1
    assert result.metrics["best_epoch"] == best_epoch
    assert result.metrics["monitor"] == monitor
    assert result.metrics["best_monitored"] == (0.8 if monitor == "macro_f1" else 0.9)
    assert result.metrics["best_val_accuracy"] == scripted_validation["acc"][best_epoch - 1]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["trainer"]["epoch"] == best_epoch
    assert [r["val_macro_f1"] for r in read_history(tmp_path / "run" / "history.csv")] == [0.3, 0.8, 0.5]


def test_a_later_epoch_that_ties_the_best_is_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties go to the later, further-annealed epoch: on 100 validation photos val accuracy often repeats."""
    accuracies = iter([0.5, 0.9, 0.9])
    monkeypatch.setattr(trainer_module, "loss_and_accuracy", lambda logits, labels: (1.0, next(accuracies)))
    data = make_folder(tmp_path / "imgs", classes=3, per_class=10)
    result = train(_cfg(data, tmp_path / "run"))
    assert result.metrics["best_epoch"] == result.metrics["delivered_epoch"] == 3
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["trainer"]["epoch"] == 3


def test_early_stop_follows_the_monitor(tmp_path: Path, scripted_validation: dict[str, list[float]]) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=10)
    result = train(_cfg(data, tmp_path / "run", monitor="macro_f1", epochs=5, early_stop_patience=1))
    assert result.metrics["epochs_run"] == 3  # F1 fell after epoch 2 (accuracy rose: it would not stop there)
    assert "val_macro_f1" in result.metrics["stop_reason"]


def test_macro_f1_is_recorded_from_real_predictions(tmp_path: Path) -> None:
    data = _lopsided(tmp_path / "imgs", big=24, small=8)
    result = train(_cfg(data, tmp_path / "run", epochs=2, class_weights="auto"))
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("val_acc") + 1] == "val_macro_f1"
    assert all(0.0 <= r["val_macro_f1"] <= 1.0 for r in result.history)
    assert result.config.class_weights == "auto"


def test_imbalance_warning_for_6_to_1_not_2_to_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = ["cat", "dog", "eel"]
    line = imbalance_warning(np.array([0] * 60 + [1] * 10 + [2] * 30), classes)
    assert line is not None and line.startswith("imgclf: warning: ") and "\n" not in line
    assert "'cat' has 60" in line and "'dog' 10" in line and "--class-weights auto" in line
    assert "--sampler balanced" in line
    assert imbalance_warning(np.array([0] * 20 + [1] * 10 + [2] * 15), classes) is None
    assert imbalance_warning(np.array([0] * 50 + [1] * 10), classes[:2]) is None  # 5x exactly: not more than 5x

    args = ["train", "--model", "tiny", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]
    six = _lopsided(tmp_path / "six", big=60, small=10)  # 54 vs 9 training images after the val split
    assert main([*args, "--data", str(six), "--out", str(tmp_path / "r6")]) == 0
    warned = [w for w in capsys.readouterr().err.splitlines() if "imbalanced" in w]
    assert len(warned) == 1 and "'class_0' has 54" in warned[0]
    two = _lopsided(tmp_path / "two", big=20, small=10)
    assert main([*args, "--data", str(two), "--out", str(tmp_path / "r2")]) == 0
    assert "imbalanced" not in capsys.readouterr().err
    # asking for either remedy is taken as having read it
    assert main([*args, "--data", str(six), "--out", str(tmp_path / "r6w"), "--sampler", "balanced"]) == 0
    assert "imbalanced" not in capsys.readouterr().err


def test_bad_values_and_the_speed_run_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", "digits", "--class-weights", "inverse", "--epochs", "1"]) == 2
    assert "class_weights must be one of auto, none" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--monitor", "f1", "--epochs", "1"]) == 2
    assert "monitor must be one of" in capsys.readouterr().err
    data = make_folder(tmp_path / "imgs", classes=2, per_class=10)
    assert main(["train", "--data", str(data), "--recipe", "speedrun", "--sampler", "balanced",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--sampler" in capsys.readouterr().err


def test_benchmark_smoke_prints_one_json_object(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    printed = benchmark_json(monkeypatch, capsys, "imbalance", "--smoke")
    assert printed["benchmark"] == "imbalance" and printed["smoke"] is True and printed["seeds"] == 2
    assert set(printed["variants"]) == {"plain", "class_weights", "balanced_sampler"}
    for variant in printed["variants"].values():
        assert len(variant["macro_f1"]["runs"]) == 2 and 0 <= variant["balanced_accuracy"]["mean"] <= 1
    assert printed["variants"]["plain"]["ratio_to_plain"]["macro_f1"] == 1.0
