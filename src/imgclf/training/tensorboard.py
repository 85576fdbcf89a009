"""--logger tensorboard: a run's scalars and its confusion matrix as TensorBoard events in RUN_DIR/tensorboard/.

Every scalar is logged against the optimizer step (epoch values at the step that ends the epoch), so one
axis serves all of them and a resume can hide what the killed run logged after its checkpoint: the new
writer's purge_step makes TensorBoard drop every event from the checkpoint's step + 1 on, in every tag.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rc_context

from imgclf.errors import UserError
from imgclf.evaluation.metrics import predict_logits
from imgclf.evaluation.scores import confusion
from imgclf.reporting import figures
from imgclf.training.callbacks import LOGS, Callback

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from imgclf.training.trainer import Trainer

NOT_LOGGED = {"epoch", "seconds"}  # history columns that are the axis or a running total, not a curve


class TensorBoardLogger(Callback):
    """train/loss and train/lr every step; epoch/<history column> and epoch/images_per_second every epoch;
    at the end val/confusion_matrix of the final weights (not for a multi-label run). Rank 0 only (run.py adds it
    there)."""

    order = LOGS

    def __init__(self, folder: Path) -> None:
        try:  # checked when the run is set up, before anything is written
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--logger tensorboard needs the tensorboard package: pip install 'imgclf[log]' "
                            "(or pip install tensorboard)") from None
        self.folder = folder
        self.make_writer = SummaryWriter
        self.writer: SummaryWriter | None = None
        self.epoch_start = (0, 0.0)  # (step, training seconds) where the current epoch began

    def on_fit_start(self, trainer: Trainer) -> None:
        self.writer = self.make_writer(str(self.folder), purge_step=trainer.step + 1 if trainer.step else None)

    def on_epoch_start(self, trainer: Trainer) -> None:
        seconds = trainer.history[-1]["seconds"] if trainer.history else 0.0
        # a resumed epoch began before its checkpoint (which falls between optimizer steps: whole --accumulate groups)
        self.epoch_start = (trainer.step - trainer.batch // trainer.config.accumulate, seconds)

    def on_batch_end(self, trainer: Trainer, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, trainer.step)
        self.writer.add_scalar("train/lr", trainer.current_lr, trainer.step)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in NOT_LOGGED:
                self.writer.add_scalar(f"epoch/{key}", value, trainer.step)
        steps, seconds = trainer.step - self.epoch_start[0], row["seconds"] - self.epoch_start[1]
        images = steps * trainer.config.batch_size * trainer.config.accumulate  # as metrics.json counts them
        self.writer.add_scalar("epoch/images_per_second", images / max(seconds, 1e-9), trainer.step)

    def write(self) -> None:
        """Put every event logged so far on disk (the Checkpointer calls it before each save)."""
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.config.task == "multilabel":  # several labels an image: no confusion matrix to draw
            self.writer.close()
            return
        logits, labels = predict_logits(trainer.model, trainer.val_loader, amp_dtype=trainer.amp_dtype)
        counts = confusion(labels.numpy(), logits.argmax(1).numpy(), len(trainer.classes))
        fig = figures.confusion_matrix(counts, trainer.classes)
        with rc_context(figures.STYLE):
            fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        self.writer.add_image("val/confusion_matrix", pixels, trainer.step, dataformats="HWC")
        self.writer.close()
