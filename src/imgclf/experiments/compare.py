"""`imgclf compare`: train variants on one split with one budget; say which wins, by how much, at what cost.

One mechanism serves every study (experiments/variants.py): a preset (`transfer`: from scratch vs
fine-tuning; `regularization`: each regularizer against none) or `--variants FILE.yaml`, and
`--fractions` repeats every variant on stratified shares of the training set (a data-efficiency curve);
`--seeds N` trains each N times with different training seeds on the same split, and the verdict counts the
spread over seeds beside the noise of the evaluation images. From each run's history the report fits a
saturating curve of validation accuracy against training seconds and estimates 2x and 4x the budget;
with --fractions it fits the same curve per class in training images (reporting/datacurves.py).
The data is decoded once per distinct decoding and handed to every run, and all runs are scored on
the same validation and test images. Each run is a normal run directory under DIR/runs/; DIR/comparison.json
holds the records and the verdict, and `reporting.comparison` renders DIR/report.md and report.html from them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgclf.config import TrainConfig, plan_compare, resolve_strategy
from imgclf.defaults import PLATEAU_MAX_EPOCHS
from imgclf.errors import TrainingDiverged, UserError
from imgclf.experiments.variants import (
    Plan,
    Study,
    approach_of,
    load_preset,
    load_variants_file,
    parse_fractions,
    plan_runs,
    split_seed,
)
from imgclf.experiments.verdict import comparison_verdict, gap_shares
from imgclf.fileio import write_json

# Keys that change which images a run sees (and at what decoded size); runs that agree share one decode. The
# seed that splits the data is the split seed: repeats with other training seeds share their base run's split.
_DATA_KEYS = ("data", "data_dir", "val_fraction", "loader")


def _decode_key(cfg: TrainConfig) -> tuple[Any, ...]:
    from imgclf.config import data_input_size

    return (*(getattr(cfg, k) for k in _DATA_KEYS), split_seed(cfg), data_input_size(cfg))


def thin(splits: Any, cfg: TrainConfig) -> Any:
    """The run's training set from shared splits: the same seeded per-class subset load_splits would take
    (seeded by the split seed, so every repeat of a variant trains on the same images)."""
    from imgclf.data.imageset import thin_train

    return thin_train(splits, cfg.subset, cfg.train_fraction, split_seed(cfg))


def slowest_rate(plans: list[Plan]) -> tuple[Plan, float]:
    """The slowest (largest-input) variant and its inference rate measured here, in images per second: what
    the derived budget and the time of repeats are reckoned from."""
    import time

    import torch

    from imgclf.config import data_input_size
    from imgclf.models import build_model

    slowest = max(plans, key=lambda p: data_input_size(p.cfg) or 0)
    size = data_input_size(slowest.cfg) or 32
    model = build_model(slowest.cfg.model, 2).eval().to(memory_format=torch.channels_last)
    x = torch.rand(16, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        tick = time.perf_counter()
        model(x)
        return slowest, len(x) / (time.perf_counter() - tick)


def _parts(splits: Any) -> list[Any]:
    return [p for p in (splits.train, splits.val, splits.test) if p is not None]


def _clean_train_accuracy(model: Any, train_set: Any, cfg: TrainConfig) -> float:
    """Accuracy on the training images as the model sees test images (the run's resolved `cfg`): no
    augmentation, eval mode."""
    from imgclf.evaluation.metrics import loss_and_accuracy, predict_logits
    from imgclf.runtime import resolve_amp
    from imgclf.training.run import eval_loader_for

    device = next(model.parameters()).device
    loader = eval_loader_for(cfg, train_set, device)
    return loss_and_accuracy(*predict_logits(model, loader, amp_dtype=resolve_amp(cfg, device)))[1]


def run_compare(base_cfg: TrainConfig, out: str | Path, preset: str | None = "transfer",
                variants_file: str | Path | None = None, fractions: str | Sequence[float] | None = None,
                budget: float | None = None, seeds: int | None = None) -> dict[str, Any]:
    """Train every variant (at every fraction, `seeds` times), write DIR/comparison.json, then render
    DIR/report.md and report.html from it. `seeds` None: `default_seeds` decides once the budget is known."""
    from imgclf.config import load_data
    from imgclf.models import build_model
    from imgclf.reporting.comparison import summarize_seeds, write_comparison_report
    from imgclf.reporting.curves import time_estimates
    from imgclf.reporting.datacurves import data_estimates

    out = Path(out)
    study = load_variants_file(variants_file) if variants_file else load_preset(preset or "transfer")
    fraction_list = parse_fractions(fractions)
    runs_dir = out / "runs"
    if runs_dir.is_dir() and any(runs_dir.glob("*/checkpoints/last.pt")):
        raise UserError(f"{out} already holds a comparison's runs; pass another --out or remove {runs_dir}")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    plans = plan_runs(base_cfg, study.variants, out, fraction_list, budget, study.base_if_unset)

    shared: dict[tuple[Any, ...], Any] = {}
    for plan in plans:  # decode before training anything, so a bad --data fails fast
        key = _decode_key(plan.cfg)
        if key not in shared:
            shared[key] = load_data(plan.cfg.replace(subset=None, train_fraction=1.0))
        thin(shared[key], plan.cfg)  # a fraction too small for the classes fails here, not after hours
        resolve_strategy(plan.cfg)  # so does a strategy the weights cannot serve, or weights that do not fit
        build_model(plan.cfg.model, len(shared[key].classes), pretrained=plan.cfg.pretrained,
                    weights=plan.cfg.weights, width=plan.cfg.width)
    def measure() -> tuple[int, int, float]:  # the slowest variant: its training images, all its images, img/s
        slowest, rate = slowest_rate(plans)
        data = shared[_decode_key(slowest.cfg)]
        return len(thin(data, slowest.cfg).train), sum(len(part) for part in _parts(data)), rate

    train_images = max(len(thin(shared[_decode_key(p.cfg)], p.cfg).train) for p in plans)
    decided = plan_compare(base_cfg, budget, seeds, len(plans), train_images, measure)
    budget, seeds, seeds_reason = decided.budget, decided.seeds, decided.seeds_reason
    until_plateau = decided.stopping == "plateau"
    if decided.budget_derived and not base_cfg.quiet:
        print(f"compare: {budget:.0f} s of training for each run (derived from the data and this machine; "
              "--budget S or --epochs N to choose)", file=sys.stderr)
    if not base_cfg.quiet:
        print(f"compare: {seeds_reason}", file=sys.stderr)
    # until the plateau: each approach trains until its validation accuracy stops improving, within a cap
    plans = plan_runs(base_cfg.replace(epochs=PLATEAU_MAX_EPOCHS) if until_plateau else base_cfg, study.variants,
                      out, fraction_list, budget, study.base_if_unset, seeds)
    first = shared[_decode_key(plans[0].cfg)]
    split = "test" if first.test is not None else "val"

    records = _train_all(plans, shared, study, quiet=base_cfg.quiet)
    if not any(not r.get("error") for r in records):
        raise UserError("every run of the comparison diverged; try a lower --lr or --grad-clip")
    if study.judge == "gap":
        gap_shares([r for r in records if not r.get("error")], study.reference)
    ok = [r for r in records if not r.get("error")]
    summary = summarize_seeds(ok, split)
    full = max(r["train_fraction"] for r in ok)
    comparison = {"preset": study.name, "description": study.description, "judge": study.judge, "split": split,
                  "eval_images": len(first.test if split == "test" else first.val), "reference": study.reference,
                  "classes": list(first.classes), "budget_seconds": budget, "fractions": fraction_list,
                  "stopping": decided.stopping,
                  "early_stop_patience": base_cfg.early_stop_patience,
                  "max_epochs": PLATEAU_MAX_EPOCHS if until_plateau else None,
                  "seeds": sorted({p.cfg.seed for p in plans}), "seeds_reason": seeds_reason,
                  "split_seed": split_seed(plans[0].cfg), "summary": summary,
                  "estimates": time_estimates(out, [s for s in summary.values() if s["train_fraction"] == full],
                                              budget),
                  # what more data buys (with --fractions): per-class curves in images, checked on the runs
                  "data_estimates": data_estimates(out, ok, list(first.classes), split),
                  "runs": ok + [r for r in records if r.get("error")]}
    comparison["verdict"] = comparison_verdict(comparison, study.combined)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", comparison)
    write_comparison_report(out)
    return comparison


def _class_counts(splits: Any) -> list[int] | None:
    """Training images per class in label order; None for labels that are not one class per image."""
    import numpy as np

    labels = np.asarray(splits.train.labels)
    return np.bincount(labels, minlength=len(splits.classes)).tolist() if labels.ndim == 1 else None


def _train_all(plans: list[Plan], shared: dict[tuple[Any, ...], Any], study: Study,
               quiet: bool) -> list[dict[str, Any]]:
    """Train the plans in order, one record each; a run that diverges is recorded with its error and spoils
    no others (say, no regularization at a high LR)."""
    from imgclf.training.run import train

    records: list[dict[str, Any]] = []
    for i, plan in enumerate(plans, 1):
        splits = thin(shared[_decode_key(plan.cfg)], plan.cfg)
        approach = approach_of(plan.cfg)
        if not quiet:
            print(f"compare: [{i}/{len(plans)}] {plan.name} ({approach}, {plan.cfg.model}, "
                  f"{len(splits.train)} training images)", file=sys.stderr)
        try:
            result = train(plan.cfg, splits=splits)
        except TrainingDiverged as exc:
            print(f"compare: {plan.name} diverged and is left out: {exc}", file=sys.stderr)
            records.append({"name": plan.name, "group": plan.group, "variant": plan.variant, "approach": approach,
                            "seed": plan.cfg.seed, "train_fraction": plan.cfg.train_fraction, "val_accuracy": None,
                            "test_accuracy": None,
                            "train_seconds": None, "run_dir": plan.cfg.out, "error": str(exc)})
            continue
        m = result.metrics
        record: dict[str, Any] = {
            "name": plan.name, "group": plan.group, "variant": plan.variant, "approach": approach,
            "seed": plan.cfg.seed, "train_fraction": plan.cfg.train_fraction, "val_accuracy": m["val_accuracy"],
            "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"], "run_dir": str(result.run_dir),
            "model": plan.cfg.model, "pretrained": plan.cfg.pretrained, "train_images": len(splits.train),
            "train_class_counts": _class_counts(splits),  # the per-class data curves' x
            "epochs_run": m["epochs_run"], "images_per_second": m["images_per_second"],
            "num_params": m["num_params"], "stop_reason": m.get("stop_reason"),
            "peak_rss_mb": m.get("peak_rss_mb"),  # of the process so far: runs share it, so it only grows
        }
        if study.judge == "gap":  # the gap verdict needs the train accuracy without augmentation
            record["train_accuracy"] = _clean_train_accuracy(result.model, splits.train, result.config)
            record["train_val_gap"] = record["train_accuracy"] - m["val_accuracy"]
        records.append(record)
        del result
    return records
