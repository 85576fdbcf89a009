"""`imgclf report`: every figure embedded, graceful with partial run directories, and a real run end to end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import make_folder
from imgclf.cli import main
from imgclf.config import TrainConfig, load_data
from imgclf.errors import UserError
from imgclf.evaluation.scores import class_scores, confused_pairs, per_sample_loss
from imgclf.reporting.report import write_report

DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def fake_run(root: Path, *, predictions: bool = True, epochs: int = 8) -> Path:
    """A run directory written by hand (no training): an overfitting history and noisy test predictions.

    The predictions use the real labels of a synthetic folder's test split, so the report can put the
    right images beside them.
    """
    data = make_folder(root / "imgs", classes=4, per_class=12, splits=True)
    cfg = TrainConfig(data=str(data), model="tiny", epochs=epochs, device="cpu")
    run = root / "run"
    run.mkdir(parents=True)
    cfg.to_yaml(run / "config.yaml")
    splits = load_data(cfg)
    (run / "classes.json").write_text(json.dumps(splits.classes))
    lines = ["epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"]
    for e in range(1, epochs + 1):
        train_acc, val_acc = min(0.99, 0.4 + 0.09 * e), min(0.75, 0.4 + 0.08 * e) - max(0, e - 5) * 0.02
        val_loss = 1.2 - 0.15 * min(e, 4) + max(0, e - 4) * 0.12
        lines.append(f"{e},{1.5 - 0.17 * e:.4f},{train_acc:.4f},{val_loss:.4f},{val_acc:.4f},0.1,{2.0 * e}")
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    steps = np.arange(1, 10 * epochs + 1)
    lr = np.minimum(steps / 20, (10 * epochs - steps) / (10 * epochs - 20)) * 0.2
    np.savetxt(run / "lr_schedule.csv", np.c_[steps, lr], delimiter=",", header="step,lr", comments="", fmt="%g")
    metrics = {"val_accuracy": 0.65, "test_accuracy": 0.6, "best_epoch": 5, "epochs_run": epochs,
               "train_seconds": 16.0, "images_per_second": 120.0, "model": "tiny", "num_params": 1484}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        rng = np.random.default_rng(0)
        for name in ("val", "test"):
            labels = splits.test.labels if name == "test" else splits.val.labels
            logits = rng.normal(0, 1.0, (len(labels), 4)).astype(np.float32)
            logits[np.arange(len(labels)), labels] += 1.5
            logits[labels == 2, 3] += 2.0  # a systematic confusion: class_2 taken for class_3
            np.savez(run / f"predictions_{name}.npz", logits=logits * 3, labels=labels)
    return run


def embedded_vs_written(run: Path) -> tuple[int, int]:
    html = (run / "report.html").read_text()
    return len(DATA_URI.findall(html)), len(list((run / "figures").glob("*.png")))


def test_report_embeds_every_figure(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    embedded, written = embedded_vs_written(run)
    assert written == 7 and embedded == written  # ... reliability, coverage_accuracy
    html = out.read_text()
    assert "src=\"figures/" not in html and "<script" not in html  # self-contained, nothing fetched
    md = (run / "report.md").read_text()
    for png in (run / "figures").glob("*.png"):
        assert f"(figures/{png.name})" in md
    assert "Overfitting" in md and "--early-stop" in md  # the diagnosis, in words, with a next step
    assert "class_2" in md and "class_3" in md  # the planted confusion is named among the pairs
    assert "Highest-loss test images" in md and "Not shown" not in md
    assert "expected calibration error" in md and "Temperature scaling" in md
    assert "Reject option" in md and "test accuracy when answered" in md  # thresholds chosen on val, checked on test
    lacks = md.split("What this run directory lacks")[1].split("##")[0]
    assert "checkpoints/last.pt" in lacks and "npz" not in lacks and "csv" not in lacks  # only the checkpoints
    write_report(run)  # rewriting replaces the figures rather than piling them up
    assert embedded_vs_written(run) == (7, 7)


def test_report_without_predictions_degrades(tmp_path: Path) -> None:
    """A NumPy-network-like run: config with foreign keys, history, metrics, classes; nothing else."""
    run = fake_run(tmp_path, predictions=False)
    (run / "lr_schedule.csv").unlink()
    (run / "config.yaml").write_text("data: digits\nhidden: [128, 64]\noptimizer: adam\nepochs: 8\n")
    out = write_report(run)
    embedded, written = embedded_vs_written(run)
    assert embedded == written == 2  # learning curves and the per-epoch LR
    md = (run / "report.md").read_text()
    assert "predictions_test.npz" in md and "lr_schedule.csv" in md and "checkpoints/last.pt" in md
    assert "## Diagnosis" in md and "Learning curves" in md
    assert "<h2" in out.read_text()


def test_report_survives_moved_data(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    shutil.rmtree(tmp_path / "imgs")
    write_report(run)
    md = (run / "report.md").read_text()
    assert "Not shown" in md and "| index | true | predicted |" in md
    embedded, written = embedded_vs_written(run)
    assert embedded == written == 6


def test_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "not found" in capsys.readouterr().err


def test_scores_from_confusion() -> None:
    cm = np.array([[8, 2, 0], [0, 5, 5], [0, 0, 10]])
    labels = np.repeat(np.arange(3), cm.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in cm])
    scores = class_scores(labels, pred, 4)  # a fourth class nobody has or is called: zeros, not NaN
    assert scores.confusion[:3, :3].tolist() == cm.tolist() and not scores.confusion[3].any()
    assert scores.precision.tolist() == pytest.approx([1.0, 5 / 7, 10 / 15, 0.0])
    assert scores.recall.tolist() == pytest.approx([0.8, 0.5, 1.0, 0.0]) and scores.support.tolist() == [10, 10, 10, 0]
    assert scores.f1[0] == pytest.approx(2 * 0.8 / 1.8) and scores.f1[3] == 0.0
    assert confused_pairs(cm)[0] == (1, 2, 5, 0.5)


def test_per_sample_loss_is_stable_cross_entropy() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, 0.0]])
    assert per_sample_loss(logits, np.array([1, 0])).tolist() == pytest.approx([1000.0, np.log(2)])


def test_report_of_a_real_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=16, splits=True)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "tiny", "--epochs", "2", "--batch-size", "16",
                 "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    embedded, written = embedded_vs_written(run)
    assert embedded == written == 9  # with the two Grad-CAM grids (a real run has its checkpoint)


def test_skipped_files_are_counted_in_metrics_and_named_in_the_report(tmp_path: Path) -> None:
    from imgclf.training.run import train

    data = make_folder(tmp_path / "imgs", classes=3, per_class=10, splits=True)
    (data / "train" / "class_0" / "broken.png").write_bytes(b"not an image at all")
    result = train(TrainConfig(data=str(data), model="tiny", epochs=1, batch_size=8, quiet=True, device="cpu",
                               out=str(tmp_path / "run")))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["skipped_files"]["count"] == 1 and "broken.png" in metrics["skipped_files"]["first"][0]
    assert "broken.png" in write_report(result.run_dir).with_suffix(".md").read_text()
