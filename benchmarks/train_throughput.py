"""Training throughput (images/s of full steps: data + augmentation + forward/backward/step) on CPU.

(a) imgclf: decoded-once uint8 tensors, batch-level augmentation, its default precision (bf16 autocast
    where the CPU has it) and channels_last; (b) the tutorial pipeline: torchvision ImageFolder + PIL
    transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor) + DataLoader with 2 workers,
    float32. Same network (imgclf's default fastcnn), same batch, same optimizer, same images.
Also (a') imgclf's loader at float32, so the loader's share of the gain is visible on its own.
Prints one JSON object; medians of several timed windows each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator

import torch
import torchvision
from torch import nn
from torchvision import transforms

from _common import extracted_folder, median, require_archive
from imgclf.config import TrainConfig
from imgclf.data import load_splits
from imgclf.data.loaders import BatchAugment, TensorLoader
from imgclf.models import build_model
from imgclf.runtime import autocast, cpu_has_bf16


def timed_steps(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], model: nn.Module, steps: int, warmup: int,
                amp: torch.dtype | None, channels_last: bool) -> float:
    """Images per second over `steps` full training steps after `warmup` untimed ones."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start, seen = time.perf_counter(), 0
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), amp):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if i + 1 == warmup + steps:
            break
    return seen / (time.perf_counter() - start)


def forever(loader: Iterable) -> Iterator:
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    require_archive()
    torch.manual_seed(0)
    cfg = TrainConfig()
    folder = extracted_folder()
    splits = load_splits(str(require_archive()))
    amp = torch.bfloat16 if cpu_has_bf16() else None

    imgclf_loader = TensorLoader(splits.train, args.batch_size, shuffle=True, drop_last=True,
                                 augment=BatchAugment(cfg.crop_pad, cfg.flip, cfg.cutout))
    tutorial = torch.utils.data.DataLoader(
        torchvision.datasets.ImageFolder(str(folder / "train"), transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()])),
        batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)

    def model() -> nn.Module:
        m = build_model(cfg.model, 10, width=cfg.width)
        return m.to(memory_format=torch.channels_last)

    results: dict[str, list[float]] = {"imgclf": [], "imgclf_fp32": [], "tutorial": []}
    streams = {"imgclf": forever(imgclf_loader), "imgclf_fp32": forever(imgclf_loader), "tutorial": forever(tutorial)}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every variant alike
        results["imgclf"].append(timed_steps(streams["imgclf"], model(), args.steps, 3, amp, True))
        results["imgclf_fp32"].append(timed_steps(streams["imgclf_fp32"], model(), args.steps, 3, None, True))
        results["tutorial"].append(timed_steps(streams["tutorial"], model(), args.steps, 3, None, False))
    a, a32, b = (median(results[k]) for k in ("imgclf", "imgclf_fp32", "tutorial"))
    print(json.dumps({
        "benchmark": "train_throughput", "model": cfg.model, "width": cfg.width, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "imgclf_precision": str(amp).removeprefix("torch.") if amp else "fp32",
        "imgclf_images_per_s": round(a, 1), "imgclf_fp32_images_per_s": round(a32, 1),
        "tutorial_images_per_s": round(b, 1), "ratio": round(a / b, 2), "ratio_same_precision": round(a32 / b, 2),
        "runs": {k: [round(v, 1) for v in vs] for k, vs in results.items()},
    }))


if __name__ == "__main__":
    main()
