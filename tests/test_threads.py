"""The plan's thread count: all cores on a free machine, one thread when other work keeps the cores busy
(there, torch's default of a thread a core trains 15-40x slower), --threads to choose, recorded in config.yaml."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from helpers import imgclf, stop_process
from imgclf.defaults import THREADS_BUSY_RATIO
from imgclf.runtime import fastest_thread_count

CORES = torch.get_num_threads()


# another torch job on the same cores, as a second training or a test run beside one is
OTHER_TRAINING = "import torch\na = torch.rand(128, 128)\nwhile True:\n    (a @ a).relu_()\n"


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """A torch process keeping every core busy, its OpenMP threads spinning as a training's do."""
    other = subprocess.Popen([sys.executable, "-c", OTHER_TRAINING])
    time.sleep(3.0)  # torch imported, spinning
    try:
        yield
    finally:
        stop_process(other, grace=1)


@pytest.mark.skipif(CORES < 2, reason="one core: there is no thread count to choose")
def test_busy_cores_measure_one_thread_faster(busy_cores: None) -> None:
    """Contention comes and goes (fastest_thread_count's docstring: 4 of 15 measurements beside one torch job
    found all cores faster), so up to 5 measurements, each of 8 alternating rounds: one of them must find a
    single thread THREADS_BUSY_RATIO times faster, which a free machine never does."""
    seen = []
    for _ in range(5):
        threads, ms = fastest_thread_count(THREADS_BUSY_RATIO)
        seen.append(ms)
        if threads == 1:
            break
    assert threads == 1 and ms[CORES] > THREADS_BUSY_RATIO * ms[1], seen
    assert torch.get_num_threads() == CORES  # measuring leaves the process as it found it


def test_a_busy_measurement_trains_with_one_thread_and_records_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from imgclf import runtime
    from imgclf.config import TrainConfig
    from imgclf.training.run import train

    monkeypatch.delenv("OMP_NUM_THREADS")  # the suite fixes the count (conftest); a user's shell does not
    measured = {1: 2.0, CORES: 40.0}
    monkeypatch.setattr(runtime, "fastest_thread_count", lambda ratio: (1, measured))
    try:
        train(TrainConfig(data="digits", model="tiny", epochs=1, device="cpu", out=str(tmp_path / "run")))
    finally:
        torch.set_num_threads(CORES)  # the rest of the suite runs at its own count
    plan = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert plan["threads"] == 1 and plan["extra"]["threads"]["ms_by_threads"] == measured
    assert "this CPU is busy with other work: training with 1 thread" in capsys.readouterr().err


def test_threads_flag_is_kept_and_checked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = imgclf("train", "--data", "digits", "--model", "tiny", "--epochs", "1", "--device", "cpu",
                    "--threads", "1", "--out", str(run))
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load((run / "config.yaml").read_text())
    assert plan["threads"] == 1 and "threads" not in plan["extra"]
    told = imgclf("train", "--data", "digits", "--model", "tiny", "--epochs", "1", "--device", "cpu",
                  "--out", str(tmp_path / "told"))  # OMP_NUM_THREADS set (conftest): nothing measured
    assert told.returncode == 0, told.stderr
    assert yaml.safe_load((tmp_path / "told" / "config.yaml").read_text())["threads"] is None
    bad = imgclf("train", "--data", "digits", "--threads", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "threads" in bad.stderr
