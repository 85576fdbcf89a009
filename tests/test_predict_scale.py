"""Predictions and scores at scale: `predict FOLDER|ARCHIVE --out CSV` (columns, true labels, accuracy, bad
files, one batch of pixels in memory), `evaluate --split all`, scoring test/ without decoding train/,
folders reached through symbolic links, and link loops refused."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import imgclf, make_folder
from imgclf.commands.evaluate import evaluate_checkpoint
from imgclf.config import joined
from imgclf.data import ImageSet, load_splits
from imgclf.data.photos import PhotoSet, Preprocess
from imgclf.errors import UserError
from imgclf.inference.predictor import Predictor, predict_command


def _predict_csv(tmp_path: Path, checkpoint: Path, *inputs: Path, **kwargs: object) -> tuple[list[dict], dict, str]:
    out_csv, out, err = tmp_path / "pred.csv", io.StringIO(), io.StringIO()
    code = predict_command([str(i) for i in inputs], checkpoint=str(checkpoint), top_k=2, device="cpu", out=out,
                           err=err, csv_out=str(out_csv), **kwargs)
    assert code == 0, err.getvalue()
    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads(out.getvalue()), err.getvalue()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split folder of the checkpoint's classes: train/ (5 a class) and test/ (2 a class)."""
    return make_folder(tmp_path_factory.mktemp("labelled") / "imgs", classes=3, per_class=5, splits=True, seed=7)


def test_predict_csv_of_a_labelled_folder(tmp_path: Path, checkpoint: Path, labelled: Path) -> None:
    rows, summary, err = _predict_csv(tmp_path, checkpoint, labelled)
    files = sorted(labelled.rglob("*.png"))
    assert list(rows[0]) == ["file", "label_1", "probability_1", "label_2", "probability_2", "true_label", "correct",
                             "error"]
    assert [r["file"] for r in rows] == [str(f) for f in files]  # every image, in sorted order
    assert [r["true_label"] for r in rows] == [f.parent.name for f in files]
    expected = Predictor.load(checkpoint=str(checkpoint), device="cpu").predict(files, top_k=2)
    assert [r["label_1"] for r in rows] == [e["label"] for e in expected]
    assert [float(r["probability_1"]) for r in rows] == pytest.approx([e["probability"] for e in expected], abs=1e-5)
    assert all(r["correct"] == str(int(r["label_1"] == r["true_label"])) and not r["error"] for r in rows)
    accuracy = np.mean([r["label_1"] == r["true_label"] for r in rows])
    assert summary["images"] == summary["labelled"] == len(files) == 21 and summary["unreadable"] == 0
    assert summary["accuracy"] == pytest.approx(accuracy)
    assert f"imgclf: accuracy {accuracy:.2%} on 21 labelled images" in err
    assert "imgclf: 21/21 images" in err  # progress off a terminal: a line at each tenth, the last at the end


def test_json_lines_of_a_labelled_folder_carry_the_true_label(checkpoint: Path, labelled: Path) -> None:
    """Without --out: the JSON lines as for files, each with its true label, and the accuracy on stderr."""
    out, err = io.StringIO(), io.StringIO()
    assert predict_command([str(labelled / "test")], checkpoint=str(checkpoint), device="cpu", out=out, err=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    files = sorted((labelled / "test").rglob("*.png"))
    assert [(x["file"], x["true_label"]) for x in lines] == [(str(f), f.parent.name) for f in files]
    accuracy = np.mean([x["label"] == x["true_label"] for x in lines])
    assert err.getvalue() == (f"imgclf: accuracy {accuracy:.2%} on 6 labelled images (balanced accuracy "  # 2 a
                              f"{accuracy:.2%}, macro-F1 {_macro_f1(lines):.3f})\n")  # class: the same as accuracy


def _macro_f1(lines: list[dict]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score([x["true_label"] for x in lines], [x["label"] for x in lines], average="macro"))


def test_predict_csv_of_archives_matches_the_folder(tmp_path: Path, checkpoint: Path, labelled: Path) -> None:
    """A .tar.gz with one top folder and a .zip without: the same rows, named ARCHIVE:MEMBER."""
    folder_rows, _, _ = _predict_csv(tmp_path, checkpoint, labelled)
    tgz, zipped = tmp_path / "imgs.tar.gz", tmp_path / "imgs.zip"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(labelled, arcname="top")
    with zipfile.ZipFile(zipped, "w") as z:
        for f in sorted(labelled.rglob("*.png")):
            z.write(f, f.relative_to(labelled).as_posix())
    for archive, prefix in ((tgz, "top/"), (zipped, "")):
        rows, summary, _ = _predict_csv(tmp_path, checkpoint, archive)
        by_member = {r["file"].removeprefix(f"{archive}:{prefix}"): r for r in rows}
        assert all(r["file"].startswith(f"{archive}:{prefix}") for r in rows)
        assert summary["labelled"] == len(rows) == 21
        for r in folder_rows:
            got = by_member[Path(r["file"]).relative_to(labelled).as_posix()]
            assert (got["label_1"], got["true_label"], got["correct"]) == (r["label_1"], r["true_label"], r["correct"])


def test_unreadable_files_get_an_error_row_and_the_rest_go_on(tmp_path: Path, checkpoint: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "imgs", classes=3, per_class=4)
    (root / "class_1" / "broken.png").write_bytes((root / "class_1" / "0.png").read_bytes()[:40])
    (root / "class_2" / "notes.jpg").write_text("not an image")
    rows, summary, _ = _predict_csv(tmp_path, checkpoint, root)
    bad = {r["file"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {str(root / "class_1" / "broken.png"), str(root / "class_2" / "notes.jpg")}
    assert all("not a readable image" in e for e in bad.values())
    assert all(r["label_1"] == r["true_label"] == r["correct"] == "" for r in rows if r["error"])
    assert summary["images"] == 14 and summary["predicted"] == summary["labelled"] == 12
    assert summary["unreadable"] == 2 and "skipped 2 file(s)" in capsys.readouterr().err


def test_folder_names_that_are_not_classes_give_no_labels(tmp_path: Path, checkpoint: Path) -> None:
    root = make_folder(tmp_path / "imgs", classes=2, per_class=2)
    (root / "class_1").rename(root / "holiday")
    rows, summary, err = _predict_csv(tmp_path, checkpoint, root)
    assert "true_label" not in rows[0] and len(rows) == 4 and "accuracy" not in summary
    assert "'holiday' are not the model's classes" in err


def test_predict_holds_one_batch_of_pixels(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """300 images, batches of 8: no more than 8 decoded images are alive at any moment, and the source is read
    lazily (the first results come before the 9th file is read)."""
    root = make_folder(tmp_path / "imgs", classes=3, per_class=100, size=8)
    live, most = [0], [0]
    decode = Preprocess.decode

    def counted(self: Preprocess, source: object) -> np.ndarray:
        image = decode(self, source)
        live[0] += 1
        most[0] = max(most[0], live[0])
        weakref.finalize(image, lambda: live.__setitem__(0, live[0] - 1))
        return image

    monkeypatch.setattr(Preprocess, "decode", counted)
    rows, summary, _ = _predict_csv(tmp_path, checkpoint, root, batch_size=8, quiet=True)
    assert len(rows) == summary["images"] == 300 and 1 <= most[0] <= 8

    predictor = Predictor.load(checkpoint=str(checkpoint), device="cpu")
    read = []

    def sources() -> Iterator[tuple[str, Path]]:  # records how far it was read
        for f in sorted(root.rglob("*.png")):
            read.append(f)
            yield str(f), f

    first = next(predictor.predict_each(sources(), batch_size=8))
    assert first[0] == str(sorted(root.rglob("*.png"))[0]) and len(read) == 8


def test_predict_cli_writes_the_csv_and_prints_a_summary(tmp_path: Path, checkpoint: Path, labelled: Path) -> None:
    out = tmp_path / "p.csv"
    result = imgclf("predict", "--checkpoint", str(checkpoint), "--device", "cpu", str(labelled / "test"),
                    "--out", str(out), "--top-k", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["labelled"] == 6 and 0 <= summary["accuracy"] <= 1
    assert result.stderr.startswith("imgclf: accuracy ") and result.stderr.count("\n") == 1  # --quiet: no progress
    assert len(out.read_text().splitlines()) == 7 and not list(tmp_path.glob(".p.csv.*"))  # renamed into place


# ------------------------------------------------------------------------------------------- evaluate

def test_split_all_scores_every_image(tmp_path: Path, checkpoint: Path, labelled: Path) -> None:
    plain = make_folder(tmp_path / "plain", classes=3, per_class=7)
    report = evaluate_checkpoint(checkpoint, data=str(plain), split="all", device="cpu")
    assert report["num_images"] == 21 and report["split"] == "all"
    assert sum(map(sum, report["confusion_matrix"])) == 21
    assert evaluate_checkpoint(checkpoint, data=str(labelled), split="all", device="cpu")["num_images"] == 21
    with pytest.raises(UserError, match="no test split .*--split all"):
        evaluate_checkpoint(checkpoint, data=str(plain), split="test", device="cpu")


def test_joined_keeps_every_image_and_label_in_order() -> None:
    """--split all of a decoded source (a built-in set, an archive): its splits as one set."""
    images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    a, b = ImageSet(images[:3], np.array([0, 1, 0]), ["x", "y"]), ImageSet(images[3:], np.array([1, 1]), ["x", "y"])
    both = joined([a, b])
    assert np.array_equal(both.images, images) and both.labels.tolist() == [0, 1, 0, 1, 1]
    photos = joined([PhotoSet(list(p.images), p.labels, p.classes, 24) for p in (a, b)])
    assert isinstance(photos, PhotoSet) and len(photos.images) == 5 and photos.image_size == 24
    assert photos.labels.tolist() == [0, 1, 0, 1, 1] and np.array_equal(photos.images[4], images[4])


def test_evaluating_test_does_not_decode_train(tmp_path: Path, checkpoint: Path, labelled: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Every decode is logged to a file (the streaming loader may decode in worker processes): the test
    images all are, no training image is."""
    log = tmp_path / "decoded.txt"
    import imgclf.data.photos as photos
    import imgclf.data.sources as sources

    real = photos.decode_image

    def logged(source: object, short_side: int | None = None) -> np.ndarray:
        with open(log, "a") as f:
            f.write(f"{source}\n")
        return real(source, short_side)

    monkeypatch.setattr(photos, "decode_image", logged)
    monkeypatch.setattr(sources, "decode_image", logged)
    report = evaluate_checkpoint(checkpoint, data=str(labelled), split="test", device="cpu")
    decoded = set(log.read_text().splitlines())
    assert report["num_images"] == 6
    assert decoded == {str(p) for p in (labelled / "test").rglob("*.png")}


def test_symlinked_class_and_split_folders_are_found(tmp_path: Path, checkpoint: Path) -> None:
    elsewhere = make_folder(tmp_path / "elsewhere", classes=3, per_class=5)
    data = tmp_path / "data"
    data.mkdir()
    (data / "class_0").symlink_to(elsewhere / "class_0", target_is_directory=True)
    for c in ("class_1", "class_2"):
        (elsewhere / c).rename(data / c)
    splits = load_splits(str(data), val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 15 and splits.classes == ["class_0", "class_1", "class_2"]
    split_root = tmp_path / "split"
    split_root.mkdir()
    (split_root / "test").symlink_to(data, target_is_directory=True)
    assert evaluate_checkpoint(checkpoint, data=str(split_root), split="test", device="cpu")["num_images"] == 15


def test_a_symlink_loop_is_one_line_and_exit_2(tmp_path: Path, checkpoint: Path) -> None:
    data = make_folder(tmp_path / "data", classes=3, per_class=3)
    os.symlink(data, data / "class_1" / "again", target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link loop"):
        load_splits(str(data))
    result = imgclf("evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "all")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "class_1/again: a symbolic link loop" in result.stderr
