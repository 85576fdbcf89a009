"""Argument parsing only: every command calls into the modules that do the work.

User mistakes raise UserError anywhere below, and bad flag values fail in the parser; both print one line
(`imgclf: error: ...`) and exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import yaml

from imgclf.config import TrainConfig, from_dict, load_yaml, recipe_values
from imgclf.defaults import LR_FIND_END, LR_FIND_START, LR_FIND_STEPS
from imgclf.errors import TrainingDiverged, UserError

DESCRIPTION = """\
Train image classifiers on a laptop CPU, one GPU or several: a CNN from scratch, or an
ImageNet-pretrained network fine-tuned on your own photos. imgclf compares the two on the same
data and budget, explains each run in a report, and serves the winner over HTTP.

DATA is `digits` (bundled, works offline), `cifar10`, a folder of <class>/<image> (optionally
split into train/ val/ test/), a .tar, .tar.gz, .tar.xz or .zip archive of one, or a labels .csv
(columns file,label[,split], paths relative to the CSV)."""

EPILOG = """\
examples:
  imgclf train --data digits --out runs/digits
  imgclf evaluate --checkpoint runs/digits/checkpoints/best.pt
  imgclf compare --data photos.tar.xz --out runs/photos
  imgclf report runs/digits
  imgclf serve --checkpoint runs/digits/checkpoints/best.pt
  imgclf doctor

`imgclf COMMAND --help` shows each command's options and their defaults."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`imgclf: error: ...`), like every other user mistake,
    instead of argparse's usage block followed by the message."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("imgclf").strip()
        hint = f"imgclf {where} --help" if where else "imgclf --help"
        self.exit(2, f"imgclf: error: {where + ': ' if where else ''}{message} (see {hint})\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default unless the help already says it or there is none to show."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class TopHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level help keeps the line breaks of its description and examples."""


# -- flag values, checked where they are parsed so that a bad one never starts any work ---------------------

def number(kind: type[int] | type[float], name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Callable[[str], int | float]:
    """An argparse type: `kind` within [low, high] (open ends where asked), with a message naming `name`."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"{name} must be {'above' if low_open else 'at least'} {low:g}, "
                                             f"got {text}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"{name} must be {'below' if high_open else 'at most'} {high:g}, "
                                             f"got {text}")
        return value

    return parse


def existing_file(what: str) -> Callable[[str], str]:
    """An argparse type for a file to read: missing is refused before any work starts (compare would
    otherwise train its first variants before the one that reads the file fails)."""

    def check(text: str) -> str:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"{what} not found: {text}")
        return text

    return check


CHECKPOINT, ONNX_FILE = existing_file("checkpoint"), existing_file("ONNX file")
CHECKPOINT_HELP = "a checkpoint written by `imgclf train` (RUN_DIR/checkpoints/best.pt or last.pt)"


def new_path(text: str) -> str:
    """A path to write to: it may be missing, but must not be an existing file where a folder is meant."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def file_path(text: str) -> str:
    """A file to write (ONNX): not an existing folder."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name (model.onnx, predictions.csv)")
    return text


def device(text: str) -> str:
    if text not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", text):
        raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def host(text: str) -> str:
    """An IP address or a host name (checked for its form here; bound by the server)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?", text):
            raise argparse.ArgumentTypeError(f"not an IP address or host name: {text!r}") from None
    return text


def api_key(text: str) -> str:
    """Non-empty and header-safe: an empty key would silently leave the server open."""
    if not text or not re.fullmatch(r"[\x21-\x7e]+", text):
        raise argparse.ArgumentTypeError("the API key must be non-empty printable ASCII without spaces")
    return text


def hub_url(text: str) -> str:
    """An http(s) URL with a host: a Hugging Face Hub, a mirror of one, or a local one for tests."""
    from urllib.parse import urlparse

    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"hub-url must be an http(s) URL such as https://huggingface.co, got {text!r}")
    return text.rstrip("/")


def _default(dest: str) -> Any:
    return next(f.default for f in fields(TrainConfig) if f.name == dest)


# Flags that map one-to-one onto TrainConfig fields: (flag, field, type, help). The default shown in --help
# is the TrainConfig's own; where that is None the help says how the run decides (config.resolve).
_TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--data", "data", str, "cifar10 | digits | an image folder | an archive (.tar, .tar.gz, .tar.xz, .zip) | a "
     "labels .csv (file,label[,split])"),
    ("--data-dir", "data_dir", new_path, "where `cifar10` looks for (or downloads) the official batches "
     "(default: ~/.cache/imgclf/cifar10)"),
    ("--model", "model", str, "model name (see `imgclf models`), or timm:NAME with --weights, or with --pretrained "
     "once `imgclf weights fetch timm:NAME` has cached its hub weights"),
    ("--weights", "weights", existing_file("weights file"), "a state dict file (.pth, .pt, .safetensors) to load "
     "into the backbone (default: none)"),
    ("--strategy", "strategy", str, "auto | scratch | staged | full | linear_probe | gradual (auto: staged "
     "fine-tuning with pretrained weights, else from scratch)"),
    ("--epochs", "epochs", number(int, "epochs", 1), "number of epochs (default: 10, or as many as fit in "
     "--time-budget)"),
    ("--batch-size", "batch_size", number(int, "batch_size", 1), "mini-batch size (default: 256; on a CPU 128 for "
     "small images from scratch and 32 to fine-tune; never over 1/8 of the training images)"),
    ("--lr", "lr", number(float, "lr", 0, low_open=True), "peak learning rate (default: 0.1 for sgd, 0.2 for "
     "small images from scratch on a CPU, 2e-3 for adamw, 1e-3 to fine-tune)"),
    ("--optimizer", "optimizer", str, "sgd | adamw (default: sgd from scratch, adamw to fine-tune)"),
    ("--weight-decay", "weight_decay", number(float, "weight_decay", 0), "weight decay, not applied to norms and "
     "biases (default: 5e-4 for sgd, 0.05 for adamw)"),
    ("--schedule", "schedule", str, "onecycle | cosine | step | linear | constant"),
    ("--label-smoothing", "label_smoothing", number(float, "label_smoothing", 0, 1, high_open=True),
     "label smoothing"),
    ("--dropout", "dropout", number(float, "dropout", 0, 1, high_open=True), "dropout before the classifier"),
    ("--image-size", "image_size", number(int, "image_size", 8), "model input size in pixels (default: the "
     "pretrained weights' own, else the data's, 64 for photos)"),
    ("--resize", "resize", str, "photos at evaluation and inference: crop (short side, centre 0.875) | pad "
     "(whole photo, letterboxed) | squash (whole photo, stretched)"),
    ("--val-fraction", "val_fraction", number(float, "val_fraction", 0, 1, low_open=True, high_open=True),
     "share of train held out for validation when the data has no val split"),
    ("--subset", "subset", number(int, "subset", 1), "use at most N training images (default: all)"),
    ("--train-fraction", "train_fraction", number(float, "train_fraction", 0, 1, low_open=True),
     "use this share of the training images"),
    ("--seed", "seed", number(int, "seed", 0, 2**32 - 1), "random seed"),
    ("--device", "device", device, "auto | cpu | cuda | cuda:N"),
    ("--amp-dtype", "amp_dtype", str, "bf16 | fp16 (on a CPU always bf16)"),
    ("--grad-clip", "grad_clip", number(float, "grad_clip", 0, low_open=True),
     "clip the gradient norm to this value (default: no clipping)"),
    ("--time-budget", "time_budget", number(float, "time_budget", 0, low_open=True),
     "seconds of training, then evaluate and save; the LR schedule anneals to it (default: no budget)"),
    ("--early-stop", "early_stop_patience", number(int, "early_stop", 1),
     "stop after N epochs without a gain in the --monitor value (default: off)"),
    ("--loader", "loader", str, "memory | stream | auto (stream a folder too big for a quarter of RAM)"),
    ("--num-workers", "num_workers", number(int, "num_workers", 0), "worker processes of the streaming loader"),
    ("--threads", "threads", number(int, "threads", 1), "torch CPU threads (default: OMP_NUM_THREADS, else all "
     "cores, or 1 when measured much faster because other work keeps the cores busy)"),
    ("--crop-pad", "crop_pad", number(int, "crop_pad", 0), "small images: random-translate padding in pixels "
     "(0: off)"),
    ("--cutout", "cutout", number(int, "cutout", 0), "small images: cutout square side in pixels (0: off)"),
    ("--low-res", "low_res", number(float, "low_res", 0, 1, high_open=True), "share of training that sees the "
     "images at 3/4 of their side, the first part (default: 0.5 for a time-budgeted CPU run from scratch, else 0)"),
    ("--class-weights", "class_weights", str, "none | auto (weight each class's loss by its inverse frequency "
     "in the training split, for imbalanced data)"),
    ("--sampler", "sampler", str, "shuffle | balanced (draw each class equally often, with replacement, "
     "for imbalanced data)"),
    ("--monitor", "monitor", str, "val_acc | macro_f1 | map: what best.pt and --early-stop select on (multi-label "
     "data, a labels CSV with several labels a row: map, mean average precision, in place of val_acc)"),
    ("--mixup", "mixup", number(float, "mixup", 0), "mixup alpha: blend each training batch with itself in "
     "reverse order, targets mixed alike (default: 0, off)"),
    ("--cutmix", "cutmix", number(float, "cutmix", 0), "cutmix alpha: paste a box of the reversed batch, "
     "targets mixed by area (default: 0, off)"),
    ("--mix-switch", "mix_switch", number(float, "mix_switch", 0, 1), "with --mixup and --cutmix both on: "
     "the probability that a batch gets cutmix"),
    ("--ema", "ema", number(float, "ema", 0, 1, high_open=True), "decay of an exponential moving average of "
     "the weights, e.g. 0.999; evaluated beside the raw weights, the better one kept (default: 0, off)"),
    ("--accumulate", "accumulate", number(int, "accumulate", 1), "sum the gradients of K batches into each "
     "optimizer step (an effective batch of K x --batch-size)"),
    # not --log: torchrun's own parser takes that for an abbreviation of its --log-dir and refuses it
    ("--logger", "logger", str, "none | tensorboard (scalars and the confusion matrix in RUN_DIR/tensorboard/; "
     "pip install 'imgclf[log]') | mlflow (the plan as params, each epoch's metrics, then the checkpoints and "
     "the rendered report as artifacts, into $MLFLOW_TRACKING_URI, else ./mlruns; experiment "
     "$MLFLOW_EXPERIMENT_NAME, else imgclf; pip install 'imgclf[mlflow]')"),
    ("--checkpoint-every", "checkpoint_every", str, "also write checkpoints/last.pt inside an epoch: every N "
     "steps (500), every 90s / 10m, or off (epoch ends only); --resume continues from the exact batch "
     "(default: 10m)"),
]
_TRAIN_SWITCHES: list[tuple[str, str, str]] = [
    ("pretrained", "pretrained", "start from ImageNet weights: shipped for EfficientNet-Lite, from imgclf's cache "
     "for timm:NAME, never downloaded (see `imgclf models`)"),
    ("amp", "amp", "mixed precision (default: on for CUDA, and on CPUs with native bf16 from scratch)"),
    ("channels-last", "channels_last", "channels_last memory format"),
    ("compile", "compile", "torch.compile the model"),
    ("flip", "flip", "random horizontal flips in training"),
    ("tta", "tta", "test-time augmentation (mirror and 1-px shifts) in the final evaluation"),
    ("sync-bn", "sync_bn", "SyncBatchNorm under torchrun"),
    ("quiet", "quiet", "no progress output"),
]


def _with_default(dest: str, help_text: str) -> str:
    """The help text, followed by the TrainConfig default unless the text already says how it is decided."""
    value = _default(dest)
    if "default" in help_text:
        return help_text
    if value is None:
        return f"{help_text} (default: decided from the data and machine; config.yaml records it)"
    shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return f"{help_text} (default: {shown})"


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The TrainConfig flags shared by train, compare and lr-find (all default to 'not given', so that a
    recipe, --config and --set can set them)."""
    for flag, dest, typ, help_text in _TRAIN_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=_with_default(dest, help_text))
    for name, dest, help_text in _TRAIN_SWITCHES:
        p.add_argument(f"--{name}", dest=dest, action=argparse.BooleanOptionalAction, default=None,
                       help=_with_default(dest, help_text))
    p.add_argument("--config", metavar="FILE.yaml", type=existing_file("config file"),
                   help="YAML file of config keys")
    p.add_argument("--recipe", metavar="NAME", help="a recipe shipped with imgclf, applied under your own flags "
                   "(`imgclf recipes`)")
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
    for dest in [d for _, d, _, _ in _TRAIN_FLAGS] + [d for _, d, _ in _TRAIN_SWITCHES] + ["out"]:
        value = getattr(args, dest, None)
        if value is not None:
            values[dest] = value
    return values


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK), or a plain process: only it prints results, so there is one JSON."""
    return os.environ.get("RANK", "0") == "0"


def _say(message: str) -> None:
    if is_main_process():
        print(f"imgclf: {message}", file=sys.stderr, flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from imgclf.rundir import RunDir
    from imgclf.training.callbacks import AnnounceRunDir
    from imgclf.training.run import train

    cfg = config_from_args(args)
    overrides = given_values(args)
    if args.resume:  # the checkpoint's own run directory, or --out to continue in a new one
        where = Path(cfg.out) if cfg.out else Path(args.resume).resolve().parent.parent
    else:
        where = RunDir.new(cfg.out, cfg).path  # the default name (runs/DATA-MODEL-TIME) fixed now, to print it
        cfg = cfg.replace(out=str(where))
    result = train(cfg, resume=args.resume, overrides=overrides, extra_callbacks=[AnnounceRunDir(where)])
    if is_main_process():
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}, indent=2))
    _say(f"wrote {result.run_dir} (`imgclf report {result.run_dir}` renders its report)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgclf.commands.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, tta=args.tta,
                                 data_dir=args.data_dir, device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from imgclf.inference.predictor import predict_command

    return predict_command(args.images, args.checkpoint, args.onnx, args.top_k, args.device, explain=args.explain,
                           csv_out=args.out, batch_size=args.batch_size, quiet=args.quiet, tta=args.tta,
                           reject_below=args.reject_below, target_accuracy=args.target_accuracy)


def _cmd_compare(args: argparse.Namespace) -> int:
    from imgclf.experiments.compare import run_compare

    base = config_from_args(args)
    result = run_compare(base, out=args.out_dir, preset=args.preset, variants_file=args.variants,
                         fractions=args.fractions, budget=args.budget, seeds=args.seeds)
    report = Path(args.out_dir) / "report.html"
    runs = [r["run_dir"] for r in result["runs"] if not r.get("error")]
    print(json.dumps({"out": str(args.out_dir), "report": str(report), "runs": runs,
                      "verdict": result["verdict"]}, indent=2))
    if runs:
        _say(f"each run's own report: imgclf report {runs[0]}")
    _say(f"report: {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from imgclf.reporting.report import write_report

    path = write_report(args.run_dir)
    print(path)
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from imgclf.commands.lr_find import run_lr_find

    cfg = config_from_args(args)
    result = run_lr_find(cfg, out=args.out_dir, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    print(f"suggested lr: {result['suggested_lr']:.3g}")
    print(f"plot: {result['plot']}")
    if result.get("note"):
        print(f"imgclf: note: {result['note']}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from imgclf.inference.export import export_int8, export_onnx

    if not args.int8 and (args.calibration_images is not None or args.max_accuracy_drop is not None
                          or args.data is not None):
        raise UserError("--data, --calibration-images and --max-accuracy-drop go with --int8")
    report = (export_int8(args.checkpoint, args.out, opset=args.opset, data=args.data,
                          calibration_images=args.calibration_images, max_accuracy_drop=args.max_accuracy_drop)
              if args.int8 else export_onnx(args.checkpoint, args.out, opset=args.opset))
    print(json.dumps(report, indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from imgclf.inference.server import serve
    from imgclf.inference.settings import serve_options, switch_options

    if bool(args.checkpoint) == bool(args.onnx):
        raise UserError("give exactly one of --checkpoint or --onnx")
    serve(checkpoint=args.checkpoint, onnx=args.onnx, host=args.host, port=args.port, device=args.device,
          api_key=args.api_key or os.environ.get("IMGCLF_API_KEY"), reject_below=args.reject_below,
          target_accuracy=args.target_accuracy,
          **{option.name: getattr(args, option.name) for option in [*serve_options(), *switch_options()]})
    return 0


def _cmd_scratch_nn(args: argparse.Namespace) -> int:
    from imgclf.numpy_nn.command import run_scratch_nn

    return run_scratch_nn(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from imgclf.models import list_models, model_entry
    from imgclf.models.hub import list_cached

    for name, summary in list_models().items():
        status = model_entry(name).weights_status
        print(f"{name:24s} {summary}" + (f"; ImageNet weights: {status()}" if status else ""))
    print(f"{'timm:NAME':24s} any timm architecture (timm.list_models()) with your own weights: "
          "--model timm:NAME --weights FILE (.pth, .pt or .safetensors); or its hub weights: "
          "`imgclf weights fetch timm:NAME` once, then --pretrained uses the cache, offline")
    for record in list_cached():
        print(f"{record['model']:24s} hub weights cached ({record['repo_id']}@{record['commit'][:12]}, sha256 "
              f"{record['sha256'][:12]}): --model {record['model']} --pretrained")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from imgclf.models.hub import list_cached

    if args.action == "list":
        if args.model or args.hub_url or args.force:
            raise UserError("weights list takes no model, --hub-url or --force (they go with weights fetch)")
        cached = list_cached()
        if not cached:
            _say("no hub weights cached; `imgclf weights fetch timm:NAME` fetches some where there is a network")
        for record in cached:
            print(f"{record['model']:32s} {record['size'] / 1e6:8.1f} MB  sha256 {record['sha256'][:16]}  "
                  f"{record['repo_id']}@{record['commit'][:12]}  fetched {record['fetched_at']}  {record['path']}")
        return 0
    if args.model is None:
        raise UserError("weights fetch needs a model: imgclf weights fetch timm:NAME")
    from imgclf.models.timm_any import fetch_weights

    record, fetched = fetch_weights(args.model, hub_url=args.hub_url, force=args.force)
    print(json.dumps(record, indent=2))
    _say(f"{'fetched and checked' if fetched else 'already cached (--force fetches again)'}: {record['path']}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from imgclf.config import list_recipes

    for name, summary in list_recipes().items():
        print(f"{name:<16} {summary}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from imgclf.commands.inspect import run_inspection

    summary = run_inspection(args.data, checkpoint=args.checkpoint, out=args.out, data_dir=args.data_dir,
                             max_distance=args.max_distance, device=args.device)
    print(json.dumps(summary, indent=2))
    _say(f"wrote {summary['report']} and {summary['json']}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from imgclf.doctor import collect, render

    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else render(facts))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgclf")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "(not installed)"


def _train_options(p: argparse.ArgumentParser) -> None:
    """The `train` command's options."""
    add_train_options(p)
    p.add_argument("--out", dest="out", type=new_path, metavar="RUN_DIR",
                   help="run directory (default: runs/DATA-MODEL-TIME)")
    p.add_argument("--resume", metavar="CHECKPOINT", type=CHECKPOINT, help="RUN_DIR/checkpoints/last.pt to continue "
                   "from")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    """The `evaluate` command's options."""
    p.add_argument("--checkpoint", type=CHECKPOINT, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", help="DATA to evaluate on (default: the checkpoint's own)")
    p.add_argument("--data-dir", type=new_path, help="where `cifar10` looks for the official batches "
                   "(default: the checkpoint's own)")
    p.add_argument("--split", choices=["test", "val", "all"], default="test", help="which split to evaluate (all: "
                   "every image of the data, a plain <class>/<image> folder or all its splits together)")
    p.add_argument("--tta", action="store_true", help="average over the mirrored and 1-px shifted image")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")


def _predict_options(p: argparse.ArgumentParser) -> None:
    """The `predict` command's options."""
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...), folders of them or "
                   "archives (.tar, .tar.gz, .tar.xz, .zip); a folder of <class>/<image> is also scored")
    p.add_argument("--out", type=file_path, metavar="FILE.csv", help="write one CSV row per image (file, top-k "
                   "labels and probabilities, true label where folders name it, error) and print a summary")
    p.add_argument("--batch-size", type=number(int, "batch_size", 1), default=64, help="images decoded and "
                   "classified at a time")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--checkpoint", type=CHECKPOINT, help=f"{CHECKPOINT_HELP} (or give --onnx)")
    p.add_argument("--onnx", type=ONNX_FILE, help="a model written by `imgclf export` (or give --checkpoint)")
    p.add_argument("--top-k", type=number(int, "top_k", 1), default=5, help="how many labels to list per image")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--explain", type=new_path, metavar="DIR", help="write a Grad-CAM overlay of each image "
                   "(NAME.gradcam.png: where the predicted class was seen) to DIR; needs --checkpoint")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average each image over its "
                   "mirrored and 1-px shifted views (6 views, as `evaluate --tta`: about 6x the compute; the "
                   "cost is printed to stderr, measured on the first batch)")
    _reject_options(p)


def _reject_options(p: argparse.ArgumentParser) -> None:
    """predict's and serve's "I don't know": a threshold given, or one chosen for a target accuracy."""
    reject = p.add_mutually_exclusive_group()
    reject.add_argument("--reject-below", type=number(float, "reject-below", 0, 1, low_open=True, high_open=True),
                        metavar="P", help="answer label null, with the reason, for an image whose top probability "
                        "(temperature-calibrated on the validation split) is under P (default: always answer)")
    reject.add_argument("--target-accuracy", type=number(float, "target-accuracy", 0, 1, low_open=True),
                        metavar="A", help="as --reject-below, with the threshold at which the validation images "
                        "answered reach accuracy A (chosen on the curve kept in the checkpoint or ONNX file)")


def _compare_options(p: argparse.ArgumentParser) -> None:
    """The `compare` command's options."""
    add_train_options(p)
    p.add_argument("--out", dest="out_dir", type=new_path, metavar="DIR", required=True,
                   help="report directory (DIR/report.html), with each run under DIR/runs/")
    p.add_argument("--preset", default="transfer", help="transfer (scratch vs fine-tune) | regularization")
    p.add_argument("--variants", metavar="FILE.yaml", type=existing_file("variants file"),
                   help="YAML of named variants: {name: {config overrides}}, "
                   "instead of a preset")
    p.add_argument("--fractions", help="training-set fractions to sweep, for example 0.1,0.5,1.0 (default: all "
                   "of it once)")
    p.add_argument("--budget", type=number(float, "budget", 0, low_open=True),
                   help="seconds of training for each run (default: derived from the data and this machine, "
                   "printed; --epochs N for equal epochs, --early-stop N to train each until validation accuracy "
                   "stops improving)")
    from imgclf.defaults import COMPARE_SEEDS, MIN_SPREAD_SEEDS, SEEDS_MAX_TRAIN_IMAGES, SEEDS_WALL_SECONDS

    p.add_argument("--seeds", type=number(int, "seeds", 1, 100), metavar="N",
                   help="train each variant N times (training seeds --seed .. --seed+N-1, the same split) and count "
                   f"the spread in the verdict (default: {COMPARE_SEEDS} or {MIN_SPREAD_SEEDS} on up to "
                   f"{SEEDS_MAX_TRAIN_IMAGES:,} training images, as many as fit in about {SEEDS_WALL_SECONDS / 60:g} "
                   "minutes of runs, a derived budget shrinking to make room; else 1; printed)")


def _report_options(p: argparse.ArgumentParser) -> None:
    """The `report` command's options."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `imgclf train`")


def _lr_find_options(p: argparse.ArgumentParser) -> None:
    """The `lr-find` command's options."""
    add_train_options(p)
    p.add_argument("--out", dest="out_dir", type=new_path, default="lr_find", help="folder for the plot")
    p.add_argument("--start-lr", type=number(float, "start_lr", 0, low_open=True), default=LR_FIND_START,
                   help="the smallest LR tried")
    p.add_argument("--end-lr", type=number(float, "end_lr", 0, low_open=True), default=LR_FIND_END,
                   help="the largest LR tried")
    p.add_argument("--steps", type=number(int, "steps", 2), default=LR_FIND_STEPS, help="training steps, one LR each")


def _export_options(p: argparse.ArgumentParser) -> None:
    """The `export` command's options."""
    p.add_argument("--checkpoint", type=CHECKPOINT, required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", type=file_path, required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=number(int, "opset", 7), default=18, help="ONNX opset version")
    from imgclf.defaults import INT8_CALIBRATION_IMAGES, INT8_MAX_ACCURACY_DROP

    p.add_argument("--int8", action="store_true", help="static int8 quantization (ONNX Runtime, QDQ, per-channel "
                   "weights), calibrated on training images; scored beside fp32 on the validation split, and "
                   "refused (nothing written) when it loses more than --max-accuracy-drop")
    p.add_argument("--calibration-images", type=number(int, "calibration-images", 1), default=None,
                   help=f"with --int8: images to calibrate on (default {INT8_CALIBRATION_IMAGES})")
    p.add_argument("--max-accuracy-drop", type=number(float, "max-accuracy-drop", 0), default=None, metavar="POINTS",
                   help=f"with --int8: accuracy points int8 may lose against fp32 (default {INT8_MAX_ACCURACY_DROP:g})")
    p.add_argument("--data", help="with --int8: DATA to calibrate and score on (default: the checkpoint's own)")


def _serve_options(p: argparse.ArgumentParser) -> None:
    """The `serve` command's options."""
    p.add_argument("--checkpoint", type=CHECKPOINT, help=f"{CHECKPOINT_HELP} (or give --onnx)")
    p.add_argument("--onnx", type=ONNX_FILE, help="a model written by `imgclf export` (or give --checkpoint)")
    p.add_argument("--host", type=host, default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=number(int, "port", 0, 65535), default=8000, help="port to listen on")
    p.add_argument("--api-key", type=api_key, help="require this key in the X-API-Key header (default: "
                   "$IMGCLF_API_KEY, else no key)")
    from imgclf.inference.settings import serve_options, switch_options

    for option in serve_options():  # the limits: defaults, help and bounds from ServerSettings
        p.add_argument(f"--{option.name.replace('_', '-')}", default=option.default, help=option.metadata["help"],
                       type=number(type(option.default), option.name, option.metadata["minimum"]))
    for option in switch_options():  # on/off (--tta): default and help from ServerSettings
        p.add_argument(f"--{option.name.replace('_', '-')}", action="store_true", default=option.default,
                       help=option.metadata["switch"])
    _reject_options(p)
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N")


def _scratch_nn_options(p: argparse.ArgumentParser) -> None:
    """The `scratch-nn` command's options."""
    p.add_argument("--gradcheck", action="store_true", help="check every layer and loss against finite differences")
    p.add_argument("--data", default="digits", help="DATA to train on")
    p.add_argument("--data-dir", type=new_path, help="where `cifar10` looks for the official batches "
                   "(default: ~/.cache/imgclf/cifar10)")
    p.add_argument("--out", type=new_path, help="run directory (default: none written)")
    p.add_argument("--conv", action="store_true", help="a small CNN instead of an MLP")
    p.add_argument("--epochs", type=number(int, "epochs", 1), default=30, help="most epochs")
    p.add_argument("--batch-size", type=number(int, "batch_size", 1), default=64, help="mini-batch size")
    p.add_argument("--lr", type=number(float, "lr", 0, low_open=True), default=None,
                   help="learning rate (default: 1e-3 for adam, 0.1 for sgd, 0.05 with momentum)")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "nesterov", "adam"], default="adam",
                   help="optimizer")
    p.add_argument("--hidden", type=number(int, "hidden", 1), nargs="+", default=[128, 64],
                   help="hidden layer widths of the MLP (default: 128 64)")
    p.add_argument("--weight-decay", type=number(float, "weight_decay", 0), default=1e-4, help="L2 weight decay")
    p.add_argument("--dropout", type=number(float, "dropout", 0, 1, high_open=True), default=0.0,
                   help="dropout between hidden layers")
    p.add_argument("--patience", type=number(int, "patience", 1), default=5,
                   help="stop after N epochs without val-accuracy gain")
    p.add_argument("--time-budget", type=number(float, "time_budget", 0, low_open=True),
                   help="stop after this many seconds (default: no budget)")
    p.add_argument("--subset", type=number(int, "subset", 1), help="use at most N training images (default: all)")
    p.add_argument("--image-size", type=number(int, "image_size", 4),
                   help="resize images to this side (default: the data's own)")
    p.add_argument("--seed", type=number(int, "seed", 0, 2**32 - 1), default=0, help="random seed")


def _inspect_options(p: argparse.ArgumentParser) -> None:
    """The `inspect` command's options."""
    p.add_argument("--data", required=True, help="cifar10 | digits | an image folder | an archive")
    p.add_argument("--checkpoint", type=CHECKPOINT, help=f"{CHECKPOINT_HELP}, to look for label errors "
                   "(default: none)")
    p.add_argument("--out", type=new_path, metavar="DIR", help="report folder (default: runs/inspect-DATA-TIME)")
    p.add_argument("--data-dir", type=new_path, help="where `cifar10` looks for the official batches "
                   "(default: ~/.cache/imgclf/cifar10)")
    p.add_argument("--max-distance", type=number(int, "max_distance", 0, 64), default=8,
                   help="near duplicates: the most bits of the 64-bit perceptual hashes that may differ (pairs "
                   "whose thumbnails also correlate at 0.9 or more are kept)")
    p.add_argument("--device", type=device, default="auto", help="auto | cpu | cuda | cuda:N (for --checkpoint)")


def _weights_options(p: argparse.ArgumentParser) -> None:
    """The `weights` command's options."""
    p.add_argument("action", choices=["fetch", "list"], help="fetch: download, check and cache one model's hub "
                   "weights; list: what the cache holds")
    p.add_argument("model", nargs="?", metavar="timm:NAME", help="the model to fetch, e.g. timm:resnet18 or "
                   "timm:resnet18.a1_in1k (timm's pretrained config names its hub repository)")
    p.add_argument("--hub-url", type=hub_url, metavar="URL", help="the hub to fetch from (default: $HF_ENDPOINT, "
                   "else https://huggingface.co)")
    p.add_argument("--force", action="store_true", help="fetch again even when the cache has it")


def _doctor_options(p: argparse.ArgumentParser) -> None:
    """The `doctor` command's options."""
    p.add_argument("--json", action="store_true", help="print the facts as JSON")


# each command: (name, one-line summary, longer description or None, options function or None, handler)
AddOptions = Callable[[argparse.ArgumentParser], None]
COMMANDS: list[tuple[str, str, str | None, AddOptions | None, Callable[[argparse.Namespace], int]]] = [
    ("train", "train a model; writes a run directory",
     "Train a model from scratch or fine-tune a pretrained one. Writes a run directory (config.yaml, "
     "history.csv, metrics.json, classes.json, checkpoints/last.pt and best.pt), prints its path at "
     "start and end, and prints the final metrics as JSON.",
     _train_options, _cmd_train),
    ("evaluate", "accuracy, loss, per-class accuracy and confusion matrix as JSON",
     None,
     _evaluate_options, _cmd_evaluate),
    ("predict", "classify image files, folders or archives; JSON lines on stdout, or a CSV (--out)",
     None,
     _predict_options, _cmd_predict),
    ("compare", "train variants on one split and write a comparison report",
     "Train several variants (by default from scratch vs fine-tuning a pretrained network) on the "
     "same split with the same budget; writes DIR/report.html, report.md and comparison.json, and "
     "each run's directory under DIR/runs/.",
     _compare_options, _cmd_compare),
    ("report", "write RUN_DIR/report.html and report.md",
     None,
     _report_options, _cmd_report),
    ("lr-find", "learning-rate range test: prints a suggested LR and saves the plot",
     None,
     _lr_find_options, _cmd_lr_find),
    ("export", "export a checkpoint to ONNX, verified against torch",
     None,
     _export_options, _cmd_export),
    ("serve", "HTTP inference server (FastAPI)",
     "Serve a model over HTTP: POST /predict (form field `file`), POST /predict/batch (form field "
     "`files`, repeated), GET /health, /metadata, /docs and a page at /.",
     _serve_options, _cmd_serve),
    ("scratch-nn", "the NumPy network written from scratch",
     None,
     _scratch_nn_options, _cmd_scratch_nn),
    ("models", "list the model names and whether their ImageNet weights are installed or cached",
     None,
     None, _cmd_models),
    ("weights", "fetch timm:NAME's hub weights into the cache (where there is a network); list the cache",
     "`imgclf weights fetch timm:NAME` downloads NAME's weights from the Hugging Face Hub repository that "
     "timm's pretrained config names, checks them (size and sha256 against the hub's, a strict load into the "
     "model) and caches them with where they came from. `--model timm:NAME --pretrained` then loads the "
     "cached file and never touches the network. `imgclf weights list` shows the cache.",
     _weights_options, _cmd_weights),
    ("recipes", "list the shipped recipes (--recipe NAME)",
     None,
     None, _cmd_recipes),
    ("inspect", "a dataset health check before training: DIR/inspection.html and inspection.json",
     "Check a dataset before training: images per class and split, sample images, sizes and aspect "
     "ratios, unreadable files, exact and near duplicates (within a class, across classes, across "
     "splits) and, given --checkpoint, suspected label errors on the images it did not train on.",
     _inspect_options, _cmd_inspect),
    ("doctor", "this machine in one screen: Python, torch, CPU, CUDA, weights, cache, extras",
     None,
     _doctor_options, _cmd_doctor),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imgclf", description=DESCRIPTION, epilog=EPILOG, formatter_class=TopHelpFormatter)
    parser.add_argument("--version", action="version", version=f"imgclf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary, description, add_options, handler in COMMANDS:
        p = sub.add_parser(name, help=summary, description=description or summary, formatter_class=HelpFormatter)
        if add_options is not None:
            add_options(p)
        p.set_defaults(func=handler)
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
