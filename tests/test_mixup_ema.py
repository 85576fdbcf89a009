"""--mixup / --cutmix and --ema: mixed targets are proper smoothed distributions, mixed runs train and say how
train accuracy was counted, the EMA is scored beside the raw weights, best.pt holds the winner and names it,
and a resumed run with both on is bitwise the straight one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import benchmark_json, make_folder, make_photo_folder
from imgclf.cli import main
from imgclf.config import TrainConfig
from imgclf.errors import UserError
from imgclf.models.checkpoint import load_checkpoint, model_from_checkpoint
from imgclf.reporting.report import write_report
from imgclf.training.callbacks import Callback
from imgclf.training.losses import criterion_for
from imgclf.training.mixing import BatchMixer, dominant_labels
from imgclf.training.run import train
from imgclf.training.trainer import Trainer

CLASSES = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("mix") / "imgs", classes=3, per_class=24, splits=True)


def _cfg(data: Path, out: Path, **changes: object) -> TrainConfig:
    return TrainConfig(data=str(data), model="tiny", epochs=3, batch_size=16, quiet=True, device="cpu", lr=0.05,
                       out=str(out)).replace(**changes)


class StopAfterFirstEpoch(Callback):
    """An interruption: the run stops after epoch 1 with its config (and LR schedule) unchanged."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, object]) -> None:
        trainer.stop_reason = "interrupted"


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(("mixup", "cutmix"), [(1.0, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_are_distributions_and_the_loss_folds_in_smoothing(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 2, 3])
    original = x.clone()
    mixed, targets = BatchMixer(mixup, cutmix, 0.5, CLASSES)(x, y)
    assert targets.shape == (8, CLASSES)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    partner = y.flip(0)
    lam = targets[torch.arange(8), y]  # y and its partner differ in every pair here
    torch.testing.assert_close(targets[torch.arange(8), partner], 1 - lam)
    assert ((lam > 0) & (lam < 1)).any(), "nothing was mixed"
    if cutmix == 0:  # mixup: every pixel is the same blend as the target
        torch.testing.assert_close(mixed, lam[:, None, None, None] * original
                                   + (1 - lam[:, None, None, None]) * original.flip(0))
    elif mixup == 0:  # cutmix: the target shares are the pasted area's
        from_partner = (mixed != original).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(from_partner, 1 - lam, atol=0.02, rtol=0)
    assert torch.equal(dominant_labels(targets), torch.where(lam >= 0.5, y, partner))

    smoothing = 0.1
    logits = torch.randn(8, CLASSES)
    loss = criterion_for(TrainConfig(label_smoothing=smoothing))(logits, targets)
    smoothed = targets * (1 - smoothing) + smoothing / CLASSES  # timm's smoothed mixed target, summing to 1
    torch.testing.assert_close(smoothed.sum(1), torch.ones(8))
    assert smoothed.min() >= smoothing / CLASSES - 1e-7
    torch.testing.assert_close(loss, -(smoothed * F.log_softmax(logits, 1)).sum(1).mean())


def test_an_odd_batch_loses_its_last_image_and_one_image_stays_as_it_is() -> None:
    mixed, targets = BatchMixer(1.0, 0.0, 0.5, CLASSES)(torch.rand(5, 3, 8, 8), torch.arange(5))
    assert len(mixed) == len(targets) == 4
    single, label = BatchMixer(1.0, 0.0, 0.5, CLASSES)(torch.rand(1, 3, 8, 8), torch.tensor([2]))
    assert len(single) == 1 and label.tolist() == [2]


def test_mixed_runs_train_on_small_squares_and_photos(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = train(_cfg(data, tmp_path / "squares", mixup=0.4, cutmix=1.0, quiet=False))
    line = capsys.readouterr().err
    assert "(dominant class of the mix)" in line
    rows = _history(run.run_dir)
    assert len(rows) == 3 and all(0 <= float(r["train_acc"]) <= 1 for r in rows)
    assert run.metrics["test_accuracy"] is not None
    photos = make_photo_folder(tmp_path / "photos")  # several aspect ratios: the per-image photo path
    run = train(_cfg(photos, tmp_path / "photos-run", epochs=1, batch_size=8, image_size=16, cutmix=1.0))
    assert run.config.crop_fraction == 0.875  # resolved as photos (per-image crops), not small squares
    assert run.metrics["test_accuracy"] is not None and run.metrics["steps"] >= 1


def test_ema_is_scored_beside_the_raw_weights_and_best_pt_holds_the_winner(data: Path, tmp_path: Path) -> None:
    run = train(_cfg(data, tmp_path / "ema", ema=0.9)).run_dir
    rows = _history(run)
    assert all(r["val_acc_ema"] != "" and r["val_loss_ema"] != "" for r in rows)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    ema_weights = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert any(not torch.equal(last["model"][k], ema_weights[k]) for k in ema_weights)

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    row = rows[best["trainer"]["best_epoch"] - 1]
    winner = "ema" if float(row["val_acc_ema"]) > float(row["val_acc"]) else "raw"
    assert best["weights"] == winner
    held = {k.removeprefix("module."): v for k, v in best["ema"].items() if k.startswith("module.")} \
        if winner == "ema" else best.get("raw_model", best["model"])
    assert all(torch.equal(best["model"][k], held[k]) for k in held)
    model_from_checkpoint(best)  # what predict, serve and export load

    metrics = json.loads((run / "metrics.json").read_text())
    final = "ema" if float(rows[-1]["val_acc_ema"]) > float(rows[-1]["val_acc"]) else "raw"
    assert metrics["weights"] == final
    assert metrics["val_accuracy"] == pytest.approx(float(rows[-1]["val_acc_ema" if final == "ema" else "val_acc"]),
                                                    abs=1e-6)
    assert write_report(run).is_file()  # the report reads the extra columns


def test_best_pt_of_an_ema_win_holds_both_and_resumes_from_the_raw(data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Trainer, "better_weights", lambda self, row: "ema")  # force the EMA to win
    straight = train(_cfg(data, tmp_path / "straight", ema=0.9, epochs=2)).run_dir
    run = train(_cfg(data, tmp_path / "win", ema=0.9, epochs=2), extra_callbacks=[StopAfterFirstEpoch()]).run_dir
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert best["weights"] == "ema" and best["best_weights"] == "ema"
    assert all(torch.equal(best["raw_model"][k], last["model"][k]) for k in last["model"])
    assert all(torch.equal(best["model"][k], best["ema"]["module." + k]) for k in best["model"])
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert json.loads((run / "metrics.json").read_text())["weights"] == "ema"
    train(TrainConfig(), resume=str(run / "checkpoints" / "best.pt"),
          overrides={"epochs": 2, "out": str(tmp_path / "from-best")})
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, tmp_path / "from-best"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_with_ema_and_mixup_is_exact(data: Path, tmp_path: Path) -> None:
    mixed = {"ema": 0.9, "mixup": 0.4, "cutmix": 1.0}
    straight = train(_cfg(data, tmp_path / "straight", **mixed)).run_dir
    run = tmp_path / "cut"
    train(_cfg(data, run, **mixed), extra_callbacks=[StopAfterFirstEpoch()])
    train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"), overrides={"epochs": 3})
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, run))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in c["trainer"]["history"]] for c in (a, b)]
    assert untimed[0] == untimed[1]


def test_the_new_settings_are_checked_and_fixed_on_resume(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ({"ema": 1.0}, {"mixup": -1.0}, {"mix_switch": 1.5}, {"accumulate": 0}):
        with pytest.raises(UserError):
            TrainConfig().replace(**bad)
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    with pytest.raises(UserError, match="cannot change ema"):
        train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"), overrides={"epochs": 2, "ema": 0.99})
    assert main(["train", "--data", str(data), "--recipe", "speedrun", "--mixup", "0.2",
                 "--out", str(tmp_path / "speed")]) == 2
    assert "drop --mixup, --cutmix, --ema and --accumulate" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_smoke_prints_one_json_object(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    printed = benchmark_json(monkeypatch, capsys, "regularizers", "--smoke", "--seeds", "1")
    assert printed["benchmark"] == "regularizers" and printed["smoke"] is True
    for part in ("cifar", "flowers"):
        variants = printed[part]["variants"]
        assert set(variants) == {"baseline", "mixup", "cutmix", "ema", "mixup_ema"}
        assert variants["baseline"]["ratio_to_baseline"] == 1.0
        for variant in variants.values():
            assert 0 <= variant["min"] <= variant["mean"] <= variant["max"] <= 1 and len(variant["runs"]) == 1
        assert {r["weights"] for v in ("ema", "mixup_ema") for r in variants[v]["runs"]} <= {"raw", "ema"}
