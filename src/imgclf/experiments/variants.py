"""What a comparison trains: a study (a shipped preset or a variants file) planned into one config per run.

A variant is a name and a set of TrainConfig overrides. A preset (experiments/preset_NAME.yaml) is a
shipped set of variants that also declares, as data, how its runs are judged (`judge`) and which of its
variants combine others (`combined`); nothing else in the package checks a preset's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from imgclf.config import TrainConfig
from imgclf.errors import UserError
from imgclf.yamlio import read_mapping

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IF_UNSET = "if_unset"  # a variant's soft overrides: they apply only where the user left the key unset
JUDGES = ("ranking", "gap")


@dataclass
class Study:
    """The variants to train and how the verdict reads them.

    judge: `ranking` (who wins, by how much against the noise, at what cost) or `gap` (how much of the
    reference's train/val gap each variant closes; every run's clean train accuracy is measured for it).
    combined: variants that combine the others, left out when the verdict names the best single one.
    """

    name: str
    variants: dict[str, dict[str, Any]]
    reference: str = ""
    description: str = ""
    base_if_unset: dict[str, Any] = field(default_factory=dict)
    judge: str = "ranking"
    combined: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reference = self.reference or next(iter(self.variants))
        if self.judge not in JUDGES:
            raise UserError(f"{self.name}: judge must be one of {', '.join(JUDGES)}, got {self.judge!r}")
        for name in [self.reference, *self.combined]:
            if name not in self.variants:
                raise UserError(f"{self.name}: {name!r} is not one of its variants")


def available_presets() -> list[str]:
    folder = resources.files("imgclf") / "experiments"
    return sorted(p.name.removeprefix("preset_").removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.startswith("preset_") and p.name.endswith(".yaml"))


def load_preset(name: str) -> Study:
    """A shipped preset; a variant's `if_unset` mapping holds values that yield to the user's own (an
    explicit --image-size, say)."""
    path = resources.files("imgclf") / "experiments" / f"preset_{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    raw = read_mapping(path, "preset", "study keys")
    known = {f.name for f in fields(Study)} - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"preset {name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    raw["variants"] = _check_variants(raw.get("variants"), f"preset {name}")
    return Study(name=name, **raw)


def load_variants_file(path: str | Path) -> Study:
    """`{name: {config overrides}}` from YAML, judged by ranking; a bad file is the user's to fix, in one line."""
    raw = read_mapping(path, "variants file", "variant names to config overrides")
    return Study("custom", _check_variants(raw, str(path)), description=f"Variants from {path}.")


def _check_variants(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source}: expected a mapping of variant names to config overrides")
    variants: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        name = str(name)
        if not _NAME.match(name):
            raise UserError(f"{source}: variant name {name!r} must be letters, digits, '_', '-' or '.'")
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise UserError(f"{source}: variant {name!r} must map config keys to values, got {overrides!r}")
        if not isinstance(overrides.get(IF_UNSET, {}), dict):
            raise UserError(f"{source}: variant {name!r}: {IF_UNSET} must map config keys to values")
        variants[name] = dict(overrides)
    return variants


def approach_of(cfg: TrainConfig) -> str:
    """scratch | finetune | linear_probe, from what the config starts from and how it trains."""
    if not (cfg.pretrained or cfg.weights):
        return "scratch"
    return "linear_probe" if cfg.strategy == "linear_probe" else "finetune"


def parse_fractions(fractions: str | Sequence[float] | None) -> list[float] | None:
    """'0.01,0.1,1.0' (or a list) -> sorted unique fractions in (0, 1]."""
    if fractions is None or fractions == "":
        return None
    items = fractions.split(",") if isinstance(fractions, str) else list(fractions)
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise UserError(f"--fractions: {item!r} is not a number") from None
        if not 0.0 < value <= 1.0:
            raise UserError(f"--fractions: {value:g} is not in (0, 1]")
        values.append(value)
    return sorted(set(values))


@dataclass
class Plan:
    """One run to make: its directory name, the variant it belongs to, and its full config.

    `group` names the (variant, fraction) the run repeats: its name less any seed suffix; a comparison
    with --seeds N trains N runs per group that differ only in their training seed.
    """

    name: str
    variant: str
    cfg: TrainConfig
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.name


def split_seed(cfg: TrainConfig) -> int:
    """The seed that chose the run's validation split and training subset: the comparison's base seed,
    kept in `extra` when a repeated run trains with another seed (so every repeat sees the same images)."""
    return int(cfg.extra.get("split_seed", cfg.seed))


def plan_runs(base: TrainConfig, variants: dict[str, dict[str, Any]], out: Path, fractions: list[float] | None,
              budget: float | None, base_if_unset: dict[str, Any] | None = None, seeds: int = 1) -> list[Plan]:
    """Every (variant, fraction, seed) config, validated before anything trains.

    `seeds` > 1 repeats each (variant, fraction) with training seeds base.seed, base.seed + 1, ... (from the
    variant's own seed where it sets one); the runs are named NAME_sSEED and record the first as
    `extra.split_seed`: the validation split and any subset stay that seed's, only initialization, shuffling
    and augmentation change.
    """
    from imgclf.models import model_entry

    common: dict[str, Any] = {}
    for key, value in (base_if_unset or {}).items():
        if getattr(base, key) is None:
            common[key] = value
    if budget is not None:
        if budget <= 0:
            raise UserError(f"--budget must be a positive number of seconds, got {budget:g}")
        common["time_budget"] = float(budget)
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    plans = []
    for fraction in fractions or [None]:
        for variant, overrides in variants.items():
            group = variant if fraction is None else f"{variant}_f{fraction:g}"
            forced = {k: v for k, v in overrides.items() if k != IF_UNSET}
            soft = {k: v for k, v in overrides.get(IF_UNSET, {}).items() if getattr(base, k, None) is None}
            first = int(forced.get("seed", base.seed))  # a variant may fix its own seed
            for seed in range(first, first + seeds):
                name = group if seeds == 1 else f"{group}_s{seed}"
                changes = {**common, **soft, **forced, "out": str(out / "runs" / name)}
                if fraction is not None:
                    changes["train_fraction"] = fraction
                if seeds > 1:
                    changes["seed"] = seed
                    changes["extra"] = {**base.extra, **forced.get("extra", {}), "split_seed": first}
                try:
                    cfg = base.replace(**changes)
                    model_entry(cfg.model)
                except UserError as exc:
                    raise UserError(f"variant {variant!r}: {exc}") from None
                plans.append(Plan(name, variant, cfg, group))
    return plans
