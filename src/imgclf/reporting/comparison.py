"""The comparison report: DIR/report.md and a self-contained DIR/report.html from what a comparison's
folder holds (DIR/comparison.json and the run directories under DIR/runs/), so `imgclf report DIR`
renders it again without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import UserError
from imgclf.evaluation.diagnosis import read_history
from imgclf.evaluation.scores import class_scores
from imgclf.reporting import figures as figs
from imgclf.reporting.document import Document


def score(record: dict[str, Any], split: str) -> float:
    """A run record's accuracy on `split` (test or val); NaN where it has none."""
    value = record["test_accuracy"] if split == "test" else record["val_accuracy"]
    return float("nan") if value is None else float(value)


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.csv"
    return read_history(path) if path.is_file() else []


def _per_class_accuracy(run_dir: Path, split: str, k: int) -> np.ndarray | None:
    """Per-class accuracy (recall) from the run's saved predictions on `split`; None where there are none."""
    path = run_dir / f"predictions_{split}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        pred, labels = data["logits"].argmax(axis=1), data["labels"]
    return class_scores(labels, pred, k).recall


def _budget_text(comparison: dict[str, Any], records: list[dict[str, Any]]) -> str:
    budget = comparison.get("budget_seconds")
    if comparison.get("stopping") == "plateau":
        cap = f" (at most {comparison['max_epochs']})" if comparison.get("max_epochs") else ""
        return (f"each until validation accuracy stopped improving for {comparison['early_stop_patience']} "
                f"epochs{cap}")
    if budget:
        return f"{budget:g} s of training each"
    if len({r["epochs_run"] for r in records}) == 1:
        return f"{records[0]['epochs_run']} epochs each"
    return "the same epoch budget"


def write_comparison_report(folder: str | Path) -> Path:
    """DIR/report.md and the self-contained DIR/report.html from DIR/comparison.json and DIR/runs/*."""
    out = Path(folder)
    path = out / "comparison.json"
    try:
        comparison = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable comparison ({exc.__class__.__name__})") from None
    records = [r for r in comparison["runs"] if not r.get("error")]
    split = comparison["split"]
    gap = comparison.get("judge") == "gap"
    doc = Document(f"Comparison: {comparison['preset']}", out,
                   f"{len(records)} runs · evaluated on the {split} split · {_budget_text(comparison, records)}")
    doc.callout(comparison["verdict"], "good")
    if comparison.get("description"):
        doc.note(comparison["description"])
    _runs_section(doc, comparison, records, gap)

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
    if gap:
        doc.figure("gap", figs.gap_bars(labels, [r["train_accuracy"] for r in main], [r["val_accuracy"] for r in main],
                                        [r["test_accuracy"] for r in main]),
                   "Train accuracy is measured on the training images without augmentation, in eval mode, so the "
                   "gap is comparable across variants (history.csv's train accuracy is on augmented batches).")
    x = "seconds" if comparison.get("budget_seconds") else "epoch"
    doc.heading("Learning curves")
    doc.figure("curves", figs.overlaid_curves({r["variant"]: _history(out / "runs" / r["name"]) for r in main}, x=x),
               "Validation accuracy (solid) and train accuracy on augmented batches (dashed) per run; the space "
               "between a run's two lines is its gap.")
    if len({r["train_fraction"] for r in records}) > 1:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            series.setdefault(r["variant"], []).append((r["train_fraction"], score(r, split)))
        doc.heading("Data efficiency")
        doc.figure("fractions", figs.fraction_curve(series, split),
                   "Accuracy against the share of the training set each run used (the same stratified subsets "
                   "for every variant).")
    _per_class_section(doc, out, comparison, main)
    return doc.write()


def _runs_section(doc: Document, comparison: dict[str, Any], records: list[dict[str, Any]], gap: bool) -> None:
    split = comparison["split"]
    doc.heading("Runs")
    has_test = split == "test"
    header = ["run", "approach", "model", "training images", "val acc"] + (["test acc"] if has_test else []) + \
        ["train time", "img/s", "peak RSS"]
    if gap:
        header += ["train acc (clean)", "gap", "gap closed", f"{split} change"]
    rows = []
    for r in records:
        row = [r["name"], r["approach"], r["model"], f"{r['train_images']:,}", f"{_pts(r['val_accuracy'])}%"]
        row += [f"{_pts(r['test_accuracy'])}%"] if has_test else []
        row += [f"{r['train_seconds']:.1f} s", f"{r['images_per_second']:,.0f}",
                f"{r['peak_rss_mb'] / 1024:.1f} GB" if r.get("peak_rss_mb") else "n/a"]
        if gap:
            closed = r.get("gap_closed")
            is_ref = r["variant"] == comparison.get("reference")
            row += [f"{_pts(r['train_accuracy'])}%", _pts(r["train_val_gap"]),
                    "reference" if is_ref else "" if closed is None else f"{100 * closed:.0f}%",
                    "" if is_ref else f"{100 * r.get('test_gain', 0.0):+.1f}"]
        rows.append(row)
    doc.table(header, rows, set(range(3, len(header))))
    example = next((r["run_dir"] for r in comparison["runs"] if not r.get("error")), None)
    doc.note(f"Each run is a normal run directory under `{doc.folder}/runs/`"
             + (f"; `imgclf report {example}` gives its full report" if example else "")
             + ". Peak RSS is the process's peak by the end of each run (the runs share one process).")
    for r in comparison["runs"]:
        if r.get("error"):
            doc.paragraph(f"**{r['name']}** is left out: {r['error']}")


def _per_class_section(doc: Document, out: Path, comparison: dict[str, Any], main: list[dict[str, Any]]) -> None:
    """The winner minus the reference (else the runner-up), per class, where both saved their predictions."""
    split = comparison["split"]
    ranked = sorted(main, key=lambda r: -score(r, split))
    if len(ranked) < 2:
        return
    worse = next((r for r in ranked if r["variant"] == comparison.get("reference") and r is not ranked[0]), ranked[1])
    better = ranked[0]
    classes = comparison["classes"]
    a, b = (_per_class_accuracy(out / "runs" / r["name"], split, len(classes)) for r in (better, worse))
    if a is None or b is None or np.abs(a - b).max() <= 1e-9:
        return
    diff = a - b
    doc.heading("Per-class difference")
    order = np.argsort(diff)
    text = f"{split.capitalize()} accuracy of {better['variant']} minus {worse['variant']}, per class."
    if diff[order[-1]] > 0:
        text += f" Largest gain: {classes[order[-1]]} ({100 * diff[order[-1]]:+.1f} points)."
    text += (f" Largest loss: {classes[order[0]]} ({100 * diff[order[0]]:+.1f})." if diff[order[0]] < 0
             else " No class got worse.")
    doc.figure("per_class_difference", figs.per_class_difference(classes, diff, better["variant"], worse["variant"]),
               text)
