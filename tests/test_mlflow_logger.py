"""--logger mlflow: the run read back with MLflow's own client holds the plan as params, one value per epoch of
every history column, the final scores and the checkpoints and report as artifacts; a resumed run continues the
same MLflow run with each epoch once; without mlflow installed the run is refused in one line before it starts."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from helpers import free_port, make_folder  # noqa: E402
from imgclf.cli import main  # noqa: E402
from imgclf.config import TrainConfig  # noqa: E402
from imgclf.models.checkpoint import load_checkpoint  # noqa: E402
from imgclf.training.mlflow_logger import RUN_DIR_TAG, flat_params  # noqa: E402
from imgclf.training.run import train  # noqa: E402
from test_midepoch_resume import KillAfter, Killed  # noqa: E402


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private file store; the opt-in the logger sets for it is undone after the test."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return uri


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _runs(store: str) -> tuple[MlflowClient, list[Any]]:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("imgclf")
    return client, client.search_runs([experiment.experiment_id])


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    found = {}
    for item in client.list_artifacts(run_id, path):
        found.update(_artifacts(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return found


def test_a_digits_run_reads_back_with_mlflows_client(store: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    code, err = _cli(["train", "--data", "digits", "--model", "tiny", "--epochs", "2", "--device", "cpu",
                      "--lr", "0.1", "--quiet", "--logger", "mlflow", "--out", str(run_dir)], capsys)
    assert code == 0, err
    client, [run] = _runs(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags[RUN_DIR_TAG] == str(run_dir.resolve())

    params = run.data.params
    assert params["model"] == "tiny" and float(params["lr"]) == 0.1 and params["epochs"] == "2"
    assert params["data"] == "digits" and params["logger"] == "mlflow" and params["grad_clip"] == "null"

    history = list(csv.DictReader(open(run_dir / "history.csv")))
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        logged = client.get_metric_history(run.info.run_id, column)
        assert [m.step for m in logged] == [1, 2], column  # one value an epoch, at step = epoch
        assert [m.value for m in logged] == pytest.approx([float(r[column]) for r in history]), column
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["final/test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["final/val_loss"] == pytest.approx(metrics["val_loss"])
    assert run.data.metrics["final/num_params"] == metrics["num_params"]

    artifacts = _artifacts(client, run.info.run_id)
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "history.csv", "metrics.json",
                 "report.html", "report.md", "figures/learning_curves.png"):
        assert artifacts.get(name, 0) > 0, (name, sorted(artifacts))
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path / "down"))
    assert load_checkpoint(best)["classes"] == json.loads((run_dir / "classes.json").read_text())


def test_a_resumed_run_continues_its_mlflow_run_with_each_epoch_once(store: str, tmp_path: Path) -> None:
    data = make_folder(tmp_path / "imgs", classes=3, per_class=24, splits=True)
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(data), model="tiny", epochs=3, batch_size=8, quiet=True, device="cpu", lr=0.05,
                      logger="mlflow", out=str(run), checkpoint_every=3)
    with pytest.raises(Killed):  # 6 steps an epoch: epoch 1 logged, killed mid-epoch 2 after its step-9 checkpoint
        train(cfg, extra_callbacks=[KillAfter(11)])
    client, [killed] = _runs(store)
    assert killed.info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "val_acc")] == [1]
    train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"))
    client, [resumed] = _runs(store)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    for column in ("train_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(resumed.info.run_id, column)] == [1, 2, 3], column


def test_params_keep_mlflows_limits() -> None:
    plan = {"a": None, "b": True, "c": [1, 2], "extra": {"sizing": {"width": 0.5}}, "long": "x" * 50}
    assert flat_params(plan, 250, 20) == {"a": "null", "b": "true", "c": "[1, 2]", "extra.sizing.width": "0.5",
                                          "long": "x" * 17 + "..."}


def test_a_missing_mlflow_is_one_line_and_exit_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the package were not installed
    code, err = _cli(["train", "--data", "digits", "--model", "tiny", "--epochs", "1", "--device", "cpu",
                      "--logger", "mlflow", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "pip install 'imgclf[mlflow]'" in err, err
    assert not (tmp_path / "run").exists()


def test_an_unreachable_server_is_one_line_and_exit_2_in_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.monotonic()
    code, err = _cli(["train", "--data", "digits", "--model", "tiny", "--epochs", "1", "--device", "cpu",
                      "--logger", "mlflow", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "MLflow at http://127.0.0.1" in err, err
    assert time.monotonic() - started < 60 and not (tmp_path / "run").exists()
