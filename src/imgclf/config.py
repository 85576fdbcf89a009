"""TrainConfig: every training option and its default, in one place, round-tripped through YAML."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from imgclf.defaults import (
    BATCH_SIZE,
    BUDGET_EPOCH_PASSES,
    BUDGET_RANGE,
    COMPARE_SEEDS,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED_MODEL,
    DEFAULT_WEIGHT_DECAY,
    FINETUNE_CPU_BATCH_SIZE,
    FINETUNE_LR,
    FINETUNE_OPTIMIZER,
    LOW_RES_SCALE,
    LOW_RES_SHARE,
    MIN_SPREAD_SEEDS,
    NUM_WORKERS,
    PHOTO_CROP_FRACTION,
    RUN_OVERHEAD_SECONDS,
    SCRATCH_CPU_BATCH_SIZE,
    SCRATCH_CPU_LR,
    SCRATCH_OPTIMIZER,
    SEEDS_MAX_TRAIN_IMAGES,
    SEEDS_WALL_SECONDS,
    SIZING_MIN_EPOCHS,
    SIZING_WIDTHS,
    SMALL_SQUARES_FINETUNE_SIZE,
    SPEED_EVAL_BATCHES,
    SPEED_PRESET_MODELS,
    SPEED_PRESETS,
    STAGED_UNFREEZE_GROUPS,
    THREADS_BUSY_RATIO,
)
from imgclf.errors import UserError
from imgclf.fileio import write_text
from imgclf.yamlio import read_mapping

if TYPE_CHECKING:
    import torch

    from imgclf.data import Splits


@dataclass
class TrainConfig:
    """Everything needed to rerun a training run; saved as RUN_DIR/config.yaml."""

    data: str = "digits"
    data_dir: str | None = None  # where `cifar10` looks for (or downloads) the official batches
    model: str | None = None  # None: DEFAULT_MODEL, or DEFAULT_PRETRAINED_MODEL with --pretrained
    pretrained: bool = False
    weights: str | None = None  # a user's own state dict for the backbone
    strategy: str = "auto"  # fine-tuning: auto (staged when pretrained) | staged | full | linear_probe | gradual
    freeze_epochs: int = 1  # gradual: epochs with only the head trained
    unfreeze_groups: int | None = None  # staged: top layer groups fine-tuned after the head; None: as many as the
                                        # time budget pays for (2 without a budget)
    feature_views: int = 1  # staged: views of each training image whose features train the head (the first
                            # unaugmented); on flowers5 more did not pay: Lite0 probe 90.8 % with 1, 90.0 % with 4
    head_epochs: int = 30  # staged: epochs of the head over the cached features
    epochs: int | None = None  # None: 10, or as many as fit when time_budget is set
    batch_size: int | None = None  # None: 256; on a CPU 128 for small images from scratch, 32 to fine-tune
    lr: float | None = None  # None: the default for the optimizer, strategy and device (config.resolve)
    optimizer: str | None = None  # sgd (Nesterov) | adamw; None: sgd from scratch, adamw to fine-tune
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for sgd, 0.05 for adamw
    schedule: str = "onecycle"  # onecycle | cosine | step | linear | constant
    warmup_epochs: float = 0.0  # for cosine / linear
    label_smoothing: float = 0.1
    dropout: float = 0.0
    width: float | None = None  # channel-width multiplier of the from-scratch nets; None: 1.0, or narrower on a
                                # CPU too slow to fit SIZING_MIN_EPOCHS in the time budget (measured at start)
    crop_pad: int | None = None  # random-translate padding in pixels, 0: off; None: side // 8 (4 at 32 px)
    flip: bool | None = None  # None: on for colour images, off for grey ones (digits, text: a flip changes the class)
    cutout: int = 0  # side of the cutout square in pixels; 0 turns it off
    low_res: float | None = None  # small images: the first share of training sees them at 3/4 of their side
                                  # (half the arithmetic a step); None: LOW_RES_SHARE for a time-budgeted CPU
                                  # run from scratch (more epochs fit), else 0 (off)
    image_size: int | None = None  # model input size; None: the weights' own when pretrained, else the data's own
                                   # (64 for photos)
    crop_fraction: float | None = None  # evaluation crop of the short side; None: 0.875 for photos, 1.0 for small
                                        # squares (the whole image)
    resize: str = "crop"  # photos at evaluation and inference: crop (short side, centre 0.875) | pad | squash
    augment_policy: str = "trivial"  # photos in training: trivial (TrivialAugmentWide) | rand (RandAugment) | none
    min_crop_scale: float = 0.08  # photos in training: the random-resized crop keeps this share of the photo or more
    val_fraction: float = 0.1
    subset: int | None = None  # keep at most N training images (seeded, per class)
    train_fraction: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA, and on CPUs with native bf16 for from-scratch nets
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = True
    compile: bool = False
    grad_clip: float | None = None
    time_budget: float | None = None  # seconds of training; then stop, evaluate and save
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    loader: str = "auto"  # memory | stream | auto (memory unless the decoded images would take over 1/4 of RAM)
    num_workers: int = NUM_WORKERS
    threads: int | None = None  # torch CPU threads; None: all cores unless the plan measures one much faster
    sync_bn: bool = False
    tta: bool = False  # test-time augmentation (mirror, 1-px shifts) for the final evaluation
    speedrun: str | None = None  # fast | long: train with the CIFAR speed-run engine (--recipe speedrun)
    class_weights: str = "none"  # none | auto: inverse class frequency in the loss (imbalanced data)
    sampler: str = "shuffle"  # shuffle | balanced: draw training images with probability 1 / their class's size
    monitor: str = "val_acc"  # val_acc | macro_f1 | map: what best.pt and early stopping select on (multi-label
                              # data: map, mean average precision, where val_acc is asked)
    task: str | None = None  # multiclass (one class an image) | multilabel (any number: sigmoid outputs, binary
                             # cross-entropy, per-class thresholds); None: the data's (config.resolve)
    logger: str = "none"  # none | tensorboard (RUN_DIR/tensorboard/, imgclf[log]) | mlflow (imgclf[mlflow])
    checkpoint_every: str | int | None = "10m"  # also write last.pt mid-epoch: every N steps, or "90s" / "10m" of
                                                # wall-clock time; "off" (or None): at epoch ends only
    mixup: float = 0.0  # mixup alpha on whole training batches (imgclf.training.mixing); 0: off
    cutmix: float = 0.0  # cutmix alpha on whole training batches; 0: off
    mix_switch: float = 0.5  # with both mixup and cutmix on: the share of batches that get cutmix
    ema: float = 0.0  # decay of an EMA of the weights (imgclf.training.ema), e.g. 0.999; 0: off
    accumulate: int = 1  # micro-batches of --batch-size summed into each optimizer step
    quiet: bool = False
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (for example a recipe's name)

    def __post_init__(self) -> None:
        # decided at construction, so every later reader (run directory name, strategy, compare) sees a name
        if self.model is None:
            self.model = DEFAULT_PRETRAINED_MODEL if self.pretrained else DEFAULT_MODEL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied, checked like a YAML file would be."""
        return from_dict({**self.to_dict(), **changes})


FIELD_NAMES = {f.name for f in fields(TrainConfig)}


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig, refusing unknown keys and values of the wrong type."""
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise UserError(f"{source}: unknown config key(s): {', '.join(unknown)}")
    cfg = TrainConfig(**values)
    _check(cfg, source)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a user error."""
    return read_mapping(path)


def list_recipes() -> dict[str, str]:
    """The recipes shipped with the package (src/imgclf/recipes/NAME.yaml), each with its first comment line."""
    folder = resources.files("imgclf") / "recipes"
    found = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name) if folder.is_dir() else []:
        if path.name.endswith(".yaml"):
            first = (path.read_text().splitlines() or [""])[0]
            found[path.name.removesuffix(".yaml")] = first.lstrip("# ").strip()
    return found


def recipe_values(name: str) -> dict[str, Any]:
    """The config overrides of a shipped recipe; an unknown name is a user error that lists the known ones."""
    recipes = list_recipes()
    if name not in recipes:
        raise UserError(f"unknown recipe {name!r}; available: {', '.join(recipes) or 'none'} (see `imgclf recipes`)")
    return read_mapping(resources.files("imgclf") / "recipes" / f"{name}.yaml", f"recipe {name!r}")


CHOICES = {
    "optimizer": {None, "sgd", "adamw"},
    "schedule": {"onecycle", "cosine", "step", "linear", "constant"},
    "strategy": {"auto", "scratch", "staged", "full", "linear_probe", "gradual"},
    "resize": {"crop", "pad", "squash"},
    "augment_policy": {"trivial", "rand", "none"},
    "amp_dtype": {"bf16", "fp16"},
    "device": {"auto", "cpu", "cuda"},
    "loader": {"auto", "memory", "stream"},
    "speedrun": {None, "fast", "long"},
    "class_weights": {"none", "auto"},
    "sampler": {"shuffle", "balanced"},
    "monitor": {"val_acc", "macro_f1", "map"},
    "task": {None, "multiclass", "multilabel"},
    "logger": {"none", "tensorboard", "mlflow"},
}


def _at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


_POSITIVE = ((lambda v: v > 0), "above 0")
_FRACTION = ((lambda v: 0 < v <= 1), "in (0, 1]")
_PROBABILITY = ((lambda v: 0 <= v < 1), "in [0, 1)")
# numeric keys and what they must hold, however they arrive (flag, --set, --config, recipe, checkpoint)
LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "epochs": _at_least(1), "batch_size": _at_least(1), "freeze_epochs": _at_least(0), "feature_views": _at_least(1),
    "head_epochs": _at_least(1), "unfreeze_groups": _at_least(0), "lr": _POSITIVE, "momentum": _PROBABILITY,
    "weight_decay": _at_least(0), "warmup_epochs": _at_least(0), "label_smoothing": _PROBABILITY,
    "dropout": _PROBABILITY, "width": _POSITIVE, "crop_pad": _at_least(0), "cutout": _at_least(0),
    "low_res": _PROBABILITY,
    "image_size": _at_least(8), "crop_fraction": _FRACTION, "min_crop_scale": _FRACTION,
    "val_fraction": ((lambda v: 0 < v < 1), "in (0, 1)"), "subset": _at_least(1), "train_fraction": _FRACTION,
    "seed": _at_least(0), "grad_clip": _POSITIVE, "time_budget": _POSITIVE, "early_stop_patience": _at_least(1),
    "early_stop_min_delta": _at_least(0), "num_workers": _at_least(0), "threads": _at_least(1),
    "mixup": _at_least(0), "cutmix": _at_least(0), "mix_switch": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    "ema": _PROBABILITY, "accumulate": _at_least(1),
}


def _check(cfg: TrainConfig, source: str) -> None:
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
            names = ", ".join(sorted(str(a) for a in allowed if a is not None))
            raise UserError(f"{source}: {name} must be one of {names}, got {value!r}")
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if f.type in ("int", "int | None") and not (isinstance(value, int) and not isinstance(value, bool)):
            raise UserError(f"{source}: {f.name} must be an integer, got {value!r}")
        if f.type in ("float", "float | None") and not isinstance(value, int | float):
            raise UserError(f"{source}: {f.name} must be a number, got {value!r}")
        if f.type in ("bool", "bool | None") and not isinstance(value, bool):
            raise UserError(f"{source}: {f.name} must be true or false, got {value!r}")
    for name, (ok, wanted) in LIMITS.items():
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise UserError(f"{source}: {name} must be {wanted}, got {value!r}")
    checkpoint_interval(cfg.checkpoint_every, source)


def checkpoint_interval(value: str | int | None, source: str = "config") -> tuple[int | None, float | None]:
    """checkpoint_every as (steps, seconds), at most one set: "500" or 500 steps, "90s" or "10m" of wall-clock
    time, "off" or None: neither (checkpoints at epoch ends only). The default, 10m, costs a save of last.pt every
    10 minutes (20-35 ms for fastcnn's 6 MB on a 2-core EPYC: under 0.01 %) and bounds what a kill loses."""
    if value is None or value == "off":
        return None, None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([sm]?)\s*", str(value))
    if match is None or isinstance(value, bool) or float(match[1]) <= 0 or (not match[2] and "." in match[1]):
        raise UserError(f"{source}: checkpoint_every must be a number of steps (500), a time (90s, 10m) or off, "
                        f"got {value!r}")
    if not match[2]:
        return int(match[1]), None
    return None, float(match[1]) * (60 if match[2] == "m" else 1)


# -- the one resolution step: config + data + machine -> the config that ran ------------------------------------
# Every default that depends on the data or the machine is decided here and nowhere else; the result is what
# RUN_DIR/config.yaml records, so a rerun from it (or a resume) needs no second guess.

# the constants it applies, each with its evidence, are in imgclf/defaults.py


def resolve_strategy(cfg: TrainConfig) -> str:
    """`auto` -> staged for a pretrained start (--pretrained or --weights), scratch otherwise.

    Freezing a randomly initialised backbone trains a head on random features, almost surely a mistake,
    so staged, linear_probe and gradual without pretrained weights are refused; `full` without them is scratch.
    """
    from imgclf.models.registry import check_pretrained

    pretrained = bool(cfg.pretrained and check_pretrained(cfg.model, cfg.pretrained).has_pretrained) \
        or cfg.weights is not None
    if cfg.strategy in ("auto", "scratch"):
        return "staged" if pretrained and cfg.strategy == "auto" else "scratch"
    if not pretrained:
        if cfg.strategy == "full":
            return "scratch"
        raise UserError(f"strategy {cfg.strategy} freezes the backbone, so it needs pretrained weights: "
                        "pass --pretrained (models with weights) or --weights FILE")
    return cfg.strategy


def data_input_size(cfg: TrainConfig) -> int | None:
    """The input size asked for before the data is read: --image-size, else the pretrained weights' own
    (photos are decoded for it), else None (the data's own, or the photo default)."""
    if cfg.image_size:
        return cfg.image_size
    if cfg.pretrained or cfg.weights:
        from imgclf.models import model_entry

        return model_entry(cfg.model).default_image_size
    return None


def load_data(cfg: TrainConfig) -> Splits:
    """The splits a config trains on (`load_splits` with the config's data keys), decoded for the input size
    it asks for before resolution."""
    from imgclf.data import load_splits

    return load_splits(cfg.data, data_dir=cfg.data_dir, image_size=data_input_size(cfg), val_fraction=cfg.val_fraction,
                       seed=cfg.seed, subset=cfg.subset, train_fraction=cfg.train_fraction,
                       stream={"stream": True, "memory": False}.get(cfg.loader))  # auto: None, decided by size


def scored_part(cfg: TrainConfig, split: str, classes: list[str]) -> Any:
    """The images of `split` labelled by the checkpoint's `classes`. A folder's own test/ or val/ (or all of
    it) is listed and streamed, decoding nothing else; other sources, and val carved out of train, load as
    training loaded them (from the decode cache after a run)."""
    from imgclf.data.sources import load_part

    part = load_part(cfg.data, split, classes, data_input_size(cfg))
    if part is not None:
        return part
    splits = load_data(cfg)
    if splits.classes != classes:
        raise UserError(f"{cfg.data}: classes {splits.classes[:4]}... differ from the checkpoint's "
                        f"{classes[:4]}...")
    if split == "all":
        return joined([p for p in (splits.train, splits.val, splits.test) if p is not None])
    part = getattr(splits, split)
    if part is None:
        raise UserError(f"{cfg.data} has no {split} split: --split all scores every image, --split val the "
                        "validation images")
    return part


def joined(parts: list[Any]) -> Any:
    """The decoded splits of one source (a built-in set or an archive: one form, one class list) as one set
    (an ImageSet or a PhotoSet)."""
    from imgclf.data import ImageSet
    from imgclf.data.photos import PhotoSet

    first, labels = parts[0], np.concatenate([p.labels for p in parts])
    if isinstance(first, ImageSet):
        return ImageSet(np.concatenate([p.images for p in parts]), labels, first.classes)
    return PhotoSet([im for p in parts for im in p.images], labels, first.classes, first.image_size)


def _input_size(cfg: TrainConfig, data_side: int, small_finetune_on_cpu: bool) -> int:
    """The model's input side: --image-size, the weights' own (SMALL_SQUARES_FINETUNE_SIZE at most for
    `small_finetune_on_cpu`: small squares fine-tuned on a CPU under a time budget), or the data's own, raised to
    the smallest input the model accepts (small data is upsampled to it); an explicit size below that is refused."""
    from imgclf.models import model_entry

    smallest = model_entry(cfg.model).min_input_size
    if cfg.image_size is not None and cfg.image_size < smallest:
        raise UserError(f"{cfg.model} needs inputs of at least {smallest} px; --image-size {cfg.image_size} is "
                        "smaller")
    size = data_input_size(cfg) or data_side
    if small_finetune_on_cpu and cfg.image_size is None:
        size = min(size, SMALL_SQUARES_FINETUNE_SIZE)
    return max(size, smallest)


def _low_res(cfg: TrainConfig, image_size: int, measured_for: bool) -> float:
    """The share of training at LOW_RES_SCALE of the side: the user's, else LOW_RES_SHARE where it was measured
    to pay (`measured_for`: small squares from scratch on a CPU under a time budget), else 0; never below the
    model's smallest input (8x8 digits would shrink to 6x6, under fastcnn's 8)."""
    from imgclf.models import model_entry

    smallest = model_entry(cfg.model).min_input_size
    fits = round(image_size * LOW_RES_SCALE) >= smallest
    if cfg.low_res and not fits:
        raise UserError(f"--low-res trains at {round(image_size * LOW_RES_SCALE)} px, below the {smallest} px "
                        f"{cfg.model} accepts; drop --low-res or pass a larger --image-size")
    if cfg.low_res is not None:
        return cfg.low_res
    return LOW_RES_SHARE if measured_for and fits else 0.0


def _default_crop_pad(side: int) -> int:
    """An eighth of the side (4 px at 32 px, the CIFAR standard); none below 16 px, where a one-pixel shift
    of an 8x8 digit costs 9 points of test accuracy in a 10-epoch run (89.7 vs 98.6 %)."""
    return side // 8 if side >= 16 else 0


def _looks_grey(data: Any) -> bool:
    """True when sampled training images have equal R, G and B: digits, scans, text, where a mirror image
    is another symbol. Photos decode lazily, so only small squares are checked; photos are colour."""
    from imgclf.data.imageset import ImageSet

    if not isinstance(data, ImageSet) or len(data) == 0:
        return False
    sample = data.images[:: max(1, len(data) // 64)].astype(np.int16)
    return bool(np.abs(np.diff(sample, axis=-1)).max() <= 2)


def _size_width(cfg: TrainConfig, measure: Callable[[TrainConfig], float], num_train: int) -> tuple[float, dict]:
    """The widest of SIZING_WIDTHS whose measured training rate fits SIZING_MIN_EPOCHS in the budget (else
    the narrowest): a CPU without bf16 trains the same net 3-4x slower and gets more from a narrower net
    that sees the data more often than from a wide one that sees it twice."""
    rates: dict[str, float] = {}
    chosen = SIZING_WIDTHS[-1]
    for width in SIZING_WIDTHS:
        rates[str(width)] = round(measure(cfg.replace(width=width)), 1)
        if rates[str(width)] * cfg.time_budget / num_train >= SIZING_MIN_EPOCHS:
            chosen = width
            break
    epochs = rates[str(chosen)] * cfg.time_budget / num_train
    return chosen, {"width": chosen, "images_per_second_by_width": rates, "epochs_that_fit": round(epochs, 1),
                    "min_epochs": SIZING_MIN_EPOCHS, "why": f"widest net that fits {SIZING_MIN_EPOCHS} epochs "
                    f"of {num_train} images in {cfg.time_budget:g}s at its measured rate on this machine"
                    + ("" if epochs >= SIZING_MIN_EPOCHS else " (none does: the narrowest)")}


def resolve(cfg: TrainConfig, splits: Splits, device: torch.device,
            measure: Callable[[TrainConfig], float] | None = None) -> TrainConfig:
    """Fill every open choice from the data and the machine: strategy; optimizer, LR and weight decay that
    suit it (AdamW at 1e-3 to fine-tune pretrained weights, Nesterov SGD from scratch); batch size (small on a CPU,
    never over 1/8 of the training set); input size; precision; epochs; evaluation crop;
    and, given `measure` (a config's training images per second on this machine), the width of a from-scratch
    net trained on a CPU under a time budget (recorded with its reasons in extra["sizing"])."""
    from imgclf.data.imageset import ImageSet
    from imgclf.models.registry import weights_record
    from imgclf.runtime import cpu_has_bf16

    cfg = _threads(cfg, device)
    if cfg.speedrun:
        return _speed_plan(cfg, splits, device)
    cfg = _task_plan(cfg, splits)
    strategy = resolve_strategy(cfg)
    cfg = cfg.replace(extra={**cfg.extra, **weights_record(cfg.model, cfg.pretrained, cfg.weights)})
    scratch = strategy == "scratch"
    on_cpu = device.type == "cpu"
    optimizer = cfg.optimizer or (SCRATCH_OPTIMIZER if scratch else FINETUNE_OPTIMIZER)
    photos = not isinstance(splits.train, ImageSet)  # small squares (CIFAR) are ImageSets, see data/photos.py
    small_scratch_on_cpu = scratch and on_cpu and not photos  # what the CPU batch, LR and low_res were measured on
    lr = cfg.lr
    if lr is None:
        if not scratch and optimizer == FINETUNE_OPTIMIZER:
            lr = FINETUNE_LR
        elif small_scratch_on_cpu and optimizer == SCRATCH_OPTIMIZER:
            lr = SCRATCH_CPU_LR
        else:
            lr = DEFAULT_LR[optimizer]
    batch_size = cfg.batch_size or (SCRATCH_CPU_BATCH_SIZE if small_scratch_on_cpu else FINETUNE_CPU_BATCH_SIZE
                                    if on_cpu and not scratch else BATCH_SIZE)
    cap = max(8, 2 ** int(np.log2(max(len(splits.train) / 8, 1))))
    if cfg.batch_size is None and batch_size > cap:
        batch_size = cap  # a folder of a few hundred photos still gets several optimizer steps an epoch
    image_size = _input_size(cfg, splits.train.image_size, not scratch and on_cpu and not photos
                             and bool(cfg.time_budget))
    low_res = _low_res(cfg, image_size, small_scratch_on_cpu and bool(cfg.time_budget))
    amp = cfg.amp
    if amp is None:
        # on a CPU with native bf16 the from-scratch nets train about 2x faster in bf16, while pretrained
        # EfficientNet's depthwise convs run 10-30 % slower: bf16 there for scratch only
        amp = device.type == "cuda" or (on_cpu and cpu_has_bf16() and scratch)
    resolved = cfg.replace(
        data=str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data,  # resumable from anywhere
        flip=cfg.flip if cfg.flip is not None else not _looks_grey(splits.train),
        crop_pad=cfg.crop_pad if cfg.crop_pad is not None else _default_crop_pad(splits.train.image_size),
        low_res=low_res,
        strategy=strategy, optimizer=optimizer, lr=lr,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer],
        batch_size=batch_size, image_size=image_size, amp=amp,
        epochs=cfg.epochs or (None if cfg.time_budget else DEFAULT_EPOCHS),
        crop_fraction=cfg.crop_fraction or (PHOTO_CROP_FRACTION if photos else 1.0),
        unfreeze_groups=cfg.unfreeze_groups if cfg.unfreeze_groups is not None or cfg.time_budget
        or strategy != "staged" else STAGED_UNFREEZE_GROUPS)
    if cfg.width is not None:
        return resolved
    if measure is None or not (small_scratch_on_cpu and cfg.time_budget and cfg.epochs is None):
        return resolved.replace(width=1.0)
    width, sizing = _size_width(resolved, measure, len(splits.train))
    return resolved.replace(width=width, extra={**cfg.extra, "sizing": sizing})


def _task_plan(cfg: TrainConfig, splits: Splits) -> TrainConfig:
    """The task the data asks for (a labels CSV with several labels a row is multi-label), with what it changes:
    a multi-label run selects best.pt by mAP where val_acc (exact match, too strict to rank epochs) was asked.
    What makes no sense for it is refused in one line: mixing and class rebalancing are built on one label an
    image; its per-class thresholds, chosen on validation, answer the imbalance instead."""
    task = "multilabel" if splits.multilabel else "multiclass"
    if cfg.task not in (None, task):
        raise UserError(f"task {cfg.task} does not fit the data: {cfg.data} is {task} (several labels a row in a "
                        "labels CSV, `a;b` or 0/1 columns, make it multilabel); drop task")
    if task == "multiclass":
        if cfg.monitor == "map":
            raise UserError("--monitor map (mean average precision) is for multi-label data; use val_acc or macro_f1")
        return cfg.replace(task=task)
    if cfg.mixup or cfg.cutmix:
        raise UserError("--mixup and --cutmix blend one label an image; a multi-label run takes neither")
    if cfg.class_weights != "none" or cfg.sampler != "shuffle":
        raise UserError("--class-weights and --sampler balanced rebalance one label an image; a multi-label run "
                        "chooses a threshold per class on validation instead: drop them")
    return cfg.replace(task=task, monitor="map" if cfg.monitor == "val_acc" else cfg.monitor)


def _threads(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """--threads, or on a CPU the count `runtime.fastest_thread_count` measures (recorded in extra["threads"]
    when it is fewer than the cores), unless OMP_NUM_THREADS says how many (then torch's own count stands). A
    resumed run keeps its own: the same count gives the same bits."""
    if cfg.threads is not None or device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return cfg
    from imgclf.runtime import fastest_thread_count

    threads, ms = fastest_thread_count(THREADS_BUSY_RATIO)
    if threads < max(ms, default=threads):
        return cfg.replace(threads=threads, extra={**cfg.extra, "threads": {"ms_by_threads": ms}})
    return cfg.replace(threads=threads)


def _speed_plan(cfg: TrainConfig, splits: Splits, device: torch.device) -> TrainConfig:
    """The speed run's plan: the preset under the user's own flags (--epochs; --batch-size at the preset's LR
    per step: on 2,000 CIFAR images in batches of 250, 46-49 % vs 36 % at its LR per example; --width,
    --seed, --compile, --no-amp, --tta), every knob recorded in extra["speedrun_config"]; flags the speed
    engine has no use for are refused here, before anything is written."""
    from imgclf.data.imageset import ImageSet
    from imgclf.models.speednet import scaled_widths
    from imgclf.runtime import cpu_has_bf16

    model = SPEED_PRESET_MODELS[cfg.speedrun]
    if cfg.model != model:
        raise UserError(f"the {cfg.speedrun} speed run trains its own net ({model}); drop --model {cfg.model}")
    if cfg.time_budget or cfg.pretrained or cfg.weights:
        raise UserError("the speed run trains from scratch for a number of epochs: use --epochs, not "
                        "--time-budget, --pretrained or --weights")
    if (cfg.class_weights, cfg.sampler, cfg.monitor) != ("none", "shuffle", "val_acc"):
        raise UserError("the speed run has its own loss and order and keeps its final weights only: drop "
                        "--class-weights, --sampler and --monitor")
    if cfg.mixup or cfg.cutmix or cfg.ema or cfg.accumulate > 1:
        raise UserError("the speed run has its own loop, with its own weight averaging (lookahead): drop "
                        "--mixup, --cutmix, --ema and --accumulate")
    if cfg.logger != "none" or cfg.checkpoint_every != TrainConfig.checkpoint_every:
        raise UserError("a speed run takes seconds and keeps final weights only: --logger and --checkpoint-every "
                        "do not apply to it")
    if splits.multilabel:
        raise UserError("the speed run trains one label an image; for multi-label data drop --recipe speedrun")
    if not isinstance(splits.train, ImageSet):
        raise UserError("the speed run is for small square images held in memory (CIFAR-like, 16 to 64 px); "
                        "for photos use the default recipe or --recipe finetune")
    size = splits.train.image_size
    if size < 16:
        raise UserError(f"the speed run is tuned for 16 to 64 px squares; these are {size} px: "
                        "drop --recipe (the default recipe trains them)")
    preset = SPEED_PRESETS[cfg.speedrun]
    batch = cfg.batch_size or preset.batch_size
    bf16 = device.type == "cuda" or cpu_has_bf16()
    speed = preset.replace(
        epochs=float(cfg.epochs) if cfg.epochs else preset.epochs, batch_size=batch,
        lr=preset.lr * preset.batch_size / batch,
        eval_batch_size=min(preset.eval_batch_size, SPEED_EVAL_BATCHES * batch),
        widths=scaled_widths(model, cfg.width or 1.0), seed=cfg.seed, compile=cfg.compile,
        channels_last=cfg.channels_last, precision="bf16" if cfg.amp is not False and bf16 else "fp32",
        tta_level=2 if cfg.tta else 0)
    return cfg.replace(
        data=str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data,
        batch_size=batch, epochs=cfg.epochs, image_size=size, width=cfg.width or 1.0, crop_fraction=1.0,
        resize="crop", amp=speed.precision != "fp32", strategy="scratch",
        extra={**cfg.extra, "speedrun_config": speed.to_dict()})


# -- compare's plan: each run's budget and the number of seeds ----------------------------------------------------

@dataclass(frozen=True)
class ComparePlan:
    stopping: str  # budget | epochs | plateau (--early-stop without --budget or --epochs)
    budget: float | None  # seconds of training per run
    budget_derived: bool  # from the data and this machine's measured rate, not --budget
    seeds: int
    seeds_reason: str  # what the report says was done, and why


def plan_compare(base: TrainConfig, budget: float | None, seeds: int | None, runs: int, train_images: int,
                 measure: Callable[[], tuple[int, int, float]]) -> ComparePlan:
    """Decide what `compare` leaves open: without --budget, --epochs or --early-stop each run's budget is
    derived (and on small data, with --seeds unset, shrunk so that a spread over seeds fits); without --seeds,
    `default_seeds` decides. `measure()` gives the slowest variant's training images, all its images and its
    images per second on this machine (timed only when a decision needs it)."""
    until_plateau = bool(base.early_stop_patience) and budget is None and base.epochs is None
    derive = not until_plateau and budget is None and base.epochs is None
    slowest_train, every_image, rate = measure() if derive or (seeds is None and budget is not None) else (0, 0, 0.0)
    # beside its budget a run passes over every image at least once (a fine-tuned run's cached features, the
    # final evaluation): Lite2 at 260 px on a CPU spends minutes there on digits' 1,797 images
    pass_seconds = every_image / rate if rate else 0.0
    if derive:
        budget = derived_budget(slowest_train, rate)
        if seeds is None:
            budget = room_for_seeds(budget, train_images, runs, pass_seconds)
    if seeds is None:
        seeds, reason = default_seeds(train_images, runs, None if until_plateau else budget, pass_seconds)
    else:
        reason = f"{seeds} seed{'s' if seeds > 1 else ''} (--seeds {seeds})"
    stopping = "plateau" if until_plateau else "budget" if budget else "epochs"
    return ComparePlan(stopping, budget, derive, seeds, reason)


def derived_budget(num_train: int, rate: float) -> float:
    """Seconds per run from the data and the machine: BUDGET_EPOCH_PASSES forward passes over `num_train`
    training images at the slowest variant's measured `rate`, within BUDGET_RANGE."""
    return float(round(min(max(BUDGET_EPOCH_PASSES * num_train / rate, BUDGET_RANGE[0]), BUDGET_RANGE[1])))


def _runs_seconds(runs: int, seeds: int, budget: float, pass_seconds: float) -> float:
    """About how long `runs` x `seeds` runs take: the budget, the passes it does not count, the overhead."""
    return runs * seeds * (budget + RUN_OVERHEAD_SECONDS + pass_seconds)


def room_for_seeds(budget: float, train_images: int, runs: int, pass_seconds: float) -> float:
    """A derived `budget`, shrunk on small data (at most SEEDS_MAX_TRAIN_IMAGES) to the longest with which
    MIN_SPREAD_SEEDS seeds of every run fit in SEEDS_WALL_SECONDS; kept when it fits already, or when room
    would take a budget below BUDGET_RANGE[0] or below `pass_seconds` (then `default_seeds` gives 1 seed, which
    gets the whole of it)."""
    if train_images > SEEDS_MAX_TRAIN_IMAGES:
        return budget
    fits = round(SEEDS_WALL_SECONDS / (runs * MIN_SPREAD_SEEDS) - RUN_OVERHEAD_SECONDS - pass_seconds)
    return float(fits) if max(BUDGET_RANGE[0], pass_seconds) <= fits < budget else budget


def default_seeds(train_images: int, runs: int, budget: float | None, pass_seconds: float = 0.0) -> tuple[int, str]:
    """How many seeds a comparison trains without --seeds, and why: on a training set of at most
    SEEDS_MAX_TRAIN_IMAGES when a budget fixes each run's time, the most from COMPARE_SEEDS down to
    MIN_SPREAD_SEEDS whose `runs` all fit in SEEDS_WALL_SECONDS, each costing RUN_OVERHEAD_SECONDS and
    `pass_seconds` (the passes over its images that the budget does not count: a fine-tuned run's feature pass,
    the final evaluation) beside the budget; else 1. Also 1 when those passes outlast the budget itself: a
    repeat would measure mostly them (digits through Lite2 at 260 px at --budget 3: about 50 s a run beside
    3 s, and 6 runs went on for minutes)."""
    if budget is None:
        return 1, "1 seed (no time budget, so the time of repeats is not known in advance; --seeds N to repeat)"
    if train_images > SEEDS_MAX_TRAIN_IMAGES:
        return 1, (f"1 seed ({train_images:,} training images: large enough that seeds vary little; --seeds N to "
                   "measure it)")
    if pass_seconds > budget:
        return 1, (f"1 seed (each run also passes over every image, about {pass_seconds:.0f} s beside its "
                   f"{budget:g} s budget, so a repeat would measure mostly that; --seeds N to repeat anyway)")
    for seeds in range(COMPARE_SEEDS, MIN_SPREAD_SEEDS - 1, -1):
        total = _runs_seconds(runs, seeds, budget, pass_seconds)
        if total <= SEEDS_WALL_SECONDS:
            return seeds, (f"{seeds} seeds (default on {train_images:,} training images: all {runs * seeds} runs "
                           f"fit in about {total / 60:.0f} min)")
    total = _runs_seconds(runs, MIN_SPREAD_SEEDS, budget, pass_seconds)
    return 1, (f"1 seed ({MIN_SPREAD_SEEDS} seeds of {runs} runs at {budget:g} s would take about "
               f"{total / 60:.0f} min; --seeds {MIN_SPREAD_SEEDS} to measure the spread anyway)")
