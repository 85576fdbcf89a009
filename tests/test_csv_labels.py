"""--data labels.csv: rows file,label[,split], files relative to the CSV's folder; the same splits, cache,
skipped files and one-line errors (naming the row) as an image folder, for train and evaluate alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import imgclf, make_folder
from imgclf.cli import main
from imgclf.data import load_splits


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """data/class_C/I.png, 3 classes x 12 images, with the CSVs written next to the class folders."""
    return make_folder(tmp_path / "data", classes=3, per_class=12)


COLOURS = {"class_0": "red", "class_1": "green", "class_2": "blue"}  # labels unlike the folder names


def _rows(folder: Path, split: bool) -> list[list[str]]:
    """One row per image; with `split`, images 8-9 of each class are val and 10-11 test (the rest empty)."""
    rows = []
    for f in sorted(folder.glob("class_*/*.png")):
        row = [f.relative_to(folder).as_posix(), COLOURS[f.parent.name]]
        if split:
            row.append("test" if int(f.stem) >= 10 else "valid" if int(f.stem) >= 8 else "")
        rows.append(row)
    return rows


def _write(path: Path, header: str, rows: list[list[str]]) -> Path:
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    return path


def test_split_column_gives_the_splits(images: Path) -> None:
    csv_path = _write(images / "labels.csv", "file,label,split", _rows(images, split=True))
    splits = load_splits(str(csv_path))
    assert splits.classes == ["blue", "green", "red"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 6)
    assert np.bincount(splits.test.labels).tolist() == [2, 2, 2]


def test_without_split_column_val_is_carved_per_class_and_it_trains(images: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _write(images / "labels.csv", "file,label", _rows(images, split=False))
    splits = load_splits(str(csv_path), val_fraction=0.25, seed=1)
    assert (len(splits.train), len(splits.val), splits.test) == (27, 9, None)
    assert np.bincount(splits.val.labels).tolist() == [3, 3, 3]
    assert np.array_equal(load_splits(str(csv_path), val_fraction=0.25, seed=1).val.images, splits.val.images)

    run = tmp_path / "run"
    assert main(["train", "--data", str(csv_path), "--model", "tiny", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    assert json.loads((run / "classes.json").read_text()) == ["blue", "green", "red"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--data", str(csv_path),
                 "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4  # 36 images, 10 % per class held out


def test_rows_are_cached_and_a_changed_csv_is_read_again(images: Path, private_cache: Path) -> None:
    def cached() -> set[Path]:
        return set(private_cache.glob("labels.csv-*.npz"))  # the cache is shared by the session's tests

    before = cached()
    rows = _rows(images, split=True)
    csv_path = _write(images / "labels.csv", "file,label,split", rows)
    load_splits(str(csv_path))
    assert len(cached() - before) == 1
    assert len(load_splits(str(csv_path)).train) == 24  # a cache hit
    assert len(cached() - before) == 1
    _write(csv_path, "file,label,split", rows[1:])
    assert len(load_splits(str(csv_path)).train) == 23
    assert len(cached() - before) == 2


def test_unreadable_images_are_skipped_and_named(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (images / "notes.png").write_text("not an image")
    rows = [*_rows(images, split=False), ["notes.png", "red"]]
    splits = load_splits(str(_write(images / "labels.csv", "label,file", [[r[1], r[0]] for r in rows])))
    assert splits.skipped == ["notes.png"]
    assert len(splits.train) + len(splits.val) == 36
    assert "skipped 1 file(s) that are not readable images: notes.png" in capsys.readouterr().err


@pytest.mark.parametrize(("header", "bad_row", "message"), [
    ("file,label,split", ["class_0/99.png", "red", ""], "row 5: file not found: class_0/99.png"),
    ("file,label,split", ["class_0/0.png", " ", "train"], "row 5: empty label for class_0/0.png"),
    ("file,label,split", ["", "red", "train"], "row 5: empty file name"),
    ("file,label,split", ["class_0/1.png", "red", "holdout"], "row 5: unknown split 'holdout'"),
    ("file,label,split", ["class_0/0.png", "red", "test"], "row 5: class_0/0.png is listed twice (also row 2)"),
    ("path,label,split", None, "row 1: missing column(s) file"),
    ("file,class", None, "row 1: missing column(s) label"),
])
def test_bad_rows_are_one_line_errors_naming_the_row(images: Path, capsys: pytest.CaptureFixture[str], header: str,
                                                     bad_row: list[str] | None, message: str) -> None:
    rows = [r + ["train"] for r in _rows(images, split=False)][:3] + ([bad_row] if bad_row else [])
    csv_path = _write(images / "labels.csv", header, rows)
    assert main(["train", "--data", str(csv_path), "--model", "tiny", "--epochs", "1", "--device", "cpu",
                 "--out", str(images.parent / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"imgclf: error: {csv_path} ") and message in err and "\n" not in err
    assert not (images.parent / "run").exists()  # refused before anything was written


def test_cli_exit_code_and_message(images: Path) -> None:
    csv_path = _write(images / "labels.csv", "file,label", [["class_0/0.png", "red"], ["gone.png", "red"]])
    proc = imgclf("train", "--data", str(csv_path), "--model", "tiny", "--epochs", "1", "--out",
                  str(images.parent / "run"))
    assert proc.returncode == 2 and proc.stderr.strip() == (f"imgclf: error: {csv_path} row 3: file not found: "
                                                            f"gone.png (paths are relative to {images})")
