"""Multi-label data: a labels CSV with several labels a row (`a;b`, or a 0/1 column per class) trains sigmoid
outputs with binary cross-entropy, picks best.pt by mAP, keeps per-class thresholds chosen on validation in the
checkpoint, and scores mAP, per-class AP and F1, micro/macro F1 and exact match."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.cli import main
from imgclf.data import load_splits
from imgclf.data.csvlabels import CsvListing
from imgclf.errors import UserError
from imgclf.evaluation.multilabel import choose_thresholds, multilabel_scores
from imgclf.models.checkpoint import load_checkpoint, task_of

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 230)}  # a label: a square of its colour


def shapes_image(present: list[str], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Grey noise with a 9-px square of each present colour, each in its own quadrant (none hides another)."""
    image = rng.normal(110, 25, (size, size, 3))
    half = size // 2
    for name, slot in zip(present, rng.permutation(4), strict=False):
        y, x = (slot // 2) * half + rng.integers(0, half - 9), (slot % 2) * half + rng.integers(0, half - 9)
        image[y:y + 9, x:x + 9] = COLOURS[name]
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_set(root: Path, count: int, columns: bool = False, seed: int = 0) -> Path:
    """root/I.png and root/labels.csv: each colour present with probability 1/2; every fifth image is test.
    `columns`: file,red,green,blue,split with 0/1 cells (an image may have none); else file,label,split with
    `red;blue` cells (at least one label a row)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = [f"file,{','.join(COLOURS)},split" if columns else "file,label,split"]
    for i in range(count):
        present = [c for c in COLOURS if rng.random() < 0.5]
        if not columns and not present:
            present = [list(COLOURS)[i % 3]]
        Image.fromarray(shapes_image(present, rng)).save(root / f"{i}.png")
        split = "test" if i % 5 == 0 else ""
        cells = [str(int(c in present)) for c in COLOURS] if columns else [";".join(present)]
        rows.append(",".join([f"{i}.png", *cells, split]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One multi-label run of the tiny net on 120 shape images (a few seconds), shared by the tests below."""
    base = tmp_path_factory.mktemp("multilabel")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE", str(tmp_path_factory.getbasetemp() / "imgclf-cache"))
        data = shapes_set(base / "shapes", 120)
        assert main(["train", "--data", str(data), "--model", "tiny", "--epochs", "5", "--batch-size", "16",
                     "--device", "cpu", "--quiet", "--out", str(base / "run")]) == 0
        yield base / "run"


# -- data -------------------------------------------------------------------------------------------------------

def test_both_csv_forms_give_multi_hot_labels(tmp_path: Path) -> None:
    for columns in (False, True):
        splits = load_splits(str(shapes_set(tmp_path / f"c{columns}", 40, columns=columns)), val_fraction=0.25)
        assert splits.multilabel and splits.classes == ["blue", "green", "red"]
        assert splits.train.labels.shape == (24, 3) and splits.train.labels.dtype == np.float32
        assert (len(splits.val), len(splits.test)) == (8, 8)
        assert set(np.unique(splits.train.labels)) <= {0.0, 1.0}
        assert (splits.train.labels.sum(1) == 0).any() == columns  # only the column form can say "none"
    again = load_splits(str(tmp_path / "cTrue" / "labels.csv"), val_fraction=0.25)  # a cache hit, same carve
    assert np.array_equal(again.val.labels, splits.val.labels)


def test_single_labels_stay_single_label(tmp_path: Path) -> None:
    path = shapes_set(tmp_path, 20)
    path.write_text(path.read_text().replace(";", "-"))  # `red-blue` is one class name, not two labels
    listing = CsvListing(path)
    assert not listing.multilabel and ("red-green-blue", "3.png") in listing.layout()["train"]


def _set_cell(text: str, row: int, column: int, value: str) -> str:
    """The CSV text with the cell at spreadsheet `row` (the header is 1) and 0-based `column` replaced."""
    lines = text.splitlines()
    cells = lines[row - 1].split(",")
    cells[column] = value
    lines[row - 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("row", "column", "value", "message"), [
    (3, 1, "2", r"row 3: column 'red' must hold 0 or 1, got '2'"),
    (1, 3, "red", "distinct, non-empty names"),
    (1, 0, "path", r"missing column\(s\) file, label"),
])
def test_bad_column_csvs_are_refused_naming_the_row(tmp_path: Path, row: int, column: int, value: str,
                                                     message: str) -> None:
    path = shapes_set(tmp_path, 12, columns=True)
    path.write_text(_set_cell(path.read_text(), row, column, value))
    with pytest.raises(UserError, match=message):
        load_splits(str(path))


def test_a_class_column_without_a_one_is_refused(tmp_path: Path) -> None:
    path = shapes_set(tmp_path, 12, columns=True)
    lines = path.read_text().splitlines()
    lines = [lines[0]] + [",".join([*row.split(",")[:3], "0", row.split(",")[4]]) for row in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="class column\\(s\\) 'blue' hold no 1"):
        load_splits(str(path))


# -- scores -----------------------------------------------------------------------------------------------------

def test_thresholds_maximise_f1_and_scores_match_sklearn() -> None:
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(np.float32)  # the last class never present
    probs = np.clip(0.3 * targets + rng.random((200, 4)) * 0.7, 0, 1)
    chosen = choose_thresholds(probs, targets)
    assert chosen[3] == 0.5  # no positive: the default
    for c in range(3):  # no other cut scores a better F1 on these images
        best = max(f1_score(targets[:, c], probs[:, c] >= t) for t in np.unique(probs[:, c]))
        assert f1_score(targets[:, c], probs[:, c] >= chosen[c]) == pytest.approx(best)
    scores = multilabel_scores(probs, targets, ["a", "b", "c", "d"], chosen)
    pred = probs >= chosen
    assert scores["micro_f1"] == pytest.approx(f1_score(targets, pred, average="micro"))
    assert scores["exact_match"] == pytest.approx((pred == targets.astype(bool)).all(1).mean())
    assert scores["per_class"]["d"]["ap"] is None
    assert scores["map"] == pytest.approx(np.mean([average_precision_score(targets[:, c], probs[:, c])
                                                   for c in range(3)]))


# -- training and evaluation ------------------------------------------------------------------------------------

def test_a_multilabel_run_learns_and_keeps_its_thresholds(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["monitor"] == "map"
    assert metrics["test_map"] >= 0.9 and metrics["test_micro_f1"] >= 0.8, metrics
    config = (trained / "config.yaml").read_text()
    assert "task: multilabel" in config and "monitor: map" in config
    assert "val_map" in (trained / "history.csv").read_text().splitlines()[0]
    ckpt = load_checkpoint(trained / "checkpoints" / "best.pt")
    assert task_of(ckpt) == "multilabel"
    assert ckpt["thresholds"] == [metrics["thresholds"][c] for c in ckpt["classes"]]
    assert all(0 < t < 1 for t in ckpt["thresholds"])

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(trained / "checkpoints" / "best.pt")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["map"] == pytest.approx(metrics["test_map"], abs=1e-6)
    assert scored["thresholds"] == metrics["thresholds"]
    assert set(scored["per_class"]["red"]) == {"ap", "precision", "recall", "f1", "support", "threshold"}


def test_the_loss_smooths_targets_towards_one_half() -> None:
    from imgclf.config import TrainConfig
    from imgclf.training.losses import criterion_for

    loss = criterion_for(TrainConfig(task="multilabel", label_smoothing=0.2))
    logits, targets = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.9, 0.1]]))
    assert loss(logits, targets).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("flags", [["--mixup", "0.2"], ["--class-weights", "auto"], ["--sampler", "balanced"],
                                   ["--set", "task=multiclass"]])
def test_what_makes_no_sense_for_multilabel_is_refused(tmp_path: Path, flags: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = shapes_set(tmp_path / "shapes", 20)
    code = main(["train", "--data", str(data), "--model", "tiny", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tensorboard_logs_a_multilabel_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    data = shapes_set(tmp_path / "shapes", 30)
    assert main(["train", "--data", str(data), "--model", "tiny", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--logger", "tensorboard", "--out", str(tmp_path / "run")]) == 0  # no confusion matrix to draw
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_map_monitor_is_refused_on_single_label_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import make_folder

    code = main(["train", "--data", str(make_folder(tmp_path / "imgs", per_class=10)), "--model", "tiny", "--epochs",
                 "1", "--device", "cpu", "--quiet", "--monitor", "map", "--out", str(tmp_path / "run")])
    assert code == 2 and "multi-label" in capsys.readouterr().err


# -- predict, serve, export, report, inspect ---------------------------------------------------------------------

def _expected(trained: Path, image: Path) -> list[str]:
    """The labels the checkpoint's own logits and thresholds give `image`, most probable first."""
    from imgclf.inference.predictor import Predictor

    predictor = Predictor.load(checkpoint=str(trained / "checkpoints" / "best.pt"), device="cpu")
    probs = predictor.probabilities(predictor.preprocess([image]))[0]
    return [predictor.classes[i] for i in np.argsort(-probs) if probs[i] >= predictor.thresholds[i]]


def test_predict_answers_every_label_over_its_threshold(trained: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(trained / "checkpoints" / "best.pt")
    images = sorted(trained.parent.glob("shapes/*.png"))[:4]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, *map(str, images), "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    thresholds = dict(zip(load_checkpoint(ckpt)["classes"], load_checkpoint(ckpt)["thresholds"], strict=True))
    for image, line in zip(images, lines, strict=True):
        assert [entry["label"] for entry in line["labels"]] == _expected(trained, image)
        assert all(entry["probability"] >= thresholds[entry["label"]] for entry in line["labels"])
        assert line["label"] == (line["labels"][0]["label"] if line["labels"] else None) and len(line["top_k"]) == 2

    assert main(["predict", "--checkpoint", ckpt, *map(str, images), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "file,labels,probabilities,error"
    assert [row.split(",")[1] for row in rows[1:]] == [";".join(_expected(trained, image)) for image in images]

    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, str(images[0]), "--reject-below", "0.5"]) == 2
    assert "multi-label" in capsys.readouterr().err


def test_onnx_export_and_server_answer_like_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from imgclf.inference.predictor import Predictor
    from imgclf.inference.server import ServerSettings, create_app

    image = sorted(trained.parent.glob("shapes/*.png"))[1]
    expected = _expected(trained, image)
    assert main(["export", "--checkpoint", str(trained / "checkpoints" / "best.pt"), "--out",
                 str(tmp_path / "m.onnx")]) == 0
    onnx = Predictor.load(onnx=str(tmp_path / "m.onnx"))
    assert onnx.multilabel and [e["label"] for e in onnx.predict([image])[0]["labels"]] == expected
    assert main(["export", "--checkpoint", str(trained / "checkpoints" / "best.pt"), "--out",
                 str(tmp_path / "m8.onnx"), "--int8"]) == 2

    with TestClient(create_app(onnx, ServerSettings(max_wait_ms=1))) as client:
        answer = client.post("/predict", files={"file": ("a.png", image.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        assert [e["label"] for e in answer.json()["labels"]] == expected
        refused = client.post("/predict", params={"reject_below": 0.5},
                              files={"file": ("a.png", image.read_bytes(), "image/png")})
        assert refused.status_code == 422 and "multi-label" in refused.text
        meta = client.get("/metadata").json()
        assert meta["task"] == "multilabel" and meta["thresholds"] == pytest.approx(onnx.thresholds.tolist())


def test_report_shows_thresholds_and_precision_recall(trained: Path) -> None:
    from imgclf.reporting.report import write_report

    write_report(trained)
    text = (trained / "report.md").read_text()
    assert "## Multi-label scores (test split)" in text and "| class | threshold | AP |" in text
    assert (trained / "figures" / "precision_recall.png").is_file()
    assert "Where the model errs" not in text  # the single-label sections are left out
    # exact match near 0 is no sign of underfitting: the accuracy rules are not applied to it
    assert "not judged for a multi-label run" in text and "Underfitting" not in text


def test_inspect_counts_each_label(trained: Path, tmp_path: Path) -> None:
    from imgclf.commands.inspect import inspect_data

    data = str(trained.parent / "shapes" / "labels.csv")
    result, found = inspect_data(data)
    assert result["classes"] == ["blue", "green", "red"] and found.multilabel
    assert sum(result["counts"]["red"].values()) == sum("red" in line for line in open(data).read().splitlines())
    with pytest.raises(UserError, match="one label an image"):
        inspect_data(data, checkpoint=str(trained / "checkpoints" / "best.pt"))


@pytest.mark.slow
def test_flowers5_composites_fine_tune(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Real photos (1-2 min): 160 training and 50 test composites of two flowers5 photos, Lite0 fine-tuned for two
    epochs (epochs, not seconds: a loaded machine must not move the bound)."""
    from helpers import benchmark_json

    archive = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "flowers5.tar.xz"
    if not archive.is_file():
        pytest.skip(f"real data not present: {archive} (shared datasets folder absent)")
    result = benchmark_json(monkeypatch, capsys, "multilabel_flowers", "--train", "160", "--test", "50", "--epochs",
                            "2", "--variants", "finetune")
    tuned = result["variants"]["finetune"]
    assert tuned["test_map"] >= 0.75 and tuned["test_micro_f1"] >= 0.6, tuned
    assert set(tuned["thresholds"]) == set(result["data"]["classes"])
    answer = tuned["predict_example"]
    assert all(t["probability"] >= tuned["thresholds"][t["label"]] for t in answer["labels"]), answer
