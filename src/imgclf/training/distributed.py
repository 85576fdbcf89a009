"""DDP under torchrun: one process per device, gradients all-reduced, rank 0 alone writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from imgclf.config import TrainConfig


@dataclass
class DistContext:
    active: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, cfg: TrainConfig, find_unused: bool = False) -> nn.Module:
        """DistributedDataParallel (with SyncBatchNorm when asked); the plain module keeps the weights.

        `find_unused`: fine-tuning freezes parts of the model after wrapping (see training.finetune)."""
        if cfg.sync_bn:  # timm's converter keeps the activation fused into timm's BatchNormAct2d
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def agree(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """All ranks take the slowest rank's clock and stop together (a lone stop would hang the others)."""
        flags = torch.tensor([seconds, float(stop)], dtype=torch.float64)
        torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
        return float(flags[0]), bool(flags[1])

    def teardown(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def setup(cfg: TrainConfig) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a plain single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    return DistContext(True, rank, world, device)
