"""TrainConfig: every training option and its default, in one place, round-tripped through YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imgclf.errors import UserError


@dataclass
class TrainConfig:
    """Everything needed to rerun a training run; saved as RUN_DIR/config.yaml."""

    data: str = "digits"
    data_dir: str | None = None  # where `cifar10` looks for (or downloads) the official batches
    model: str = "fastcnn"
    pretrained: bool = False
    weights: str | None = None  # a user's own state dict for the backbone
    strategy: str = "auto"  # fine-tuning: auto | full | linear_probe | gradual
    freeze_epochs: int = 1  # gradual: epochs with only the head trained
    epochs: int | None = None  # None: 10, or as many as fit when time_budget is set
    batch_size: int | None = None  # None: 256, or 32 to fine-tune pretrained weights on a CPU
    lr: float | None = None  # None: the recipe's default for the optimizer and strategy
    optimizer: str | None = None  # sgd (Nesterov) | adamw; None: sgd from scratch, adamw to fine-tune
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for sgd, 0.05 for adamw
    schedule: str = "onecycle"  # onecycle | cosine | step | linear | constant
    warmup_epochs: float = 0.0  # for cosine / linear
    label_smoothing: float = 0.1
    dropout: float = 0.0
    width: float = 1.0  # channel-width multiplier of the from-scratch nets
    crop_pad: int = 4  # random-translate padding in pixels; 0 turns it off
    flip: bool = True
    cutout: int = 0  # side of the cutout square in pixels; 0 turns it off
    image_size: int | None = None  # model input size; None: the data's own size (or 64 for mixed sizes)
    val_fraction: float = 0.1
    subset: int | None = None  # keep at most N training images (seeded, per class)
    train_fraction: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA, and on CPUs with native bf16 (about 2x faster there)
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = True
    compile: bool = False
    grad_clip: float | None = None
    time_budget: float | None = None  # seconds of training; then stop, evaluate and save
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    loader: str = "auto"  # memory | stream | auto (memory unless the decoded images would take over 1/4 of RAM)
    num_workers: int = 2
    sync_bn: bool = False
    tta: bool = False  # test-time augmentation (mirror, 1-px shifts) for the final evaluation
    quiet: bool = False
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (for example a recipe's name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

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
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{p}: expected a mapping of config keys")
    return values


def recipe_values(name: str) -> dict[str, Any]:
    """The overrides of a recipe shipped with the package (src/imgclf/recipes/NAME.yaml)."""
    path = resources.files("imgclf") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.name.removesuffix(".yaml") for p in (resources.files("imgclf") / "recipes").iterdir())
        raise UserError(f"unknown recipe {name!r}; available: {', '.join(available)}")
    return yaml.safe_load(path.read_text()) or {}


_CHOICES = {
    "optimizer": {None, "sgd", "adamw"},
    "schedule": {"onecycle", "cosine", "step", "linear", "constant"},
    "strategy": {"auto", "full", "linear_probe", "gradual"},
    "amp_dtype": {"bf16", "fp16"},
    "device": {"auto", "cpu", "cuda"},
    "loader": {"auto", "memory", "stream"},
}


def _check(cfg: TrainConfig, source: str) -> None:
    for name, allowed in _CHOICES.items():
        value = getattr(cfg, name)
        if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
            raise UserError(f"{source}: {name} must be one of {sorted(allowed)}, got {value!r}")
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
    if (cfg.epochs is not None and cfg.epochs < 1) or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise UserError(f"{source}: epochs and batch_size must be at least 1")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise UserError(f"{source}: val_fraction must be between 0 and 1")
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise UserError(f"{source}: train_fraction must be in (0, 1]")
