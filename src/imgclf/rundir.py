"""RunDir: the one writer of a run directory (DESIGN.md "Run directory"), for every engine.

The Trainer's callbacks write history.csv, lr_schedule.csv and the checkpoints inside it; everything else a
run leaves (config.yaml, classes.json, metrics.json, predictions_SPLIT.npz) goes through here, atomically
(`fileio`), so the standard loop and the speed run write the same files the same way. Checkpoints are built
and read by `models.checkpoint` (`checkpoint_payload`, `load_checkpoint`), which serving imports too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import UserError
from imgclf.fileio import write_json, write_with

if TYPE_CHECKING:
    import torch

    from imgclf.config import TrainConfig
    from imgclf.data import Splits

SKIPPED_LISTED = 50  # unreadable files named in metrics.json (all are counted)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def new(cls, out: str | None, cfg: TrainConfig) -> RunDir:
        """The run's folder, not yet created: nothing is written until the data and settings have been checked.
        Without --out: runs/DATA-MODEL-TIME. A folder that already holds a run is refused."""
        if out is None:
            stem = Path(cfg.data).name.split(".")[0] or "run"
            out = f"runs/{stem}-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = cls(Path(out))
        if run_dir.last_checkpoint.exists():
            raise UserError(f"{run_dir.path} already holds a run; pass --resume {run_dir.last_checkpoint} "
                            "or another --out")
        return run_dir

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def has_plan(self) -> bool:
        return (self.path / "config.yaml").is_file()

    def write_plan(self, cfg: TrainConfig, classes: list[str]) -> None:
        """config.yaml (the resolved plan: a rerun or resume needs no second guess) and classes.json."""
        cfg.to_yaml(self.path / "config.yaml")
        write_json(self.path / "classes.json", classes)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / "metrics.json", metrics)

    def save_predictions(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """predictions_SPLIT.npz: the final logits and labels the report reads."""
        write_with(self.path / f"predictions_{split}.npz",
                   lambda f: np.savez(f, logits=logits.numpy(), labels=labels.numpy()))


def skipped_summary(splits: Splits, streamed: list[str] | None = None) -> dict[str, Any]:
    """metrics.json's record of the unreadable files left out (at listing, or met while streaming): all
    counted, the first SKIPPED_LISTED named."""
    names = sorted(set(splits.skipped) | set(streamed or []))
    return {"count": len(names), "first": names[:SKIPPED_LISTED]}
