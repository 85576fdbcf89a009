"""Argument parsing only: every command calls into the modules that do the work.

User mistakes raise UserError anywhere below; `main` prints them as one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from imgclf.config import TrainConfig, from_dict, load_yaml, recipe_values
from imgclf.errors import TrainingDiverged, UserError

# Flags that map one-to-one onto TrainConfig fields: (flag, field, type, help).
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "data", str, "cifar10 | digits | an image folder | an archive (.tar, .tar.gz, .tar.xz, .zip)"),
    ("--data-dir", "data_dir", str, "where `cifar10` looks for the official batches"),
    ("--model", "model", str, "model name (see `imgclf models`)"),
    ("--weights", "weights", str, "a state dict file to load into the backbone"),
    ("--strategy", "strategy", str, "fine-tuning: auto | full | linear_probe | gradual"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "mini-batch size"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--optimizer", "optimizer", str, "sgd | adamw"),
    ("--weight-decay", "weight_decay", float, "weight decay (not applied to norms and biases)"),
    ("--schedule", "schedule", str, "onecycle | cosine | step | linear | constant"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--dropout", "dropout", float, "dropout before the classifier"),
    ("--image-size", "image_size", int, "model input size in pixels (default: the pretrained weights' own, else "
     "the data's, 64 for photos)"),
    ("--resize", "resize", str, "photos at evaluation and inference: crop (short side, centre 0.875; default) | pad "
     "(whole photo, letterboxed) | squash (whole photo, stretched)"),
    ("--val-fraction", "val_fraction", float, "share of train held out for validation"),
    ("--subset", "subset", int, "use at most N training images"),
    ("--train-fraction", "train_fraction", float, "use this share of the training images"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--amp-dtype", "amp_dtype", str, "bf16 | fp16"),
    ("--grad-clip", "grad_clip", float, "clip the gradient norm to this value"),
    ("--time-budget", "time_budget", float, "stop training after this many seconds, then evaluate and save"),
    ("--early-stop", "early_stop_patience", int, "stop after N epochs without val-accuracy gain"),
    ("--loader", "loader", str, "memory | stream | auto (stream a folder too big for a quarter of RAM)"),
    ("--num-workers", "num_workers", int, "worker processes of the streaming loader"),
]
_TRAIN_SWITCHES: list[tuple[str, str, str]] = [
    ("pretrained", "pretrained", "start from ImageNet weights"),
    ("amp", "amp", "mixed precision (default: on for CUDA)"),
    ("channels-last", "channels_last", "channels_last memory format"),
    ("compile", "compile", "torch.compile the model"),
    ("flip", "flip", "random horizontal flips"),
    ("tta", "tta", "test-time augmentation (mirror and 1-px shifts) in the final evaluation"),
    ("sync-bn", "sync_bn", "SyncBatchNorm under DDP"),
    ("quiet", "quiet", "no progress bar"),
]


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The TrainConfig flags shared by train, compare and lr-find (all default to 'not given')."""
    for flag, dest, typ, help_text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_text)
    for name, dest, help_text in _TRAIN_SWITCHES:
        p.add_argument(f"--{name}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    p.add_argument("--crop-pad", dest="crop_pad", type=int, default=None, help="random-translate padding (0: off)")
    p.add_argument("--cutout", dest="cutout", type=int, default=None, help="cutout square side (0: off)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--recipe", help="a recipe shipped with imgclf, applied under your own flags (`imgclf recipes`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, value parsed as YAML; repeatable")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < recipe < --config file < --set < explicit flags."""
    return from_dict(given_values(args), source=args.config or "options")


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the user set (recipe, file, --set, flags), later ones winning."""
    values: dict[str, Any] = {}
    if args.recipe:
        values.update(recipe_values(args.recipe))
        values.setdefault("extra", {})["recipe"] = args.recipe
    if args.config:
        values.update(load_yaml(args.config))
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip().replace("-", "_")] = yaml.safe_load(raw)
    for dest in [d for _, d, _, _ in _TRAIN_FLAGS] + [d for _, d, _ in _TRAIN_SWITCHES] + ["crop_pad", "cutout", "out"]:
        value = getattr(args, dest, None)
        if value is not None:
            values[dest] = value
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    from imgclf.training.run import train

    cfg = config_from_args(args)
    result = train(cfg, resume=args.resume, overrides=given_values(args))
    print(json.dumps(result.metrics, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgclf.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, tta=args.tta,
                                 data_dir=args.data_dir, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgclf.inference.predictor import Predictor

    if bool(args.checkpoint) == bool(args.onnx):
        raise UserError("give exactly one of --checkpoint or --onnx")
    predictor = Predictor.load(checkpoint=args.checkpoint, onnx=args.onnx, device=args.device)
    for path, pred in zip(args.images, predictor.predict_files(args.images, top_k=args.top_k), strict=True):
        print(json.dumps({"file": path, **pred}))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from imgclf.experiments.compare import run_compare

    base = config_from_args(args)
    result = run_compare(base, out=args.out_dir, preset=args.preset, variants_file=args.variants,
                         fractions=args.fractions, budget=args.budget)
    print(json.dumps({"out": str(args.out_dir), "verdict": result["verdict"]}, indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from imgclf.reporting.report import write_report

    path = write_report(args.run_dir)
    print(path)
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from imgclf.evaluation.lr_finder import run_lr_find

    cfg = config_from_args(args)
    result = run_lr_find(cfg, out=args.out_dir, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    print(f"suggested lr: {result['suggested_lr']:.3g}")
    print(f"plot: {result['plot']}")
    if result.get("note"):
        print(f"imgclf: note: {result['note']}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from imgclf.inference.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, opset=args.opset)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from imgclf.inference.server import serve

    if bool(args.checkpoint) == bool(args.onnx):
        raise UserError("give exactly one of --checkpoint or --onnx")
    serve(checkpoint=args.checkpoint, onnx=args.onnx, host=args.host, port=args.port,
          api_key=args.api_key or os.environ.get("IMGCLF_API_KEY"), max_batch_size=args.max_batch_size,
          max_wait_ms=args.max_wait_ms, max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
          max_files=args.max_files, device=args.device)
    return 0


def _cmd_scratch_nn(args: argparse.Namespace) -> int:
    from imgclf.numpy_nn.command import run_scratch_nn

    return run_scratch_nn(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from imgclf.models import list_models, model_entry

    for name, summary in list_models().items():
        status = model_entry(name).weights_status
        print(f"{name:24s} {summary}" + (f"; ImageNet weights: {status()}" if status else ""))
    print(f"{'timm:NAME':24s} any timm architecture (timm.list_models()) with your own weights: "
          "--model timm:NAME --weights FILE (.pth, .pt or .safetensors)")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from imgclf.config import list_recipes

    for name, summary in list_recipes().items():
        print(f"{name:<16} {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    parser = argparse.ArgumentParser(
        prog="imgclf", description="Train image classifiers from scratch or by fine-tuning a pretrained network, "
        "compare them, and serve the winner. `imgclf COMMAND --help` for each command.")
    try:
        parser.add_argument("--version", action="version", version=f"imgclf {version('imgclf')}")
    except PackageNotFoundError:  # running from a source tree that was never installed
        parser.add_argument("--version", action="version", version="imgclf (not installed)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a run directory")
    add_train_options(p)
    p.add_argument("--out", dest="out", help="run directory (default: runs/DATA-MODEL-TIME)")
    p.add_argument("--resume", help="RUN_DIR/checkpoints/last.pt to continue from")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy and confusion matrix as JSON")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="DATA (default: the checkpoint's own)")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--tta", action="store_true", help="average over the mirrored and 1-px shifted image")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files; JSON lines on stdout")
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint")
    p.add_argument("--onnx")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("compare", help="train variants on one split and write a comparison report")
    add_train_options(p)
    p.add_argument("--out", dest="out_dir", required=True, help="report directory")
    p.add_argument("--preset", default="transfer", help="transfer (scratch vs fine-tune) | regularization")
    p.add_argument("--variants", help="YAML of named variants: {name: {config overrides}}")
    p.add_argument("--fractions", help="training-set fractions to sweep, for example 0.1,0.5,1.0")
    p.add_argument("--budget", type=float, help="seconds of training for each run (default: derived from the data "
                   "and this machine, printed; --epochs N for equal epochs, --early-stop N to train each until "
                   "validation accuracy stops improving)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("report", help="write RUN_DIR/report.html and report.md")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("lr-find", help="learning-rate range test")
    add_train_options(p)
    p.add_argument("--out", dest="out_dir", default="lr_find", help="folder for the plot")
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.set_defaults(func=_cmd_lr_find)

    p = sub.add_parser("export", help="export a checkpoint to ONNX, verified against torch")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="HTTP inference server (FastAPI)")
    p.add_argument("--checkpoint")
    p.add_argument("--onnx")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require this key in the X-API-Key header (or set IMGCLF_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a request may wait for others to share its forward pass")
    p.add_argument("--max-upload-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--max-files", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("scratch-nn", help="the NumPy network written from scratch")
    p.add_argument("--gradcheck", action="store_true", help="check every layer and loss against finite differences")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run directory")
    p.add_argument("--conv", action="store_true", help="a small CNN instead of an MLP")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam"], default="adam")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--time-budget", type=float)
    p.add_argument("--subset", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_scratch_nn)

    p = sub.add_parser("models", help="list the model names")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("recipes", help="list the shipped recipes (--recipe NAME)")
    p.set_defaults(func=_cmd_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"imgclf: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"imgclf: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgclf: interrupted", file=sys.stderr)
        return 130
