"""LR range test: a suggestion inside the sweep, and the model and optimizer left exactly as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_folder
from imgclf.cli import main
from imgclf.data import load_splits
from imgclf.data.loaders import BatchAugment, make_loader
from imgclf.errors import UserError
from imgclf.evaluation.lr_finder import lr_range_test, suggest
from imgclf.models import build_model


def _setup(tmp_path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    root = make_folder(tmp_path / "f", classes=3, per_class=16)
    splits = load_splits(str(root), image_size=16)
    torch.manual_seed(0)
    model = build_model("tiny", 3, dropout=0.2)
    optimizer = torch.optim.SGD([{"params": list(model.features.parameters()), "lr": 0.01},
                                 {"params": list(model.head.parameters()), "lr": 0.1}],
                                momentum=0.9, nesterov=True)
    loader = make_loader(splits.train, 8, "cpu", train=True, augment=BatchAugment(2, True, 0), seed=0)
    x, y = next(iter(loader))  # one real step first, so there is momentum state to preserve
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return model, optimizer, loader


def test_range_test_restores_model_and_optimizer_bitwise(tmp_path: Path) -> None:
    model, optimizer, loader = _setup(tmp_path)
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = {id_: {k: v.clone() for k, v in s.items()} for id_, s in optimizer.state_dict()["state"].items()}
    rng = torch.get_rng_state()
    result = lr_range_test(model, optimizer, loader, start_lr=1e-5, end_lr=10.0, steps=30)
    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # incl. BatchNorm running stats
    restored = optimizer.state_dict()
    assert [g["lr"] for g in restored["param_groups"]] == [0.01, 0.1]
    for id_, state in opt_state.items():
        assert all(torch.equal(v, restored["state"][id_][k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert 1e-5 <= result.suggested_lr <= result.lrs[-1] <= 10.0
    assert result.suggested_lr <= result.min_loss_lr
    assert len(result.lrs) == len(result.losses) == len(result.smoothed)
    assert np.all(np.diff(result.lrs) > 0)


def test_range_test_stops_on_divergence(tmp_path: Path) -> None:
    model, optimizer, loader = _setup(tmp_path)
    result = lr_range_test(model, optimizer, loader, start_lr=1e-3, end_lr=1e6, steps=60)
    assert result.diverged_at is not None and len(result.lrs) < 60


def test_suggestion_on_a_textbook_curve() -> None:
    lrs = np.logspace(-6, 1, 100)
    loss = 2.3 - 1.5 / (1 + np.exp(-2.5 * (np.log10(lrs) + 2.5)))  # steepest around 10^-2.5
    loss += np.where(lrs > 0.3, (np.log10(lrs) - np.log10(0.3)) ** 2 * 5, 0)  # explodes past 0.3
    suggested, lowest, steepest, note = suggest(lrs.tolist(), loss.tolist())
    assert 10**-3.2 < steepest < 10**-1.8 and 0.05 < lowest < 0.5
    assert lowest / 30 <= suggested <= lowest / 3 and note == ""


def test_bad_sweep_is_a_user_error(tmp_path: Path) -> None:
    model, optimizer, loader = _setup(tmp_path)
    with pytest.raises(UserError):
        lr_range_test(model, optimizer, loader, start_lr=1.0, end_lr=0.1)


def test_lr_find_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "f", classes=3, per_class=16)
    out = tmp_path / "lrf"
    code = main(["lr-find", "--data", str(root), "--model", "tiny", "--batch-size", "8", "--steps", "25",
                 "--device", "cpu", "--out", str(out), "--start-lr", "1e-5", "--end-lr", "10"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "suggested lr:" in printed and (out / "lr_find.png").is_file()
    summary = json.loads((out / "lr_find.json").read_text())
    assert 1e-5 <= summary["suggested_lr"] <= 10.0
    assert (out / "lr_find.csv").read_text().startswith("step,lr,loss,smoothed_loss")
