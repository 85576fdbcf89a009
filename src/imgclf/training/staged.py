"""Staged fine-tuning, sized to a CPU budget: the head on cached features, then the top of the backbone.

1. Head. Every training image goes through the frozen backbone once, plus `feature_views - 1` augmented
   views, and the feature vectors are kept; the head (dropout + linear) then trains on them for
   `head_epochs` in seconds. A full fine-tuning epoch pays forward and backward for every image; this
   pays one forward per view, once.
2. Top. The Trainer fine-tunes the `unfreeze_groups` layer groups nearest the head with discriminative
   LRs (imgclf.training.finetune.param_groups); the groups below stay frozen with their BatchNorm
   statistics fixed. With no parameter below needing a gradient and an input that needs none, autograd
   records nothing there: the bottom runs as under torch.no_grad and backward stops at the first
   trainable layer. Under a time budget the depth is the deepest whose measured step rate still fits
   MIN_TOP_EPOCHS epochs in what the head phase left. When even a frozen forward pass is too slow for that
   (32x32 data of tens of thousands of images, upsampled to the weights' input, on a CPU), nothing would be
   unfrozen and the top phase could only show the head more views through the frozen backbone: the head phase
   then caches the features of as many images as HEAD_ONLY_SHARE of the budget buys instead.

Under a time budget the head phase also leaves points for compare's time curve (`head_curve`): heads trained on
the first HEAD_CURVE_SHARES of the clean features, scored on validation. Where the top phase fits one epoch (CIFAR
on a CPU) they are what the fine-tuned curve is fitted to, and so what says how long it would need to catch up.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data.loaders import endless
from imgclf.evaluation.metrics import loss_and_accuracy
from imgclf.models.base import ImageClassifier
from imgclf.runtime import autocast
from imgclf.training.finetune import freeze_backbone, set_trainable_top, unwrap
from imgclf.training.losses import criterion_for
from imgclf.training.optim import decay_split

HEAD_LR = 3e-3  # AdamW on cached features; the head is linear, so a high LR with cosine decay converges fast
HEAD_BATCH = 64
MAX_HEAD_SHARE = 0.3  # under a time budget the head phase (feature extraction) takes at most this share
# ... or this share when no layer group could be unfrozen anyway. CIFAR-10-JPEG (45,000 training images), Lite2
# at 192 px, 240 s on 2 Xeon cores (bf16), nothing unfrozen either way: with 0.3 the head saw 9,440 images'
# features and the rest of the budget showed it augmented views through the frozen backbone, 80.7 % test; with
# 0.8 it saw 27,376 images' features, 81.4 %
HEAD_ONLY_SHARE = 0.8
PROGRESS_SECONDS = 15.0  # a feature pass longer than this reports how far it is
MIN_TOP_EPOCHS = 4  # the top phase unfreezes only as deep as still fits this many epochs in its budget
PROBE_STEPS = 1  # timed training steps per candidate depth (after one untimed)
HEAD_CURVE_SHARES = (0.125, 0.25, 0.5)  # the clean features' shares extra heads train on, for the time curve
HEAD_CURVE_VAL_IMAGES = 1000  # at most this many validation images (a seeded subset) score the curve's heads


@dataclass
class HeadReport:
    """What the head phase did, for the run directory and the printout."""

    views: int
    images: int
    seconds: float
    extract_images_per_second: float
    loss: float
    curve: list[list[float]]  # (head-phase seconds, validation accuracy) points; empty without a budget

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@torch.no_grad()
def extract_features(model: ImageClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     amp_dtype: torch.dtype | None, total: int = 0,
                     stop: Callable[[int, float], bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features (N, num_features) and labels of every batch, the backbone in eval mode, until
    `stop(images, seconds)` says so, if given. Given the `total` to expect, a pass longer than
    PROGRESS_SECONDS says how far it is (on a slow CPU a large network's pass takes minutes)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    done = 0
    started = last_said = time.perf_counter()
    for x, y in batches:
        with autocast(x.device, amp_dtype):
            feats.append(model.embed(x).float())
        labels.append(y)
        done += len(y)
        now = time.perf_counter()
        if total and now - last_said > PROGRESS_SECONDS:
            print(f"imgclf: staged fine-tuning: features of {done}/{total} images "
                  f"({done / (now - started):.1f} img/s)", file=sys.stderr, flush=True)
            last_said = now
        if stop is not None and stop(done, now - started):
            break
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def train_head(head: nn.Module, features_of: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
               cfg: TrainConfig, epochs: int, seed: int, criterion: nn.Module | None = None) -> float:
    """Train `head` on features with AdamW and a cosine LR, in a seeded order; returns the last epoch's loss.
    `criterion`: the training loss (default: the config's, unweighted).

    `features_of(index)` gives the features of the examples at `index`: slices of a cache here, or a forward
    pass of the frozen backbone (the tests check both give the same head).
    """
    optimizer = torch.optim.AdamW(decay_split(head.parameters(), HEAD_LR, cfg.weight_decay), lr=HEAD_LR)
    criterion = criterion if criterion is not None else criterion_for(cfg)
    n = len(labels)
    steps_per_epoch = math.ceil(n / HEAD_BATCH)
    total = max(1, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    step, epoch_loss = 0, float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * HEAD_BATCH:(b + 1) * HEAD_BATCH]
            for group in optimizer.param_groups:
                group["lr"] = HEAD_LR * 0.5 * (1 + math.cos(math.pi * step / total))
            out = head(features_of(idx))
            loss = criterion(out, labels[idx.to(labels.device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            step += 1
        epoch_loss = running / max(seen, 1)
    return epoch_loss


def fit_head(model: ImageClassifier, cfg: TrainConfig, clean: Iterable, augmented: Callable[[int], Iterable],
             num_train: int, amp_dtype: torch.dtype | None, budget: float | None,
             val: Iterable | None = None) -> HeadReport:
    """Phase 1: features of the clean view and of augmented views (`augmented(k)` yields the k-th), then
    the head trained on all of them. Under a `budget` the phase takes what `head_share` of it buys: fewer
    views, and on a slow machine only part of the clean view (`clean` comes in a random order). Given `val`
    batches, the report carries `head_curve`'s points, the trained head's last."""
    started = time.perf_counter()

    def out_of_time(images: int, seconds: float) -> bool:
        return seconds > head_share(images / max(seconds, 1e-9), num_train, budget) * budget

    feats, labels = extract_features(model, clean, amp_dtype, total=num_train, stop=out_of_time if budget else None)
    rate = len(labels) / max(time.perf_counter() - started, 1e-9)
    views = cfg.feature_views
    if budget:
        views = max(1, min(views, int(MAX_HEAD_SHARE * budget * rate / max(num_train, 1))))
    parts, part_labels = [feats], [labels]
    for k in range(1, views):
        f, y = extract_features(model, augmented(k), amp_dtype, total=num_train)
        parts.append(f)
        part_labels.append(y)
    cache, targets = torch.cat(parts), torch.cat(part_labels)
    # --class-weights auto: weighted by the classes among the features the head trains on
    criterion = criterion_for(cfg, targets.cpu().numpy(), model.head[-1].out_features).to(cache.device)
    scored = extract_features(model, val, amp_dtype) if val is not None else None
    curve = head_curve(model.head, cfg, (feats, labels), scored, rate, criterion) if scored is not None else []
    loss = train_head(model.head, lambda idx: cache[idx.to(cache.device)], targets, cfg, cfg.head_epochs, cfg.seed,
                      criterion)
    seconds = time.perf_counter() - started
    if scored is not None:
        curve.append([round(seconds, 3), round(head_accuracy(model.head, *scored), 4)])
    return HeadReport(views, len(targets), seconds, rate, loss, curve)


def head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """The head's accuracy on cached features, dropout off."""
    was_training = head.training
    head.eval()
    with torch.no_grad():
        logits = head(features.to(next(head.parameters()).device)).cpu()
    head.train(was_training)
    return loss_and_accuracy(logits, labels.cpu())[1]


def head_curve(head: nn.Module, cfg: TrainConfig, clean: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor], rate: float, criterion: nn.Module) -> list[list[float]]:
    """(seconds, validation accuracy) of copies of the untrained `head` trained on the first HEAD_CURVE_SHARES of
    the `clean` view's features (extracted at `rate` images/s): the seconds are what extracting those images and
    training that head took, the time such a head phase would have cost. Where the top phase fits one epoch these
    are the fine-tuned curve's early points; on photos they are cheap (a few hundred cached features)."""
    feats, labels = clean
    points = []
    for share in HEAD_CURVE_SHARES:
        count = max(1, int(share * len(labels)))
        started = time.perf_counter()
        partial = copy.deepcopy(head)
        train_head(partial, lambda idx: feats[idx.to(feats.device)], labels[:count], cfg, cfg.head_epochs, cfg.seed,
                   criterion)
        seconds = count / max(rate, 1e-9) + time.perf_counter() - started
        points.append([round(seconds, 3), round(head_accuracy(partial, *val), 4)])
    return points


def head_share(rate: float, num_train: int, budget: float) -> float:
    """The share of a time budget the head phase may take, given the measured feature `rate` (images/s):
    MAX_HEAD_SHARE, or HEAD_ONLY_SHARE when at that rate the rest of the budget could not pass MIN_TOP_EPOCHS
    epochs through the network: a training step (forward and backward) is slower than a frozen forward pass, so
    then no depth fits and the time buys more of what the head learns from, the features of more images."""
    top_fits = rate * (1 - MAX_HEAD_SHARE) * budget >= MIN_TOP_EPOCHS * num_train
    return MAX_HEAD_SHARE if top_fits else HEAD_ONLY_SHARE


def choose_depth(model: ImageClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 criterion: nn.Module, amp_dtype: torch.dtype | None, budget: float, num_train: int,
                 ) -> tuple[int, dict[int, float]]:
    """The deepest unfreezing whose measured training rate fits MIN_TOP_EPOCHS epochs in `budget` seconds.

    Depths are timed from the head down (shallow ones are the cheap ones to time) on real batches, forward
    and backward only (no optimizer step, so nothing changes), until one no longer fits; returns the depth
    (0: none fits) and the measured images per second by depth.
    """
    # a set with fewer batches than the probe's steps (a few photos, a large --batch-size) cycles round
    sample = list(itertools.islice(endless(batches), PROBE_STEPS + 1))
    need = MIN_TOP_EPOCHS * num_train
    rates: dict[int, float] = {}
    chosen = 0
    for depth in range(1, len(unwrap(model).layer_groups()) + 1):
        set_trainable_top(model, depth)
        model.train()
        images, elapsed = 0, 0.0
        for i, (x, y) in enumerate(sample):
            tick = time.perf_counter()
            with autocast(x.device, amp_dtype):
                loss = criterion(model(x), y)
            loss.backward()
            if i > 0:
                elapsed += time.perf_counter() - tick
                images += len(y)
        model.zero_grad(set_to_none=True)
        rates[depth] = images / max(elapsed, 1e-9)
        if rates[depth] * budget < need:
            break
        chosen = depth
    return chosen, rates


def stage_head(model: ImageClassifier, cfg: TrainConfig, clean: Iterable, train_loader: Any, num_train: int,
               amp_dtype: torch.dtype | None, announce: bool,
               val: Iterable | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Run phase 1 and decide phase 2's depth; returns the config with `unfreeze_groups` set (so config.yaml
    and a resume know it) and the plan as measured, for the checkpoint and metrics.json.

    `clean` yields the training images in their evaluation view; `train_loader` the augmented ones; `val`, if
    given, validation images that score the head phase's time-curve points.
    """
    started = time.perf_counter()
    freeze_backbone(model)

    def augmented(view: int) -> Iterable:
        train_loader.set_epoch(-view)  # epochs below 0: views the top phase never draws
        return train_loader

    report = fit_head(model, cfg, clean, augmented, num_train, amp_dtype, cfg.time_budget, val)
    train_loader.set_epoch(0)
    rates: dict[int, float] = {}
    depth = cfg.unfreeze_groups
    if depth is None:
        remaining = max(0.0, (cfg.time_budget or 0.0) - report.seconds)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        depth, rates = choose_depth(model, train_loader, criterion, amp_dtype, remaining, num_train)
        set_trainable_top(model, 0)
    groups = len(model.layer_groups())
    plan = {"head": report.to_dict(), "unfreeze_groups": depth, "groups": groups,
            "top_images_per_second": {str(k): round(v, 1) for k, v in rates.items()},
            "seconds": round(time.perf_counter() - started, 3)}  # head phase and depth probing: part of the budget
    if announce and cfg.time_budget and plan["seconds"] > cfg.time_budget:
        print(f"imgclf: warning: the head phase took {plan['seconds']:.0f}s of a {cfg.time_budget:g}s budget "
              f"(features at {report.extract_images_per_second:.1f} img/s on this machine); the top layers get "
              "one batch. Give a larger --time-budget or a smaller --image-size.", file=sys.stderr)
    if announce:
        measured = f" (measured img/s by depth: {plan['top_images_per_second']})" if rates else ""
        seen = f"{report.views} view(s) of {num_train} images"
        if report.images < num_train:  # only a budget stops the clean view early: the share fit_head's stop used
            share = head_share(report.extract_images_per_second, num_train, cfg.time_budget)
            seen = f"{report.images} of {num_train} images (what {share:.0%} of the budget bought)"
        print(f"imgclf: staged fine-tuning: head trained on {seen} in "
              f"{report.seconds:.1f}s (features at {report.extract_images_per_second:.0f} img/s); then the top "
              f"{depth} of {groups} layer groups{measured}", file=sys.stderr)
    return cfg.replace(unfreeze_groups=depth), plan
