"""Test accuracy reached within a fixed CPU training budget: imgclf's default recipe beside a standard one.

imgclf: `imgclf train --data ARCHIVE --time-budget S --tta` (test-time augmentation in the final
evaluation only; the accuracy without it is reported too).

Standard recipe, same budget, same run: torchvision ResNet-18 adapted to 32x32 (3x3 stem, no max-pool),
the tutorial pipeline (ImageFolder + PIL RandomCrop/flip + DataLoader, 2 workers), SGD + cosine over the
budget, float32. Both are evaluated on the same 5,000-image validation carve-out as they go (for the time
each needs to reach the baseline's final accuracy) and on the 10,000 test images at the end.
Prints one JSON object. Decode and cache time is not counted in imgclf's budget, nor the folder
extraction in the baseline's. `--smoke`: a made-up folder of 16 px squares, a 1 s budget each, batches of 16 for
the baseline: checks it works, in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision import transforms

from _common import emit, extracted_folder, made_up_folder, require_archive, smoke_threads
from imgclf.config import TrainConfig
from imgclf.data import load_splits
from imgclf.data.imageset import stratified_split
from imgclf.data.loaders import make_loader
from imgclf.evaluation.metrics import loss_and_accuracy, predict_logits
from imgclf.training.run import train


def baseline_resnet18(num_classes: int = 10) -> nn.Module:
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def run_baseline(budget: float, eval_every: float, data_spec: str, folder: Path, batch_size: int = 128) -> dict:
    """The standard recipe on `folder`'s train/ until the budget is spent; val accuracy every `eval_every`
    training seconds. `data_spec` is what imgclf trained on (the same images), for its val and test splits."""
    splits = load_splits(data_spec)  # same val/test images as imgclf, for scoring only
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    data = torchvision.datasets.ImageFolder(str(folder / "train"), transforms.Compose([
        transforms.RandomCrop(splits.train.image_size, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(mean, std)]))
    # imgclf's validation carve-out is the same seeded split of the same sorted file list: leave it out here
    kept, _ = stratified_split(np.asarray(data.targets), TrainConfig().val_fraction, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, kept.tolist()), batch_size=batch_size,
                                         shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    net = baseline_resnet18(len(data.classes)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    norm = transforms.Normalize(mean, std)

    class Normalized(nn.Module):
        """The net as a submodule, so evaluation puts its BatchNorm in eval mode: the evaluation batches come
        sorted by class, and batch statistics of one class score at chance (11 % in the first full run)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(norm(x))

    scored = Normalized()

    def score(part) -> float:  # noqa: ANN001
        return loss_and_accuracy(*predict_logits(scored, make_loader(part, 500, "cpu", train=False,
                                                                      channels_last=False)))[1]

    curve, seconds, next_eval, steps = [], 0.0, eval_every, 0
    while seconds < budget:
        tick = time.perf_counter()
        for x, y in loader:
            for g in opt.param_groups:  # cosine over the budget
                g["lr"] = 0.05 * (1 + torch.cos(torch.tensor(min(seconds / budget, 1.0) * torch.pi)).item())
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            if seconds >= next_eval or seconds >= budget:
                curve.append((round(seconds, 1), score(splits.val)))
                next_eval += eval_every
                net.train()
                tick = time.perf_counter()
            if seconds >= budget:
                break
    return {"test_accuracy": score(splits.test), "val_accuracy": curve[-1][1], "curve": curve,
            "train_seconds": round(seconds, 1), "steps": steps,
            "images_per_second": round(steps * loader.batch_size / max(seconds, 1e-9), 1)}


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, acc in curve if acc >= target), None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="180,600", help="comma-separated seconds")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--smoke", action="store_true", help="a made-up folder, 1 s budgets: checks it works")
    args = parser.parse_args(argv)
    with smoke_threads(args.smoke), tempfile.TemporaryDirectory(prefix="imgclf-cpu-budget-") as work:
        if args.smoke:
            folder = made_up_folder(Path(work) / "data", photos=False)
            data, budgets, batch_size = str(folder), [1.0], 16
        else:
            data, budgets, batch_size = str(require_archive()), [float(b) for b in args.budgets.split(",")], 128
            folder = extracted_folder()
        out = run(data, folder, budgets, batch_size, Path(work))
    out = {"benchmark": "cpu_budget", "smoke": args.smoke, **out}
    emit(out, args.out)
    return out


def run(data: str, folder: Path, budgets: list[float], batch_size: int, work: Path) -> dict[str, Any]:
    """imgclf and the baseline within each budget; `folder` holds `data`'s images as train/ and test/."""
    load_splits(data)  # decode once, outside every budget
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "budgets": {}}
    for budget in budgets:
        result = train(TrainConfig(data=data, time_budget=budget, device="cpu", quiet=True, tta=True,
                                   out=str(work / f"run-{budget:g}")))
        ours_curve = [(r["seconds"], r["val_acc"]) for r in result.history]
        base = run_baseline(budget, max(30.0, budget / 6) if budget >= 30 else budget / 2, data, folder, batch_size)
        target = base["val_accuracy"]
        out["budgets"][str(int(budget))] = {
            "imgclf_test_accuracy": round(result.metrics["test_accuracy"], 4),
            "imgclf_test_accuracy_without_tta": round(result.metrics["test_accuracy_without_tta"], 4),
            "baseline_test_accuracy": round(base["test_accuracy"], 4),
            "ratio": round(result.metrics["test_accuracy"] / base["test_accuracy"], 2),
            "baseline_final_val_accuracy": round(target, 4),
            "imgclf_seconds_to_baseline_val": time_to_reach(ours_curve, target),
            "baseline_seconds_to_baseline_val": time_to_reach(base["curve"], target),
            "imgclf_epochs": result.metrics["epochs_run"], "imgclf_width": result.config.width,
            "imgclf_images_per_second": result.metrics["images_per_second"],
            "baseline_steps": base["steps"], "baseline_images_per_second": base["images_per_second"],
            "imgclf_curve": ours_curve, "baseline_curve": base["curve"],
        }
    return out


if __name__ == "__main__":
    main()
