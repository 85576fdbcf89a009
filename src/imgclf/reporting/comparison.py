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
from imgclf.reporting import curves, datacurves
from imgclf.reporting import figures as figs
from imgclf.reporting.document import Document


def score(record: dict[str, Any], split: str) -> float:
    """A run record's accuracy on `split` (test or val); NaN where it has none."""
    value = record["test_accuracy"] if split == "test" else record["val_accuracy"]
    return float("nan") if value is None else float(value)


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


# Run fields that a seed summary holds as their mean over the group's runs (None where a run lacks one).
_MEANS = ("val_accuracy", "test_accuracy", "train_seconds", "images_per_second", "train_accuracy", "train_val_gap",
          "gap_closed", "test_gain", "epochs_run", "peak_rss_mb")


def summarize_seeds(records: list[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    """One summary per group (a variant at one training fraction, repeated over seeds), in the order the
    groups first appear: the runs' `split` accuracy as `mean`, `std` (sample standard deviation, None with
    one run: not measured), `min`, `max` and `values`; `seeds` and `runs` (how many); the variant's own
    fields; and the mean of each other measurement, so a summary reads like a run record (`score` works on
    it). Records without a `group` (older comparisons) are grouped by name and fraction; diverged runs are
    skipped."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        if not r.get("error"):
            groups.setdefault((r.get("group") or r["name"], r["train_fraction"]), []).append(r)
    summaries: dict[str, dict[str, Any]] = {}
    for (name, fraction), runs in groups.items():
        values = [score(r, split) for r in runs]
        first = runs[0]
        if name in summaries:  # records named by variant alone at two fractions
            name = f"{first['variant']}_f{fraction:g}"
        summary: dict[str, Any] = {
            "name": name, "variant": first["variant"], "approach": first["approach"], "model": first.get("model"),
            "train_fraction": first["train_fraction"], "train_images": first.get("train_images"),
            "metric": f"{split}_accuracy", "runs": len(runs), "seeds": [r.get("seed") for r in runs],
            "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "min": float(min(values)), "max": float(max(values)), "values": values,
            "run_names": [r["name"] for r in runs],
        }
        for key in _MEANS:
            present = [r[key] for r in runs if r.get(key) is not None]
            summary[key] = float(np.mean(present)) if present else None
        summaries[name] = summary
    return summaries


def seeds_text(comparison: dict[str, Any]) -> str:
    """How often each variant ran: '3 seeds each' or '1 seed: spread not measured'."""
    count = len(comparison.get("seeds") or [0])
    return f"{count} seeds each" if count > 1 else "1 seed: spread not measured"


def _per_class_accuracy(run_dir: Path, split: str, k: int) -> np.ndarray | None:
    """Per-class accuracy (recall) from the run's saved predictions on `split`; None where there are none."""
    scores = datacurves.predicted_scores(run_dir, split, k)
    return None if scores is None else scores.recall


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
    summaries = summarize_seeds(records, split)
    repeated = max(s["runs"] for s in summaries.values()) > 1
    doc = Document(f"Comparison: {comparison['preset']}", out,
                   f"{len(records)} runs · evaluated on the {split} split · {_budget_text(comparison, records)} · "
                   f"{seeds_text(comparison)}")
    doc.callout(comparison["verdict"], "good")
    if comparison.get("description"):
        doc.note(comparison["description"])
    _runs_section(doc, comparison, records, gap)
    _seeds_section(doc, comparison, list(summaries.values()), repeated)

    full = max(r["train_fraction"] for r in records)
    main = [s for s in summaries.values() if s["train_fraction"] == full]  # one summary per variant
    labels = [s["variant"] for s in main]
    what = "mean over seeds, " if repeated else ""
    doc.heading("Accuracy and cost")
    doc.figure("accuracy", figs.accuracy_bars(labels, [s["test_accuracy"] for s in main],
                                              [s["val_accuracy"] for s in main], split if split == "test" else "val"),
               f"Final accuracy of each variant ({what}{split} split solid, validation light).")
    doc.figure("time", figs.time_bars(labels, [s["train_seconds"] for s in main],
                                      [s["images_per_second"] for s in main]),
               f"Training seconds ({what}excluding evaluation) and throughput: the price of each approach.")
    if gap:
        doc.figure("gap", figs.gap_bars(labels, [s["train_accuracy"] for s in main], [s["val_accuracy"] for s in main],
                                        [s["test_accuracy"] for s in main]),
                   "Train accuracy is measured on the training images without augmentation, in eval mode, so the "
                   "gap is comparable across variants (history.csv's train accuracy is on augmented batches).")
    x = "seconds" if comparison.get("budget_seconds") else "epoch"
    doc.heading("Learning curves")
    histories = {(r["name"] if repeated else r["variant"]): curves.history_rows(out / "runs" / r["name"])
                 for r in records if r["train_fraction"] == full}
    doc.figure("curves", figs.overlaid_curves(histories, x=x),
               "Validation accuracy (solid) and train accuracy on augmented batches (dashed) per run; the space "
               "between a run's two lines is its gap.")
    estimates = comparison.get("estimates") or curves.time_estimates(out, main, comparison.get("budget_seconds"))
    _time_section(doc, curves.time_series(out, main), estimates)
    if len({r["train_fraction"] for r in records}) > 1:
        series: dict[str, list[tuple[float, float]]] = {}
        for s in summaries.values():
            series.setdefault(s["variant"], []).append((s["train_fraction"], score(s, split)))
        doc.heading("Data efficiency")
        doc.figure("fractions", figs.fraction_curve(series, split),
                   "Accuracy against the share of the training set each run used (the same stratified subsets "
                   f"for every variant{'; means over seeds' if repeated else ''}).")
    data = comparison["data_estimates"] if "data_estimates" in comparison else \
        datacurves.data_estimates(out, records, comparison["classes"], split)
    _data_section(doc, data, split)
    _per_class_section(doc, out, comparison, main)
    return doc.write()


def _seeds_section(doc: Document, comparison: dict[str, Any], summaries: list[dict[str, Any]],
                   repeated: bool) -> None:
    """How sure: each variant's accuracy over its seeds (mean ± standard deviation, min to max)."""
    split = comparison["split"]
    doc.heading("How sure")
    if not repeated:
        doc.paragraph(f"1 seed: spread not measured. Each variant trained once, so the only noise the verdict "
                      f"counts is that of the {comparison['eval_images']:,} {split} images (binomial); "
                      "`--seeds 3` trains each variant 3 times on the same split and measures the spread.")
        return
    rows = [[s["name"], str(s["runs"]), f"{_pts(s['mean'])}%",
             "n/a" if s["std"] is None else f"±{_pts(s['std'])}", f"{_pts(s['min'])}% – {_pts(s['max'])}%",
             ", ".join(f"{_pts(v)}" for v in s["values"])] for s in summaries]
    doc.table(["variant", "seeds", f"mean {split} acc", "std", "min – max", "per seed"], rows, {1, 2, 3, 4})
    seeds = comparison.get("seeds") or []
    doc.note(f"{seeds_text(comparison)} (training seeds {', '.join(str(x) for x in seeds)}): every run of a "
             f"variant saw the same validation split and training images (split seed "
             f"{comparison.get('split_seed', seeds[0] if seeds else 0)}); only initialization, shuffling and "
             "augmentation changed. The verdict's standard error counts this spread and the binomial noise of the "
             f"{comparison['eval_images']:,} {split} images.")


def _time_section(doc: Document, series: dict[str, list[list[tuple[float, float]]]],
                  estimates: dict[str, dict[str, Any]]) -> None:
    """Validation accuracy against training seconds, with the fitted curves' estimates for 2x and 4x."""
    from imgclf.reporting import curves

    if not any(run for runs in series.values() for run in runs):
        return
    doc.heading("What more time buys")
    doc.figure("time_curves", curves.time_curves(series, estimates),
               "Validation accuracy against training seconds (a staged fine-tuning run's head phase counted), each "
               "seed's run a line; dashed: a saturating curve acc(t) = a - b·t^(-c) fitted to the points; dotted, "
               "past the budget: the estimate, the accuracy measured at the budget plus the gain the curve predicts.")
    text = curves.crossing_text(estimates)
    if text:
        doc.paragraph(text)
    rows = []
    for name, e in estimates.items():
        cells = ["n/a" if e.get(k) is None else f"~{_pts(e[k])}%" for k in ("2x", "4x")]
        measured = e.get("measured_val_accuracy")
        rows.append([name, f"{e['budget_seconds']:.0f} s", "n/a" if measured is None else f"{_pts(measured)}%",
                     *cells, e.get("note", "")])
    doc.table(["variant", "budget", "val acc (measured)", "estimate at 2x", "estimate at 4x", "how"], rows,
              {1, 2, 3, 4})
    doc.note("Estimates, not measurements: the points are each run's progress under a schedule sized to its whole "
             "budget, whose end (the learning rate annealed) lifts the last epochs above the curve; a run given 2x "
             "the time would get that lift at its own end, so each estimate adds the curve's gain to the accuracy "
             "measured at the budget. `--budget` with 2x the seconds measures it.")


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
    """The winner minus the reference (else the runner-up), per class, where both saved their predictions
    (`main`: seed summaries; each variant's first run stands for it)."""
    split = comparison["split"]
    ranked = sorted(main, key=lambda r: -score(r, split))
    if len(ranked) < 2:
        return
    worse = next((r for r in ranked if r["variant"] == comparison.get("reference") and r is not ranked[0]), ranked[1])
    better = ranked[0]
    classes = comparison["classes"]
    a, b = (_per_class_accuracy(out / "runs" / r["run_names"][0], split, len(classes)) for r in (better, worse))
    if a is None or b is None or np.abs(a - b).max() <= 1e-9:
        return
    diff = a - b
    doc.heading("Per-class difference")
    order = np.argsort(diff)
    text = f"{split.capitalize()} accuracy of {better['variant']} minus {worse['variant']}, per class" + \
        (f" (their first runs: {better['run_names'][0]}, {worse['run_names'][0]})." if better["runs"] > 1 else ".")
    if diff[order[-1]] > 0:
        text += f" Largest gain: {classes[order[-1]]} ({100 * diff[order[-1]]:+.1f} points)."
    text += (f" Largest loss: {classes[order[0]]} ({100 * diff[order[0]]:+.1f})." if diff[order[0]] < 0
             else " No class got worse.")
    doc.figure("per_class_difference", figs.per_class_difference(classes, diff, better["variant"], worse["variant"]),
               text)


def _check_text(variant: str, check: dict[str, Any], evaluated: int) -> str:
    """The method's check on this comparison's own runs, in one sentence, with the measurement's own noise on
    the `evaluated` images beside the miss."""
    shares = " and ".join(f"{100 * f:g}%" for f in check["fractions"])
    if check.get("estimate") is None:
        return f"{variant}: the largest fraction is not estimated from {shares} ({check['note']})."
    measured = check["measured"]
    noise = (f", against {_pts(np.sqrt(measured * (1 - measured) / evaluated))} points of standard error in the "
             f"measurement on {evaluated:,} images" if evaluated else "")
    text = (f"{variant}: from the {shares} runs alone ({check['points']} points, {check['method']}), the curve "
            f"estimated {_pts(check['estimate'])}% at {100 * check['fraction']:g}% of the data "
            f"({check['images']:,} images); measured {_pts(measured)}% "
            f"(estimate {100 * check['error']:+.1f} points off{noise}).")
    if check.get("class_mean_abs_error") is not None:
        text += (f" Per class the same estimate was off by {100 * check['class_mean_abs_error']:.1f} points on "
                 f"average ({check['classes_checked']} classes).")
    return text


def _data_section(doc: Document, estimates: dict[str, dict[str, Any]], split: str) -> None:
    """Per class, what more images should buy (an estimate from each class's fitted curve), the classes that
    would gain most, and the method checked against the largest fraction measured."""
    if not estimates:
        return
    doc.heading("What more data buys")
    points = sorted({e["points"] for e in estimates.values()})
    doc.paragraph(f"Estimates, not measurements: for each class, {split} accuracy against the number of that class's "
                  f"training images at each fraction ({' or '.join(map(str, points))} points per curve), a saturating "
                  f"curve acc = a - b·n^(-c) fitted to them (with 2 points c is fixed at "
                  f"{datacurves.FIXED_EXPONENT:g}; with 3 it passes through them where they rise and flatten, and is "
                  "the closest rising curve where they dip), and the gain it predicts from the class's images at the "
                  "largest fraction to twice that (N more images = as many again).")
    for variant, entry in estimates.items():
        lead = f"{variant}: as many images again overall ({entry['more_images']:,} more)"
        lead += (f" should add about {100 * entry['gain']:.1f} points (estimate)." if entry.get("gain") is not None
                 else ": not estimated.")
        if entry["gain_most"]:
            lead += f" The classes that would gain most: {', '.join(entry['gain_most'])}."
        doc.paragraph(lead)
        doc.bullets([e["line"] for e in sorted(entry["classes"], key=lambda e: -(e.get("gain") or -1.0))])
    rows = []
    for variant, entry in estimates.items():
        for e in entry["classes"]:
            se = np.sqrt(e["measured"] * (1 - e["measured"]) / e["test_images"]) if e["test_images"] else None
            rows.append([variant, e["class"], "n/a" if e["images"] is None else f"{e['images']:,}",
                         f"{_pts(e['measured'])}%" + ("" if se is None else f" ±{_pts(se)}"), str(e["test_images"]),
                         "n/a" if e.get("more_images") is None else f"{e['more_images']:,}",
                         "n/a" if e.get("gain") is None else f"~{100 * e['gain']:+.1f}",
                         "n/a" if e.get("gain") is None else f"~{_pts(e['estimate'])}%"])
    doc.table(["variant", "class", "training images", f"{split} acc (± std. error)", f"{split} images",
               "more images", "gain (points, estimate)", "estimated acc"], rows, {2, 3, 4, 5, 6, 7})
    doc.paragraph("Check of the method, where the answer is known: "
                  + " ".join(_check_text(v, e["check"], sum(c["test_images"] or 0 for c in e["classes"]))
                             for v, e in estimates.items()))
    panels = datacurves.figure_panels(estimates)
    if panels:
        doc.figure("data_curves", figs.class_data_curves(panels, split),
                   f"Per class, {split} accuracy against the class's training images: dots measured, dashed the "
                   "fitted curve, dotted past the last dot the estimate out to twice the images (the measured point "
                   "plus the curve's gain)" + (f"; the {len(panels)} classes that would gain most"
                                              if len(panels) < len(next(iter(estimates.values()))["classes"]) else "")
                   + ".")
    doc.note("Each class's accuracy is measured on few images (the ± column is its binomial standard error), and "
             "the curve has as many parameters as points or nearly, so read a gain as a rough size, not a promise: "
             "the check above says how far the same method missed on this comparison's own largest fraction. "
             "Where a class's accuracy did not rise across the fractions the curve is flat and predicts no gain. "
             "Under --epochs a smaller fraction also trains fewer steps. Under --budget every run trains as long, "
             "so a larger fraction gets fewer passes over each image: a learner still climbing at the budget is "
             "short of time rather than of images, its largest fraction may score no better, and the check then "
             "misses high.")
