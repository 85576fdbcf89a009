"""Atomic writes: a failed write leaves the old file whole, no temp file, and a one-line disk-full error."""

import errno
from pathlib import Path

import pytest

from imgclf.errors import UserError
from imgclf.fileio import atomic_file, write_json, write_text


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_disk_full_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "history.csv"
    write_text(target, "epoch\n1\n")
    with pytest.raises(UserError, match="disk full"):
        with atomic_file(target, "w") as f:
            f.write("epoch\n1\n2\n")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "epoch\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_other_errors_propagate_and_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(ValueError):
        with atomic_file(target) as f:
            f.write(b"partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []
