"""DDP through torchrun on CPU (gloo, 2 processes) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_folder
from imgclf.models.checkpoint import load_checkpoint


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    """Both runs see the same images and augmentations at every step (each rank slices the global batch)
    and average gradients over it, so they differ only where BatchNorm normalises each half batch on its
    own (SyncBatchNorm needs CUDA). On this task that perturbs losses by well under 0.1 nats and weights by
    a small fraction of their size; a broken all-reduce or a wrong shard moves them by far more."""
    root = make_folder(tmp_path / "f", classes=3, per_class=96, splits=True)  # 259 train images: batch 32 kept
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["train", "--data", str(root), "--model", "tiny", "--epochs", "3", "--batch-size", "32",
              "--lr", "0.05", "--quiet", "--device", "cpu", "--no-amp"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "imgclf", *common, "--out",
          str(tmp_path / "ddp")], env)
    _run([sys.executable, "-m", "imgclf", *common, "--out", str(tmp_path / "single")], env)

    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp_metrics["epochs_run"] == 3 and ddp_metrics["steps"] == single_metrics["steps"]
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    losses = [r["train_loss"] for r in ddp["trainer"]["history"]]
    assert losses[-1] < losses[0]  # it learns
    for a, b in zip(ddp["trainer"]["history"], single["trainer"]["history"], strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05
    weights_a = torch.cat([v.flatten().float() for k, v in ddp["model"].items() if "weight" in k])
    weights_b = torch.cat([v.flatten().float() for k, v in single["model"].items() if "weight" in k])
    assert (weights_a - weights_b).norm() / weights_b.norm() < 0.02
    # the DDP checkpoint resumes in a single process
    _run([sys.executable, "-m", "imgclf", "train", "--resume", str(tmp_path / "ddp" / "checkpoints" / "last.pt"),
          "--epochs", "4", "--quiet"], env)
    assert load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["trainer"]["epoch"] == 4
