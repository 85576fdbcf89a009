"""Training throughput (images/s of full steps: data + augmentation + forward/backward/step) on CPU.

(a) imgclf: decoded-once uint8 tensors, batch-level augmentation, its default precision (bf16 autocast
    where the CPU has it) and channels_last; (b) the tutorial pipeline: torchvision ImageFolder + PIL
    transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor) + DataLoader with 2 workers,
    float32. Same network (imgclf's default fastcnn), same batch, same optimizer, same images.
Also (a') imgclf's loader at float32, so the loader's share of the gain is visible on its own.
imgclf's side takes what `imgclf train --data ARCHIVE` resolves on this CPU (imgclf.config.resolve: augmentation,
width, batch size, precision, channels_last); `--batch-size N` sets the batch of both sides.
Prints one JSON object; medians of several timed windows each. `--smoke`: a made-up folder, a few steps, seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import transforms

from _common import emit, extracted_folder, made_up_folder, median, require_archive, smoke_threads
from imgclf.config import TrainConfig, resolve
from imgclf.data import load_splits
from imgclf.runtime import autocast, resolve_amp
from imgclf.training.run import model_for, train_loader_for


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="default: what `imgclf train` resolves on this CPU")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--smoke", action="store_true", help="a made-up folder, a few steps: checks it works")
    args = parser.parse_args(argv)
    steps, repeats, warmup = (min(args.steps, 3), 1, 1) if args.smoke else (args.steps, args.repeats, 3)
    with smoke_threads(args.smoke), tempfile.TemporaryDirectory(prefix="imgclf-train-throughput-") as tmp:
        folder = made_up_folder(Path(tmp) / "data", photos=False) if args.smoke else extracted_folder()
        data = str(folder) if args.smoke else str(require_archive())
        result = measure(data, folder, steps, repeats, warmup, args.batch_size)
    result = {"benchmark": "train_throughput", "smoke": args.smoke, **result}
    emit(result, args.out)
    return result


def measure(data: str, folder: Path, steps: int, repeats: int, warmup: int, batch_size: int | None
            ) -> dict[str, Any]:
    """imgclf's loader and precision against the tutorial pipeline on the same images (`folder`'s train/)."""
    cpu = torch.device("cpu")
    splits = load_splits(data)
    # every open default decided as `imgclf train --data DATA --device cpu` decides it (crop_pad, flip,
    # width and batch size are None until then)
    cfg = resolve(TrainConfig(data=data, device="cpu", batch_size=batch_size), splits, cpu)
    num_classes = len(splits.classes)
    amp = resolve_amp(cfg, cpu)
    torch.manual_seed(0)

    imgclf_loader = train_loader_for(cfg, splits.train, cpu)
    tutorial = torch.utils.data.DataLoader(
        torchvision.datasets.ImageFolder(str(folder / "train"), transforms.Compose([
            transforms.RandomCrop(cfg.image_size, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor()])),
        batch_size=cfg.batch_size, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)

    def model() -> nn.Module:
        return model_for(cfg, num_classes, cpu)

    results: dict[str, list[float]] = {"imgclf": [], "imgclf_fp32": [], "tutorial": []}
    streams = {"imgclf": forever(imgclf_loader), "imgclf_fp32": forever(imgclf_loader), "tutorial": forever(tutorial)}
    for _ in range(repeats):  # interleaved, so drift in machine load hits every variant alike
        results["imgclf"].append(timed_steps(streams["imgclf"], model(), steps, warmup, amp, cfg.channels_last))
        results["imgclf_fp32"].append(timed_steps(streams["imgclf_fp32"], model(), steps, warmup, None,
                                                  cfg.channels_last))
        results["tutorial"].append(timed_steps(streams["tutorial"], model(), steps, warmup, None, False))
    for stream in streams.values():
        stream.close()  # the loaders (and the tutorial's worker processes) go when this returns
    a, a32, b = (median(results[k]) for k in ("imgclf", "imgclf_fp32", "tutorial"))
    return {
        "model": cfg.model, "width": cfg.width, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
        "augment": {"crop_pad": cfg.crop_pad, "flip": cfg.flip, "cutout": cfg.cutout},
        "threads": torch.get_num_threads(), "imgclf_precision": str(amp).removeprefix("torch.") if amp else "fp32",
        "imgclf_images_per_s": round(a, 1), "imgclf_fp32_images_per_s": round(a32, 1),
        "tutorial_images_per_s": round(b, 1), "ratio": round(a / b, 2), "ratio_same_precision": round(a32 / b, 2),
        "runs": {k: [round(v, 1) for v in vs] for k, vs in results.items()},
    }


if __name__ == "__main__":
    main()
