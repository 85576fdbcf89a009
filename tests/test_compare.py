"""`imgclf compare`: variants files, presets, fraction sweeps, and the JSON + HTML they write."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import make_folder
from imgclf import config
from imgclf.cli import main
from imgclf.config import TrainConfig
from imgclf.errors import UserError
from imgclf.experiments import compare, verdict
from imgclf.experiments.compare import run_compare
from imgclf.experiments.variants import Study, approach_of, load_preset, load_variants_file, plan_runs

RUN_FIELDS = {"name", "approach", "train_fraction", "val_accuracy", "test_accuracy", "train_seconds", "run_dir"}
DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def _base(root: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(data=str(root), model="tiny", epochs=2, batch_size=16, lr=0.05, device="cpu", quiet=True, **kw)


def _check_outputs(out: Path) -> dict[str, Any]:
    comparison = json.loads((out / "comparison.json").read_text())
    assert isinstance(comparison["verdict"], str) and comparison["verdict"]
    for run in comparison["runs"]:
        assert RUN_FIELDS <= set(run), run
        assert run["approach"] in ("scratch", "finetune", "linear_probe")
        assert (Path(run["run_dir"]) / "metrics.json").is_file() and Path(run["run_dir"]).parent == out / "runs"
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    figures = list((out / "figures").glob("*.png"))
    assert len(DATA_URI.findall(html)) == len(figures) >= 3
    hinted = re.search(r"`imgclf report ([^`]+)`", (out / "report.md").read_text())
    assert hinted and (Path(hinted.group(1)) / "metrics.json").is_file(), "the report's hint names no run"
    return comparison


def test_compare_with_a_variants_file_and_fractions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=20, splits=True)
    variants = tmp_path / "variants.yaml"
    variants.write_text("plain: {}\nregularized:\n  dropout: 0.3\n  weight_decay: 0.001\n")
    out = tmp_path / "cmp"
    code = main(["compare", "--data", str(data), "--model", "tiny", "--epochs", "2", "--batch-size", "16",
                 "--lr", "0.05", "--device", "cpu", "--quiet", "--out", str(out), "--variants", str(variants),
                 "--fractions", "0.5,1.0"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["verdict"]
    comparison = _check_outputs(out)
    runs = comparison["runs"]
    assert [r["name"] for r in runs] == ["plain_f0.5", "regularized_f0.5", "plain_f1", "regularized_f1"]
    assert [r["train_fraction"] for r in runs] == [0.5, 0.5, 1.0, 1.0]
    half, full = runs[0], runs[2]
    assert half["train_images"] * 2 == full["train_images"]
    assert all(r["approach"] == "scratch" and r["test_accuracy"] is not None for r in runs)
    assert (out / "figures" / "fractions.png").is_file()
    config = (Path(runs[1]["run_dir"]) / "config.yaml").read_text()
    assert "dropout: 0.3" in config and "train_fraction: 0.5" in config  # each run is a normal run directory


def test_regularization_preset_reports_the_gap(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=16, splits=True)
    out = tmp_path / "reg"
    comparison = run_compare(_base(data, subset=30), out, preset="regularization")
    _check_outputs(out)
    runs = {r["variant"]: r for r in comparison["runs"]}
    assert list(runs) == ["none", "augmentation", "weight_decay", "dropout", "label_smoothing", "all"]
    for r in runs.values():
        assert r["train_images"] == 30 and r["approach"] == "scratch"
        assert r["train_val_gap"] == pytest.approx(r["train_accuracy"] - r["val_accuracy"])
        assert "test_gain" in r and "gap_closed" in r
    none_cfg = (Path(runs["none"]["run_dir"]) / "config.yaml").read_text()
    for line in ("crop_pad: 0", "flip: false", "weight_decay: 0.0", "dropout: 0.0", "label_smoothing: 0.0"):
        assert line in none_cfg
    assert "gap" in comparison["verdict"] and (out / "figures" / "gap.png").is_file()


def test_transfer_preset_plans_scratch_against_finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preset = load_preset("transfer")
    assert set(preset.variants) == {"scratch", "finetune"} and preset.judge == "ranking"
    assert preset.variants["finetune"] == {"model": "efficientnet_lite2", "pretrained": True, "width": 1.0}
    # Fine-tuning runs at the weights' own size (decided at resolution) unless the user gives --image-size.
    for given, expected in ((None, [None, None]), (96, [96, 96])):
        sized = plan_runs(_base(tmp_path, image_size=given), preset.variants, tmp_path / "o", None, None)
        assert [p.cfg.image_size for p in sized] == expected
    # The pretrained model may not be registered yet: plan with a stand-in so this checks only the plan.
    monkeypatch.setitem(preset.variants, "finetune", {"model": "tiny", "weights": "w.pt"})
    plans = plan_runs(_base(tmp_path), preset.variants, tmp_path / "out", [0.1, 1.0], budget=5.0)
    assert [p.name for p in plans] == ["scratch_f0.1", "finetune_f0.1", "scratch_f1", "finetune_f1"]
    assert all(p.cfg.time_budget == 5.0 for p in plans)
    assert [approach_of(p.cfg) for p in plans[:2]] == ["scratch", "finetune"]
    assert approach_of(plans[1].cfg.replace(strategy="linear_probe")) == "linear_probe"


def test_transfer_preset_runs_with_a_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default preset end to end, its fine-tuned model swapped for a tiny one starting from saved weights."""

    from imgclf.models import build_model

    data = make_folder(tmp_path / "imgs", classes=3, per_class=12, splits=True)
    weights = tmp_path / "tiny.pt"
    torch.save(build_model("tiny", 3).state_dict(), weights)
    def stand_in(name: str) -> Study:
        preset = load_preset(name)
        preset.variants["finetune"] = {"model": "tiny", "weights": str(weights)}
        return preset

    monkeypatch.setattr(compare, "load_preset", stand_in)
    out = tmp_path / "tr"
    comparison = run_compare(_base(data), out)
    assert [r["approach"] for r in comparison["runs"]] == ["scratch", "finetune"]
    _check_outputs(out)
    # The report is rendered from what the folder holds, so `imgclf report DIR` draws it again, unchanged.
    written = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == written
    _check_outputs(out)


def test_presets_declare_their_behaviour() -> None:
    """How a preset is judged is data in its YAML, checked when it loads; nothing tests a preset's name."""
    regularization = load_preset("regularization")
    assert regularization.judge == "gap" and regularization.combined == ["all"]
    assert regularization.reference == "none" and regularization.base_if_unset == {"subset": 2000}
    with pytest.raises(UserError, match="judge must be one of"):
        Study("x", {"a": {}, "b": {}}, judge="vibes")
    with pytest.raises(UserError, match="'c' is not one of its variants"):
        Study("x", {"a": {}, "b": {}}, combined=["c"])
    assert Study("x", {"a": {}, "b": {}}).reference == "a"


def test_bad_variants_fail_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=4)
    variants = tmp_path / "v.yaml"
    variants.write_text("good: {lr: 0.1}\nbad: {learning_rate: 0.1}\n")
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--out", str(out), "--variants", str(variants)]) == 2
    err = capsys.readouterr().err
    assert "variant 'bad'" in err and "learning_rate" in err and not (out / "runs").exists()
    for text, message in [("- a\n- b\n", "mapping"), ("x y: {}\n", "variant name"), ("a: 3\n", "config keys"),
                          ("a: {if_unset: 3}\n", "if_unset must map")]:
        variants.write_text(text)
        with pytest.raises(UserError, match=message):
            load_variants_file(variants)
    with pytest.raises(UserError, match="unknown preset"):
        run_compare(_base(data), out, preset="nope")
    with pytest.raises(UserError, match="fractions"):
        run_compare(_base(data), out, fractions="0,1")


def _record(variant: str, train: float, val: float, test: float, seconds: float = 10.0, fraction: float = 1.0,
            approach: str = "scratch", images: int = 1000) -> dict[str, Any]:
    return {"name": variant, "variant": variant, "approach": approach, "train_fraction": fraction,
            "train_accuracy": train, "val_accuracy": val, "test_accuracy": test, "train_val_gap": train - val,
            "train_seconds": seconds, "model": "fastcnn", "train_images": images}


def test_regularization_verdict_names_what_closed_the_gap() -> None:
    records = [_record("none", 1.00, 0.50, 0.50), _record("augmentation", 0.80, 0.65, 0.64),
               _record("dropout", 0.95, 0.50, 0.49), _record("all", 0.75, 0.68, 0.67)]
    verdict.gap_shares(records, "none")
    assert records[1]["gap_closed"] == pytest.approx(0.7) and records[1]["test_gain"] == pytest.approx(0.14)
    text = verdict.verdict_text(records, "gap", "none", "test", 10_000, combined=["all"])
    assert "gap of 50.0 points" in text and "augmentation closed 70% of it (gap 15.0), test accuracy +14.0" in text
    assert "dropout closed 10% of it (gap 45.0), test accuracy -1.0 (noise)" in text
    assert "dropout closed the gap by fitting the training images less" in text
    assert "most useful regularizer here is augmentation" in text and "+14.0 points" in text


def test_transfer_verdict_with_fractions_and_noise() -> None:
    records = [_record("scratch", 0.9, 0.60, 0.30, 5.0, 0.1, images=100),
               _record("finetune", 0.9, 0.80, 0.75, 20.0, 0.1, "finetune", images=100),
               _record("scratch", 0.9, 0.70, 0.70, 50.0), _record("finetune", 0.9, 0.90, 0.90, 200.0, 1.0, "finetune")]
    text = verdict.verdict_text(records, "ranking", "scratch", "test", 10_000)
    assert text.startswith("finetune (fastcnn, fine-tuned) wins: 90.0% test accuracy vs 70.0%")
    assert "+20.0 points" in text and "4.0x the training time" in text
    assert "With 10% of the training data (100 images)" in text and "beats scratch on 100%" in text
    tie = [_record("a", 0.9, 0.8, 0.801), _record("b", 0.9, 0.8, 0.800)]
    assert "within noise" in verdict.verdict_text(tie, "ranking", "a", "test", 10_000)


def test_same_budget_by_default_or_until_the_plateau(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --epochs or --budget every run gets one derived wall-clock budget; with --early-stop each
    trains until its validation accuracy stops improving; the report says which."""
    data = make_folder(tmp_path / "imgs", classes=3, per_class=12, splits=True)
    variants = tmp_path / "v.yaml"
    variants.write_text("small: {}\nwide:\n  width: 2.0\n")
    monkeypatch.setattr(config, "BUDGET_RANGE", (3.0, 3.0))  # the plan decides the budget and the seeds
    # small data and a 3 s budget would be repeated by default (3 seeds); a 0 s wall for repeats keeps 1 here,
    # and the budget is kept: room for 2 seeds would need less than the floor
    monkeypatch.setattr(config, "SEEDS_WALL_SECONDS", 0.0)
    base = _base(data).replace(epochs=None)
    timed = run_compare(base, tmp_path / "budget", variants_file=variants)
    assert timed["stopping"] == "budget" and timed["budget_seconds"] == 3.0
    assert timed["seeds"] == [0] and "2 seeds of 2 runs at 3 s would take" in timed["seeds_reason"]
    assert [r["name"] for r in timed["runs"]] == ["small", "wide"]
    for run in timed["runs"]:
        written = (Path(run["run_dir"]) / "config.yaml").read_text()
        assert "time_budget: 3.0" in written and run["train_seconds"] <= 3.0 + 2.0
    assert "3 s of training each" in (tmp_path / "budget" / "report.md").read_text()

    monkeypatch.setattr(compare, "PLATEAU_MAX_EPOCHS", 6)
    plateau = run_compare(base.replace(early_stop_patience=1, lr=1e-4), tmp_path / "plateau", variants_file=variants)
    assert plateau["stopping"] == "plateau" and plateau["budget_seconds"] is None and plateau["seeds"] == [0]
    assert all(r["epochs_run"] <= 6 for r in plateau["runs"])
    assert "until validation accuracy stopped improving" in (tmp_path / "plateau" / "report.md").read_text()


def test_a_bad_weights_file_fails_before_any_run_trains(tmp_path: Path) -> None:
    """Every variant is built before the first one trains: weights that do not fit cost seconds, not a budget."""
    import torch

    from helpers import imgclf

    data = make_folder(tmp_path / "imgs", classes=3, per_class=12, splits=True)
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(3)}, bad)
    result = imgclf("compare", "--data", str(data), "--weights", str(bad), "--out", str(tmp_path / "cmp"),
                    "--budget", "30")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list((tmp_path / "cmp").glob("runs/*/checkpoints/last.pt"))
