"""`imgclf compare`: train variants on one split with one budget; say which wins, by how much, at what cost.

One mechanism serves every study: a variant is a name and a set of TrainConfig overrides. Presets are
shipped variant sets (experiments/preset_NAME.yaml): `transfer` (from scratch vs fine-tuning) and
`regularization` (each regularizer against none). `--variants FILE.yaml` brings your own, and
`--fractions` repeats every variant on stratified shares of the training set (a data-efficiency curve).
The data is decoded once per distinct decoding and handed to every run, and all runs are scored on
the same validation and test images.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imgclf.config import TrainConfig
from imgclf.errors import TrainingDiverged, UserError
from imgclf.fileio import write_json
from imgclf.reporting import figures as figs
from imgclf.reporting.report import Document

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys that change which images a run sees (and at what decoded size); runs that agree share one decode.
_DATA_KEYS = ("data", "data_dir", "val_fraction", "seed", "loader")


# -- variants ----------------------------------------------------------------------------------------------

def available_presets() -> list[str]:
    folder = resources.files("imgclf") / "experiments"
    return sorted(p.name.removeprefix("preset_").removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.startswith("preset_") and p.name.endswith(".yaml"))


IF_UNSET = "if_unset"  # a variant's soft overrides: they apply only where the user left the key unset


def load_preset(name: str) -> dict[str, Any]:
    """A shipped preset: {description, reference, base_if_unset, variants: {name: overrides}}; a variant's
    `if_unset` mapping holds values that yield to the user's own (an explicit --image-size, say)."""
    path = resources.files("imgclf") / "experiments" / f"preset_{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    preset = yaml.safe_load(path.read_text()) or {}
    preset["variants"] = _check_variants(preset.get("variants"), f"preset {name}")
    preset.setdefault("reference", next(iter(preset["variants"])))
    return preset


def load_variants_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """`{name: {config overrides}}` from YAML; a bad file is the user's to fix, named in one line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"variants file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return _check_variants(raw, str(p))


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
    """One run to make: its directory name, the variant it belongs to, and its full config."""

    name: str
    variant: str
    cfg: TrainConfig


def plan_runs(base: TrainConfig, variants: dict[str, dict[str, Any]], out: Path, fractions: list[float] | None,
              budget: float | None, base_if_unset: dict[str, Any] | None = None) -> list[Plan]:
    """Every (variant, fraction) config, validated before anything trains."""
    from imgclf.models import model_entry

    common: dict[str, Any] = {}
    for key, value in (base_if_unset or {}).items():
        if getattr(base, key) is None:
            common[key] = value
    if budget is not None:
        if budget <= 0:
            raise UserError(f"--budget must be a positive number of seconds, got {budget:g}")
        common["time_budget"] = float(budget)
    plans = []
    for fraction in fractions or [None]:
        for variant, overrides in variants.items():
            name = variant if fraction is None else f"{variant}_f{fraction:g}"
            forced = {k: v for k, v in overrides.items() if k != IF_UNSET}
            soft = {k: v for k, v in overrides.get(IF_UNSET, {}).items() if getattr(base, k, None) is None}
            changes = {**common, **soft, **forced, "out": str(out / "runs" / name)}
            if fraction is not None:
                changes["train_fraction"] = fraction
            try:
                cfg = base.replace(**changes)
                model_entry(cfg.model)
            except UserError as exc:
                raise UserError(f"variant {variant!r}: {exc}") from None
            plans.append(Plan(name, variant, cfg))
    return plans


# -- running -----------------------------------------------------------------------------------------------

def _decode_key(cfg: TrainConfig) -> tuple[Any, ...]:
    from imgclf.config import data_input_size

    return (*(getattr(cfg, k) for k in _DATA_KEYS), data_input_size(cfg))


def thin(splits: Any, cfg: TrainConfig) -> Any:
    """The run's training set from shared splits: the same seeded per-class subset load_splits would take."""
    from imgclf.data import Splits
    from imgclf.data.imageset import stratified_subset

    if cfg.subset is None and cfg.train_fraction >= 1.0:
        return splits
    size = len(splits.train) if cfg.subset is None else min(cfg.subset, len(splits.train))
    size = max(1, round(size * cfg.train_fraction))
    train = splits.train.take(stratified_subset(splits.train.labels, size, cfg.seed))
    return Splits(train, splits.val, splits.test, splits.source)


PLATEAU_MAX_EPOCHS = 200  # --early-stop N without --budget or --epochs: train until the plateau, within this
BUDGET_EPOCH_PASSES = 10  # the derived budget pays for about this many forward passes over the training set
BUDGET_RANGE = (60.0, 240.0)  # seconds per run: long enough to learn, short enough for 2 runs in 10 minutes


def derived_budget(plans: list[Plan], shared: dict[tuple[Any, ...], Any]) -> float:
    """Seconds per run from the data and the machine: BUDGET_EPOCH_PASSES forward passes over the training
    images of the slowest (largest-input) variant at its measured speed here, within BUDGET_RANGE."""
    import time

    import torch

    from imgclf.config import data_input_size
    from imgclf.models import build_model

    slowest = max(plans, key=lambda p: data_input_size(p.cfg) or 0)
    size = data_input_size(slowest.cfg) or 32
    num_train = len(thin(shared[_decode_key(slowest.cfg)], slowest.cfg).train)
    model = build_model(slowest.cfg.model, 2).eval().to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        tick = time.perf_counter()
        model(x)
        rate = len(x) / (time.perf_counter() - tick)
    return float(round(min(max(BUDGET_EPOCH_PASSES * num_train / rate, BUDGET_RANGE[0]), BUDGET_RANGE[1])))


def _clean_train_accuracy(model: Any, train_set: Any, cfg: TrainConfig) -> float:
    """Accuracy on the training images as the model sees test images (the run's resolved `cfg`): no
    augmentation, eval mode."""
    from imgclf.evaluation.metrics import loss_and_accuracy, predict_logits
    from imgclf.runtime import resolve_amp
    from imgclf.training.run import eval_loader_for

    device = next(model.parameters()).device
    loader = eval_loader_for(cfg, train_set, device)
    return loss_and_accuracy(*predict_logits(model, loader, amp_dtype=resolve_amp(cfg, device)))[1]


def _per_class_accuracy(run_dir: Path, split: str, k: int) -> list[float] | None:
    path = run_dir / f"predictions_{split}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        pred, labels = data["logits"].argmax(axis=1), data["labels"]
    correct = np.bincount(labels, weights=(pred == labels).astype(float), minlength=k)
    return (correct / np.maximum(np.bincount(labels, minlength=k), 1)).tolist()


def run_compare(base_cfg: TrainConfig, out: str | Path, preset: str | None = "transfer",
                variants_file: str | Path | None = None, fractions: str | Sequence[float] | None = None,
                budget: float | None = None) -> dict[str, Any]:
    """Train every variant (at every fraction), then write DIR/comparison.json, report.md and report.html."""
    from imgclf.training.run import load_data, train

    out = Path(out)
    if variants_file:
        variants, preset_name = load_variants_file(variants_file), "custom"
        spec: dict[str, Any] = {"description": f"Variants from {variants_file}.", "reference": next(iter(variants))}
    else:
        spec = load_preset(preset or "transfer")
        variants, preset_name = spec["variants"], preset or "transfer"
    fraction_list = parse_fractions(fractions)
    runs_dir = out / "runs"
    if runs_dir.is_dir() and any(runs_dir.glob("*/checkpoints/last.pt")):
        raise UserError(f"{out} already holds a comparison's runs; pass another --out or remove {runs_dir}")
    plans = plan_runs(base_cfg, variants, out, fraction_list, budget, spec.get("base_if_unset"))

    shared: dict[tuple[Any, ...], Any] = {}
    for plan in plans:  # decode before training anything, so a bad --data fails fast
        key = _decode_key(plan.cfg)
        if key not in shared:
            shared[key] = load_data(plan.cfg.replace(subset=None, train_fraction=1.0))
        thin(shared[key], plan.cfg)  # a fraction too small for the classes fails here, not after hours
    until_plateau = bool(base_cfg.early_stop_patience) and budget is None and base_cfg.epochs is None
    if until_plateau:  # each approach trains until its validation accuracy stops improving
        plans = plan_runs(base_cfg.replace(epochs=PLATEAU_MAX_EPOCHS), variants, out, fraction_list, None,
                          spec.get("base_if_unset"))
    elif budget is None and base_cfg.epochs is None:
        budget = derived_budget(plans, shared)
        if not base_cfg.quiet:
            print(f"compare: {budget:.0f} s of training for each run (derived from the data and this machine; "
                  "--budget S or --epochs N to choose)", file=sys.stderr)
        plans = plan_runs(base_cfg, variants, out, fraction_list, budget, spec.get("base_if_unset"))
    first = shared[_decode_key(plans[0].cfg)]
    split = "test" if first.test is not None else "val"
    classes = list(first.classes)

    records: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    per_class: dict[str, list[float] | None] = {}
    for i, plan in enumerate(plans, 1):
        splits = thin(shared[_decode_key(plan.cfg)], plan.cfg)
        if not base_cfg.quiet:
            print(f"compare: [{i}/{len(plans)}] {plan.name} ({approach_of(plan.cfg)}, {plan.cfg.model}, "
                  f"{len(splits.train)} training images)", file=sys.stderr)
        try:
            result = train(plan.cfg, splits=splits)
        except TrainingDiverged as exc:  # one bad variant (say, no regularization at a high LR) spoils no others
            print(f"compare: {plan.name} diverged and is left out: {exc}", file=sys.stderr)
            failed.append({"name": plan.name, "variant": plan.variant, "approach": approach_of(plan.cfg),
                           "train_fraction": plan.cfg.train_fraction, "val_accuracy": None, "test_accuracy": None,
                           "train_seconds": None, "run_dir": plan.cfg.out, "error": str(exc)})
            continue
        m = result.metrics
        record: dict[str, Any] = {
            "name": plan.name, "variant": plan.variant, "approach": approach_of(plan.cfg),
            "train_fraction": plan.cfg.train_fraction, "val_accuracy": m["val_accuracy"],
            "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"], "run_dir": str(result.run_dir),
            "model": plan.cfg.model, "pretrained": plan.cfg.pretrained, "train_images": len(splits.train),
            "epochs_run": m["epochs_run"], "images_per_second": m["images_per_second"],
            "num_params": m["num_params"], "stop_reason": m.get("stop_reason"),
            "peak_rss_mb": m.get("peak_rss_mb"),  # of the process so far: runs share it, so it only grows
        }
        if preset_name == "regularization":
            record["train_accuracy"] = _clean_train_accuracy(result.model, splits.train, result.config)
            record["train_val_gap"] = record["train_accuracy"] - m["val_accuracy"]
        records.append(record)
        histories[plan.name] = result.history
        per_class[plan.name] = _per_class_accuracy(result.run_dir, split, len(classes))
        del result

    if not records:
        raise UserError("every run of the comparison diverged; try a lower --lr or --grad-clip")
    if preset_name == "regularization":
        _gap_shares(records, spec["reference"])
    n_eval = len(first.test if split == "test" else first.val)
    comparison = {"preset": preset_name, "description": spec.get("description", ""), "split": split,
                  "eval_images": n_eval, "reference": spec["reference"],
                  "classes": classes, "budget_seconds": budget, "fractions": fraction_list,
                  "stopping": ("plateau" if until_plateau else "budget" if budget else "epochs"),
                  "early_stop_patience": base_cfg.early_stop_patience,
                  "runs": records + failed}
    comparison["verdict"] = _verdict(comparison)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", comparison)
    write_comparison_report(out, comparison, histories, per_class)
    return comparison


def _verdict(comparison: dict[str, Any]) -> str:
    ok = [r for r in comparison["runs"] if not r.get("error")]
    text = verdict_text(ok, comparison["preset"], comparison["reference"], comparison["split"],
                        comparison["eval_images"])
    failed = [r["name"] for r in comparison["runs"] if r.get("error")]
    if failed:
        text += f" Left out because training diverged: {', '.join(failed)}."
    return text


def _score(record: dict[str, Any], split: str) -> float:
    value = record["test_accuracy"] if split == "test" else record["val_accuracy"]
    return float("nan") if value is None else float(value)


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _gap_shares(records: list[dict[str, Any]], reference: str) -> None:
    """Add gap_closed (share of the reference's gap each variant removed) and test_gain, per fraction."""
    for fraction in sorted({r["train_fraction"] for r in records}):
        group = [r for r in records if r["train_fraction"] == fraction]
        ref = next((r for r in group if r["variant"] == reference), None)
        if ref is None:
            continue
        for r in group:
            gap0 = ref["train_val_gap"]
            r["gap_closed"] = (gap0 - r["train_val_gap"]) / gap0 if gap0 > 1e-9 else None
            test_key = "test_accuracy" if r["test_accuracy"] is not None else "val_accuracy"
            r["test_gain"] = r[test_key] - ref[test_key]


def _noise(a: float, b: float, n: int) -> float:
    """Standard error of a difference of two accuracies measured on n images each (binomial)."""
    a, b = (a * n + 1) / (n + 2), (b * n + 1) / (n + 2)  # plus-two: no zero error at 0 % or 100 %
    return math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


def verdict_text(records: list[dict[str, Any]], preset: str, reference: str, split: str, n_eval: int) -> str:
    """A few plain sentences: who wins, by how much (against the noise of `n_eval` images), at what cost."""
    if preset == "regularization":
        return _regularization_verdict(records, reference, split, n_eval)
    full = max(r["train_fraction"] for r in records)
    group = sorted([r for r in records if r["train_fraction"] == full], key=lambda r: -_score(r, split))
    if len(group) < 2:
        r = group[0]
        return f"Only one run ({r['name']}): {_pts(_score(r, split))}% {split} accuracy in {r['train_seconds']:.0f} s."
    win, lose = group[0], group[1]
    a, b = _score(win, split), _score(lose, split)
    diff = a - b
    se = _noise(a, b, n_eval)
    speed = win["train_seconds"] / max(lose["train_seconds"], 1e-9)
    cost = (f"at {speed:.1f}x the training time ({win['train_seconds']:.0f} s vs {lose['train_seconds']:.0f} s)"
            if speed >= 1.1 else f"and it trained faster ({win['train_seconds']:.0f} s vs "
            f"{lose['train_seconds']:.0f} s)" if speed <= 0.9 else "in about the same training time")
    label = {"scratch": "from scratch", "finetune": "fine-tuned", "linear_probe": "as a linear probe"}
    if diff < 2 * se:
        text = (f"{win['variant']} and {lose['variant']} are within noise of each other: {_pts(a)}% vs {_pts(b)}% "
                f"{split} accuracy, a {_pts(diff)}-point difference against a standard error of about {_pts(se)} "
                f"points on {n_eval:,} images. They trained for {win['train_seconds']:.0f} s and "
                f"{lose['train_seconds']:.0f} s.")
    else:
        text = (f"{win['variant']} ({win['model']}, {label[win['approach']]}) wins: {_pts(a)}% {split} accuracy vs "
                f"{_pts(b)}% for {lose['variant']} ({lose['model']}, {label[lose['approach']]}), "
                f"+{_pts(diff)} points (about {diff / se:.0f} standard errors on {n_eval:,} images), {cost}.")
    if len(group) > 2:
        text += " Ranking: " + ", ".join(f"{r['variant']} {_pts(_score(r, split))}%" for r in group) + "."
    fractions = sorted({r["train_fraction"] for r in records})
    if len(fractions) > 1:
        low = fractions[0]
        at_low = sorted([r for r in records if r["train_fraction"] == low], key=lambda r: -_score(r, split))
        text += (f" With {100 * low:g}% of the training data ({at_low[0]['train_images']:,} images), "
                 + ", ".join(f"{r['variant']} reaches {_pts(_score(r, split))}%" for r in at_low) + ".")
        best_low = at_low[0]
        low_score = _score(best_low, split)
        beaten = [r for r in group if r["variant"] != best_low["variant"] and _score(r, split) < low_score]
        if beaten:
            text += (f" {best_low['variant']} on {100 * low:g}% of the data beats {beaten[0]['variant']} on "
                     f"{100 * full:g}%.")
    return text


def _regularization_verdict(records: list[dict[str, Any]], reference: str, split: str, n_eval: int) -> str:
    full = max(r["train_fraction"] for r in records)
    group = [r for r in records if r["train_fraction"] == full]
    ref = next((r for r in group if r["variant"] == reference), None)
    if ref is None:
        return "No baseline run, so the gap each regularizer closes cannot be measured."
    gap0 = ref["train_val_gap"]
    text = (f"Without regularization ({reference}) the model reaches {_pts(ref['train_accuracy'])}% on its training "
            f"images but {_pts(ref['val_accuracy'])}% on validation: a gap of {_pts(gap0)} points.")
    if gap0 <= 0.02:
        return text + " There is hardly a gap to close; this setup does not overfit (train longer or on less data)."
    noise = 2 * _noise(_score(ref, split), _score(ref, split), n_eval)
    others = sorted([r for r in group if r is not ref], key=lambda r: -(r.get("gap_closed") or 0))
    parts, fitted_less = [], []
    for r in others:
        closed, gain = r.get("gap_closed") or 0.0, r.get("test_gain") or 0.0
        gap_part = (f"closed {100 * closed:.0f}% of it (gap {_pts(r['train_val_gap'])})" if closed >= 0
                    else f"widened it (gap {_pts(r['train_val_gap'])})")
        change = f"{100 * gain:+.1f}" if round(100 * gain, 1) != 0 else "±0.0"
        parts.append(f"{r['variant']} {gap_part}, {split} accuracy {change}{' (noise)' if abs(gain) < noise else ''}")
        if closed > 0.1 and gain < noise:
            fitted_less.append(r["variant"])
    text += " " + "; ".join(parts) + "."
    if fitted_less:
        names = ", ".join(fitted_less[:-1]) + (" and " if len(fitted_less) > 1 else "") + fitted_less[-1]
        text += (f" {names} closed the gap by fitting the training images less, not by generalizing better; "
                 "regularizers that slow fitting down usually need a longer schedule to pay off (more --epochs).")
    singles = [r for r in others if r["variant"] != "all"]
    helpful = [r for r in singles if (r.get("test_gain") or 0.0) >= noise]
    if helpful:
        best = max(helpful, key=lambda r: r["test_gain"])
        text += (f" The single most useful regularizer here is {best['variant']} "
                 f"({_pts(_score(best, split))}% {split} accuracy, {100 * best['test_gain']:+.1f} points).")
    elif singles:
        text += (f" No single regularizer raised {split} accuracy beyond noise (±{_pts(noise)} points on "
                 f"{n_eval:,} images).")
    return text


# -- the report --------------------------------------------------------------------------------------------

def write_comparison_report(out: Path, comparison: dict[str, Any], histories: dict[str, list[dict[str, Any]]],
                            per_class: dict[str, list[float] | None]) -> Path:
    """DIR/report.md and the self-contained DIR/report.html from a comparison's results."""
    figure_dir = out / "figures"
    if figure_dir.is_dir():
        for old in figure_dir.glob("*.png"):
            old.unlink()
    records = [r for r in comparison["runs"] if not r.get("error")]
    split = comparison["split"]
    preset = comparison["preset"]
    budget = comparison.get("budget_seconds")
    if comparison.get("stopping") == "plateau":
        budget_text = (f"each until validation accuracy stopped improving for {comparison['early_stop_patience']} "
                       f"epochs (at most {PLATEAU_MAX_EPOCHS})")
    elif budget:
        budget_text = f"{budget:g} s of training each"
    elif len({r["epochs_run"] for r in records}) == 1:
        budget_text = f"{records[0]['epochs_run']} epochs each"
    else:
        budget_text = "the same epoch budget"
    doc = Document(f"Comparison: {preset}", out,
                   f"{len(records)} runs · evaluated on the {split} split · {budget_text}")
    doc.callout(comparison["verdict"], "good")
    if comparison.get("description"):
        doc.note(comparison["description"])

    doc.heading("Runs")
    has_test = split == "test"
    header = ["run", "approach", "model", "training images", "val acc"] + (["test acc"] if has_test else []) + \
        ["train time", "img/s", "peak RSS"]
    if preset == "regularization":
        header += ["train acc (clean)", "gap", "gap closed", f"{split} change"]
    rows = []
    for r in records:
        row = [r["name"], r["approach"], r["model"], f"{r['train_images']:,}", f"{_pts(r['val_accuracy'])}%"]
        row += [f"{_pts(r['test_accuracy'])}%"] if has_test else []
        row += [f"{r['train_seconds']:.1f} s", f"{r['images_per_second']:,.0f}",
                f"{r['peak_rss_mb'] / 1024:.1f} GB" if r.get("peak_rss_mb") else "n/a"]
        if preset == "regularization":
            closed = r.get("gap_closed")
            is_ref = r["variant"] == comparison.get("reference")
            row += [f"{_pts(r['train_accuracy'])}%", _pts(r["train_val_gap"]),
                    "reference" if is_ref else "" if closed is None else f"{100 * closed:.0f}%",
                    "" if is_ref else f"{100 * r.get('test_gain', 0.0):+.1f}"]
        rows.append(row)
    numeric = set(range(3, len(header)))
    doc.table(header, rows, numeric)
    doc.note(f"Each run is a normal run directory under `{out}/runs/`; `imgclf report {out}/runs/NAME` gives its "
             "full report. Peak RSS is the process's peak by the end of each run (the runs share one process).")
    for r in comparison["runs"]:
        if r.get("error"):
            doc.paragraph(f"**{r['name']}** is left out: {r['error']}")

    full = max(r["train_fraction"] for r in records)
    main = [r for r in records if r["train_fraction"] == full]
    labels = [r["variant"] for r in main]  # one run per variant at the full fraction
    doc.heading("Accuracy and cost")
    doc.figure("accuracy", figs.accuracy_bars(labels, [r["test_accuracy"] for r in main],
                                              [r["val_accuracy"] for r in main], split if split == "test" else "val"),
               f"Final accuracy of each run on the {split} split (solid) and on validation (light).")
    doc.figure("time", figs.time_bars(labels, [r["train_seconds"] for r in main],
                                      [r["images_per_second"] for r in main]),
               "Training seconds (excluding evaluation) and throughput: the price of each approach.")
    if preset == "regularization":
        doc.figure("gap", figs.gap_bars(labels, [r["train_accuracy"] for r in main], [r["val_accuracy"] for r in main],
                                        [r["test_accuracy"] for r in main]),
                   "Train accuracy is measured on the training images without augmentation, in eval mode, so the "
                   "gap is comparable across variants (history.csv's train accuracy is on augmented batches).")
    x = "seconds" if budget else "epoch"
    doc.heading("Learning curves")
    doc.figure("curves", figs.overlaid_curves({r["variant"]: histories[r["name"]] for r in main}, x=x),
               "Validation accuracy (solid) and train accuracy on augmented batches (dashed) per run; the space "
               "between a run's two lines is its gap.")
    fractions = sorted({r["train_fraction"] for r in records})
    if len(fractions) > 1:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            series.setdefault(r["variant"], []).append((r["train_fraction"], _score(r, split)))
        doc.heading("Data efficiency")
        doc.figure("fractions", figs.fraction_curve(series, split),
                   "Accuracy against the share of the training set each run used (the same stratified subsets "
                   "for every variant).")
    ranked = sorted(main, key=lambda r: -_score(r, split))
    if len(ranked) >= 2:
        ref_name = comparison.get("reference")
        worse = next((r for r in ranked if r["variant"] == ref_name and r is not ranked[0]), ranked[1])
        better = ranked[0]
        a, b = per_class.get(better["name"]), per_class.get(worse["name"])
        if a is not None and b is not None and np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-9:
            diff = np.asarray(a) - np.asarray(b)
            doc.heading("Per-class difference")
            order = np.argsort(diff)
            classes = comparison["classes"]
            text = f"{split.capitalize()} accuracy of {better['variant']} minus {worse['variant']}, per class."
            if diff[order[-1]] > 0:
                text += f" Largest gain: {classes[order[-1]]} ({100 * diff[order[-1]]:+.1f} points)."
            text += (f" Largest loss: {classes[order[0]]} ({100 * diff[order[0]]:+.1f})." if diff[order[0]] < 0
                     else " No class got worse.")
            doc.figure("per_class_difference",
                       figs.per_class_difference(classes, diff, better["variant"], worse["variant"]), text)
    return doc.write()
