"""`imgclf inspect`: planted duplicates, leakage, a corrupt file and flipped labels are found; `imgclf train`
warns about exact copies across splits; the near-duplicate search agrees with a brute force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import imgclf, make_folder
from imgclf.cli import main
from imgclf.commands.inspect import inspect_data
from imgclf.evaluation import inspection
from imgclf.evaluation.inspection import confident_label_issues, near_pairs, warn_exact_duplicates

DATA_URI = 'src="data:image/png;base64,'


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train/test of three classes with one of each problem planted."""
    root = make_folder(tmp_path / "imgs", classes=3, per_class=12, size=32, splits=True)
    shutil.copy(root / "train/class_0/0.png", root / "train/class_0/copy.png")  # within a class
    shutil.copy(root / "train/class_0/1.png", root / "train/class_1/conflict.png")  # across classes
    shutil.copy(root / "train/class_2/2.png", root / "test/class_2/leak.png")  # across splits
    Image.open(root / "train/class_1/3.png").resize((48, 48), Image.Resampling.BICUBIC).save(
        root / "train/class_1/bigger.jpg", quality=85)  # a near duplicate: resized and re-encoded
    (root / "train/class_2/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_inspect_finds_every_planted_problem(planted: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = imgclf("inspect", "--data", str(planted), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["report"] == str(out / "inspection.html") and f"wrote {out}" in result.stderr
    report = json.loads((out / "inspection.json").read_text())

    assert report["unreadable"] == {"count": 1, "files": ["train/class_2/broken.png"]}
    assert report["splits"] == {"train": 3 * 12 + 3, "test": 3 * 4 + 1}
    assert report["counts"]["class_1"] == {"train": 14, "test": 4}
    groups = {frozenset(i["name"] for i in g["images"]): g["kinds"] for g in report["duplicates"]["exact"]["list"]}
    assert groups == {frozenset({"train/class_0/0.png", "train/class_0/copy.png"}): ["within_class"],
                      frozenset({"train/class_0/1.png", "train/class_1/conflict.png"}): ["across_classes"],
                      frozenset({"train/class_2/2.png", "test/class_2/leak.png"}): ["across_splits"]}
    near = report["duplicates"]["near"]
    assert [{p["a"]["name"], p["b"]["name"]} for p in near["list"]] == [{"train/class_1/3.png",
                                                                        "train/class_1/bigger.jpg"}]
    assert near["groups"] == 1 and near["list"][0]["correlation"] >= near["min_correlation"]
    assert report["sizes"]["width"] == {"min": 32.0, "median": 32.0, "max": 48.0}

    html = (out / "inspection.html").read_text()
    assert html.count(DATA_URI) >= 5  # counts, samples, sizes, exact and near duplicates: embedded, self-contained
    assert "train/class_2/broken.png" in html and "Leakage" in html


def test_clean_data_reports_nothing(tmp_path: Path) -> None:
    """No false alarms on distinct images; the report lands in runs/inspect-DATA-TIME, like a run directory."""
    from imgclf.commands.inspect import run_inspection

    root = make_folder(tmp_path / "imgs", classes=3, per_class=30, size=32)
    summary = run_inspection(str(root))
    assert Path(summary["out"]).parent == Path("runs") and Path(summary["out"]).name.startswith("inspect-imgs-")
    result = json.loads(Path(summary["json"]).read_text())
    assert result["splits"] == {"all": 90} and result["unreadable"]["count"] == 0
    assert result["duplicates"]["exact"]["groups"] == 0 and result["duplicates"]["near"]["pairs"] == 0
    assert "No leakage, label conflict or unreadable file found." in Path(summary["report"]).read_text()


def test_train_warns_about_exact_copies_across_splits(planted: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from imgclf.config import TrainConfig
    from imgclf.training.run import train

    train(TrainConfig(data=str(planted), model="tiny", epochs=1, batch_size=16, quiet=True, device="cpu",
                      out=str(tmp_path / "run")))
    warning = [line for line in capsys.readouterr().err.splitlines() if "exact copies" in line]
    assert len(warning) == 1 and warning[0].startswith("imgclf: warning: ")
    assert "labelled with another class" in warning[0] and f"imgclf inspect --data {planted}" in warning[0]


def test_no_duplicate_warning_on_clean_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgclf.data import load_splits

    splits = load_splits(str(make_folder(tmp_path / "imgs", classes=3, per_class=12, splits=True)))
    warn_exact_duplicates(splits, "imgs")
    assert capsys.readouterr().err == ""
    splits.val.images[0] = splits.train.images[5]  # one leaked copy
    warn_exact_duplicates(splits, "imgs")
    assert "1 image(s) in one split are exact copies" in capsys.readouterr().err


def test_flipped_labels_are_suspected(checkpoint: Path, tmp_path: Path) -> None:
    """The session's tiny checkpoint scores the test split and the val it carved from train: the images
    moved into another class's folder come out as suspects, and few others do."""
    root = make_folder(tmp_path / "imgs", classes=3, per_class=20, splits=True, seed=7)
    flipped = set()
    for n, (given, true) in enumerate([(1, 0), (2, 1), (0, 2)]):
        moved = root / f"test/class_{given}/flipped{n}.png"
        shutil.move(root / f"test/class_{true}/{n}.png", moved)
        flipped.add(moved.relative_to(root).as_posix())
    result, _ = inspect_data(str(root), checkpoint=str(checkpoint), device="cpu")
    issues = result["label_issues"]
    assert issues["scored"] == {"val (carved)": 6, "test": 18} and issues["val_carved"]
    suspects = {row["name"] for row in issues["list"]}
    assert flipped <= suspects and len(suspects) <= len(flipped) + 1, issues["list"]
    assert all(row["likely"] != row["class"] for row in issues["list"])


def test_confident_learning_flags_the_confidently_other() -> None:
    """Thresholds are the per-class mean self-confidence; only a sample confidently of another class is
    flagged (an unsure one is not), least self-confident first."""
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3],  # labelled 0: mean self-confidence 0.8
                      [0.1, 0.9], [0.2, 0.8], [0.95, 0.05], [0.45, 0.55]])  # labelled 1: mean 0.575
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    suspects, likely, thresholds = confident_label_issues(probs, labels)
    assert np.allclose(thresholds, [0.8, 0.575]) and suspects.tolist() == [5] and likely[5] == 0


def test_near_pairs_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked XOR-popcount search (forced into many small chunks) equals the plain double loop."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    codes[150:200] = codes[:50] ^ (np.uint64(1) << rng.integers(0, 64, 50).astype(np.uint64))  # 1-bit neighbours
    monkeypatch.setattr(inspection, "PAIR_BLOCK", 300 * 7)
    found = {tuple(row) for row in near_pairs(codes, 3).tolist()}
    brute = {(i, j, int(bin(int(codes[i] ^ codes[j])).count("1"))) for i in range(300) for j in range(i + 1, 300)
             if bin(int(codes[i] ^ codes[j])).count("1") <= 3}
    assert found == brute and len(found) >= 50


def test_labels_csv_is_inspected_like_a_folder(tmp_path: Path) -> None:
    """--data labels.csv: the rows' labels count, so a copy listed under another label is a conflict."""
    root = make_folder(tmp_path / "imgs", classes=2, per_class=6, size=32)
    shutil.copy(root / "class_0/0.png", root / "copy.png")
    rows = [f"{f.relative_to(root).as_posix()},{f.parent.name}" for f in sorted(root.glob("class_*/*.png"))]
    (root / "labels.csv").write_text("\n".join(["file,label", *rows, "copy.png,class_1"]) + "\n")
    result, _ = inspect_data(str(root / "labels.csv"))
    assert result["counts"] == {"class_0": {"train": 6}, "class_1": {"train": 7}}  # rows without a split train
    [group] = result["duplicates"]["exact"]["list"]
    assert group["kinds"] == ["across_classes"] and {i["name"] for i in group["images"]} == {"class_0/0.png",
                                                                                           "copy.png"}


def test_builtin_digits_are_split_as_training_splits_them() -> None:
    result, _ = inspect_data("digits")
    assert result["splits"] == {"train": 1293, "val": 144, "test": 360} and result["sizes"]["distinct"] == 1


@pytest.mark.parametrize("data, message", [("/no/such/folder", "data not found"),
                                           ("{file}", "not a folder or an archive")])
def test_bad_data_is_one_line(data: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("no images")
    assert main(["inspect", "--data", data.format(file=a_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("imgclf: error: ") and message in err, err
    assert not Path("runs").exists()
