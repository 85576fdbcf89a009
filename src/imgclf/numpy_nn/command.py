"""`imgclf scratch-nn`: the gradient check, or a NumPy MLP / small CNN trained into a normal run directory."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imgclf.errors import UserError
from imgclf.fileio import atomic_file, write_json, write_text
from imgclf.numpy_nn.gradcheck import TOLERANCE, standard_checks
from imgclf.numpy_nn.losses import SoftmaxCrossEntropy
from imgclf.numpy_nn.model import Sequential, build_cnn, build_mlp
from imgclf.numpy_nn.optimizers import SGD, Adam, Optimizer
from imgclf.numpy_nn.train import HISTORY_FIELDS, FitResult, evaluate, fit

DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 1e-3}
MOMENTUM = 0.9
LABEL_SMOOTHING = 0.1  # a small, fixed regularizer: it helped the MLP on digits by ~0.5 points
CNN_CHANNELS = (32, 64)


def run_gradcheck(out: Any = None) -> int:
    """Print each check's worst relative error and the overall worst; 1 if any exceeds the tolerance."""
    out = out or sys.stdout
    results = standard_checks()
    width = max(len(r.name) for r in results)
    for r in results:
        flag = "ok" if r.passed() else "FAIL"
        detail = ", ".join(f"{k} {v:.1e}" for k, v in r.errors.items())
        print(f"{r.name:<{width}}  {r.worst:.2e}  {flag:4s}  ({detail})", file=out)
    worst = max(results, key=lambda r: r.worst)
    print(f"worst relative error: {worst.worst:.3e} ({worst.name}); tolerance {TOLERANCE:.0e}", file=out)
    return 0 if worst.worst <= TOLERANCE else 1


def load_data(data: str, data_dir: str | None, image_size: int | None, seed: int, subset: int | None) -> Any:
    """The project's data layer (a separate function so tests can stand in for it)."""
    from imgclf.data import load_splits

    return load_splits(data, data_dir=data_dir, image_size=image_size, val_fraction=0.1, seed=seed, subset=subset)


def _check_args(args: argparse.Namespace) -> None:
    if not args.out:
        raise UserError("scratch-nn needs --out DIR to train (or --gradcheck to check gradients)")
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr is None or args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (all(h >= 1 for h in args.hidden), f"--hidden sizes must be >= 1, got {args.hidden}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}"),
        (args.patience >= 0, f"--patience must be >= 0, got {args.patience}"),
        (args.time_budget is None or args.time_budget > 0, f"--time-budget must be > 0, got {args.time_budget}"),
        (args.subset is None or args.subset >= 1, f"--subset must be >= 1, got {args.subset}"),
        (args.image_size is None or args.image_size >= 4, f"--image-size must be >= 4, got {args.image_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _in_memory(split: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    images = getattr(split, "images", None)
    if images is None:
        raise UserError(f"the NumPy network needs the {name} images in memory; this data is streamed from disk "
                        "(use --subset or --image-size to make it smaller)")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"expected {name} images of shape (N, H, W, 3), got {images.shape}")
    return images, np.asarray(split.labels, dtype=np.int64)


class Normalizer:
    """uint8 NHWC batch -> float32 network input: /255, standardized per channel with train statistics;
    kept NHWC for the CNN, flattened for the MLP.

    Applied per batch rather than to the whole set up front, so CIFAR stays 150 MB of uint8 in memory.
    """

    def __init__(self, train_images: np.ndarray, layout: str) -> None:
        pixels = train_images.reshape(-1, train_images.shape[-1])
        mean = np.zeros(pixels.shape[1])
        sq = np.zeros(pixels.shape[1])
        for start in range(0, len(pixels), 1 << 22):  # chunked: no float64 copy of the whole set
            chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255.0
            mean += chunk.sum(axis=0)
            sq += (chunk * chunk).sum(axis=0)
        mean /= len(pixels)
        std = np.sqrt(np.maximum(sq / len(pixels) - mean * mean, 0.0))
        self.mean = mean
        self.std = np.where(std > 1e-8, std, 1.0)
        self.layout = layout
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._shift = (self.mean / self.std).astype(np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32) * self._scale - self._shift
        return x if self.layout == "NHWC" else x.reshape(len(x), -1)


def _optimizer(name: str, model: Sequential, lr: float, weight_decay: float) -> Optimizer:
    if name == "adam":
        return Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    momentum = 0.0 if name == "sgd" else MOMENTUM
    return SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=weight_decay)


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_file(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_FIELDS)
        for row in history:
            writer.writerow([row["epoch"]] + [_fmt(row[k]) for k in HISTORY_FIELDS[1:]])


def run_scratch_nn(args: argparse.Namespace) -> int:
    """Entry point of `imgclf scratch-nn`; returns the exit code."""
    if args.gradcheck:
        return run_gradcheck()
    _check_args(args)
    splits = load_data(args.data, args.data_dir, args.image_size, args.seed, args.subset)
    x_train, y_train = _in_memory(splits.train, "train")
    x_val, y_val = _in_memory(splits.val, "validation")
    test = getattr(splits, "test", None)
    x_test, y_test = _in_memory(test, "test") if test is not None and len(test.labels) else (None, None)
    classes = [str(c) for c in splits.train.classes]
    num_classes = len(classes)
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, found {num_classes}")
    _, h, w, c = x_train.shape
    if args.conv and h != w:
        raise UserError(f"--conv needs square images, got {h}x{w}; pass --image-size")

    layout = "NHWC" if args.conv else "flat"
    normalize = Normalizer(x_train, layout)
    if args.conv:
        model = build_cnn(c, h, args.hidden, num_classes, dropout=args.dropout, channels=CNN_CHANNELS,
                          seed=args.seed)
        model_name = "numpy-cnn"
    else:
        model = build_mlp(h * w * c, args.hidden, num_classes, dropout=args.dropout, seed=args.seed)
        model_name = "numpy-mlp"
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    optimizer = _optimizer(args.optimizer, model, lr, args.weight_decay)
    loss = SoftmaxCrossEntropy(label_smoothing=LABEL_SMOOTHING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "command": "scratch-nn", "data": args.data, "data_dir": args.data_dir, "model": model_name,
        "conv": bool(args.conv), "hidden": list(args.hidden), "cnn_channels": list(CNN_CHANNELS) if args.conv else None,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": lr, "optimizer": args.optimizer,
        "momentum": MOMENTUM if args.optimizer in ("momentum", "nesterov") else 0.0,
        "weight_decay": args.weight_decay, "dropout": args.dropout, "label_smoothing": LABEL_SMOOTHING,
        "schedule": "cosine", "patience": args.patience, "time_budget": args.time_budget, "subset": args.subset,
        "image_size": int(h), "requested_image_size": args.image_size, "val_fraction": 0.1, "seed": args.seed,
        "normalize_mean": [float(v) for v in normalize.mean], "normalize_std": [float(v) for v in normalize.std],
        "out": str(out),
    }
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(out / "classes.json", classes)

    def report(row: dict[str, float]) -> None:
        print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
              f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.3g}  "
              f"{row['seconds']:.1f}s", file=sys.stderr, flush=True)

    result: FitResult = fit(model, loss, optimizer, x_train, y_train, x_val, y_val, epochs=args.epochs,
                            batch_size=args.batch_size, schedule="cosine", patience=args.patience or None,
                            time_budget=args.time_budget, seed=args.seed, transform=normalize, on_epoch=report)
    write_history(out / "history.csv", result.history)

    val_loss, val_acc = evaluate(model, loss, x_val, y_val, transform=normalize)
    test_loss, test_acc = (evaluate(model, loss, x_test, y_test, transform=normalize)
                           if x_test is not None else (None, None))
    meta = {"classes": classes, "layout": layout, "image_size": int(h), "mean": config["normalize_mean"],
            "std": config["normalize_std"], "model": model_name}
    model.save(out / "model.npz", meta=meta)
    metrics = {
        "val_accuracy": val_acc, "val_loss": val_loss, "test_accuracy": test_acc, "test_loss": test_loss,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
        "train_seconds": result.train_seconds, "train_cpu_seconds": result.train_cpu_seconds,
        "images_per_second": result.images_per_second,
        "model": model_name, "num_params": model.num_params(),
        "architecture": [repr(layer) for layer in model.layers],
        "num_train": int(len(y_train)), "num_val": int(len(y_val)),
        "num_test": int(len(y_test)) if y_test is not None else 0, "num_classes": num_classes,
    }
    write_json(out / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "architecture"}, indent=2))
    return 0
