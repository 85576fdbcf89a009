"""The command line: bad input is one line on stderr and exit 2; evaluate and predict print JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import imgclf, make_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_folder(tmp_path_factory.mktemp("data") / "imgs", classes=3, per_class=20, splits=True)
    run = root.parent / "run"
    result = imgclf("train", "--data", str(root), "--model", "tiny", "--epochs", "3", "--batch-size", "16",
                    "--out", str(run), "--quiet", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/folder"], "data not found"),
    (["train", "--data", "digits", "--model", "nonet"], "unknown model"),
    (["train", "--data", "digits", "--set", "learning_rat=0.1"], "unknown config key"),
    (["train", "--data", "digits", "--set", "epochs=many"], "must be an integer"),
    (["train", "--data", "digits", "--pretrained"], "no local pretrained weights"),
    (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint not found"),
    (["predict", "--checkpoint", "/no/such.pt", "x.png"], "checkpoint not found"),
])
def test_user_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = imgclf(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_config_file_and_foreign_checkpoint(tmp_path: Path, trained: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nnot_a_key: 1\n")
    result = imgclf("train", "--data", "digits", "--config", str(bad))
    assert result.returncode == 2 and "not_a_key" in result.stderr
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not a checkpoint at all")
    result = imgclf("evaluate", "--checkpoint", str(fake))
    assert result.returncode == 2 and "not an imgclf checkpoint" in result.stderr
    again = imgclf("train", "--data", "digits", "--out", str(trained))
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (trained / "checkpoints" / "last.pt").is_file()  # nothing already written was lost


def test_evaluate_and_predict_json(trained: Path) -> None:
    result = imgclf("evaluate", "--checkpoint", str(trained / "checkpoints" / "last.pt"), "--tta")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"accuracy", "loss", "per_class_accuracy", "confusion_matrix"}
    assert sum(map(sum, report["confusion_matrix"])) == report["num_images"] == 18  # 6 test images a class
    metrics = json.loads((trained / "metrics.json").read_text())
    plain = json.loads(imgclf("evaluate", "--checkpoint", str(trained / "checkpoints" / "last.pt")).stdout)
    assert plain["accuracy"] == pytest.approx(metrics["test_accuracy"])

    images = sorted((trained.parent / "imgs" / "test" / "class_1").glob("*.png"))[:3]
    result = imgclf("predict", "--checkpoint", str(trained / "checkpoints" / "last.pt"), *map(str, images),
                    "--top-k", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, images))
    assert all(len(line["top_k"]) == 2 and line["label"] == line["top_k"][0]["label"] for line in lines)
