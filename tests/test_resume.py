"""--resume listens: it moves data, refuses what it cannot honour, writes only inside a run directory, and
a full disk mid-run loses nothing (the checkpoint and history stay in step; the resumed run is exact)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from helpers import imgclf, make_folder
from imgclf import fileio
from imgclf.config import TrainConfig
from imgclf.errors import UserError
from imgclf.models.checkpoint import load_checkpoint
from imgclf.training.run import train


def _cfg(data: Path, out: Path, **changes: object) -> TrainConfig:
    return TrainConfig(data=str(data), model="tiny", epochs=3, batch_size=16, quiet=True, device="cpu", lr=0.05,
                       out=str(out)).replace(**changes)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("resume") / "imgs", classes=3, per_class=16, splits=True)


def test_disk_full_mid_run_keeps_checkpoint_and_history_in_step(data: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(data, tmp_path / "straight"))
    real_replace, calls = fileio.os.replace, {"last.pt": 0}

    def replace_until_full(src: str, dst: str | Path) -> None:
        if Path(dst).name == "last.pt":
            calls["last.pt"] += 1
            if calls["last.pt"] == 3:  # the third epoch's checkpoint hits a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace_until_full)
    run = tmp_path / "full"
    with pytest.raises(UserError, match="disk full"):
        train(_cfg(data, run))
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["epoch"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2  # header + the epochs last.pt holds
    assert not [p for p in run.rglob("*.tmp")], "a failed write left its temp file"
    train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"))
    a, b = _weights(tmp_path / "straight"), _weights(run)  # last.pt: the state a resume continues
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changes_it_cannot_honour(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    last = str(run / "checkpoints" / "last.pt")
    for flags in (["--lr", "0.5"], ["--model", "fastcnn"], ["--set", "dropout=0.3"]):
        result = imgclf("train", "--resume", last, "--epochs", "2", *flags)
        assert result.returncode == 2 and "cannot change" in result.stderr, (flags, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    same = imgclf("train", "--resume", last, "--epochs", "2", "--lr", "0.05", "--model", "tiny")
    assert same.returncode == 0, same.stderr


def test_resume_follows_moved_data_and_a_relative_path(data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    moved = shutil.copytree(data, tmp_path / "old-place")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train(_cfg(Path("old-place"), run, epochs=1))  # a relative path, recorded absolute
    shutil.move(str(moved), tmp_path / "new-place")
    with pytest.raises(UserError):
        train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"), overrides={"epochs": 2})
    train(TrainConfig(), resume=str(run / "checkpoints" / "last.pt"),
          overrides={"epochs": 2, "data": str(tmp_path / "new-place")})
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["epoch"] == 2


def test_resume_writes_only_inside_a_run_directory(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    user_dir = tmp_path / "mine"
    (user_dir / "models").mkdir(parents=True)
    (user_dir / "history.csv").write_text("my own file\n")
    kept = user_dir / "models" / "x.pt"
    shutil.copy(run / "checkpoints" / "last.pt", kept)
    with pytest.raises(UserError, match="not inside a run directory"):
        train(TrainConfig(), resume=str(kept), overrides={"epochs": 2})
    assert (user_dir / "history.csv").read_text() == "my own file\n"
    moved = tmp_path / "continued"
    train(TrainConfig(), resume=str(kept), overrides={"epochs": 2, "out": str(moved)})
    assert (user_dir / "history.csv").read_text() == "my own file\n" and sorted(p.name for p in user_dir.iterdir()) \
        == ["history.csv", "models"]
    assert load_checkpoint(moved / "checkpoints" / "last.pt")["trainer"]["epoch"] == 2
    assert (moved / "config.yaml").is_file() and len((moved / "history.csv").read_text().splitlines()) == 3


def test_refused_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = imgclf("train", "--data", str(tmp_path / "missing"), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
