"""What more data buys: per class, the accuracy of that class against its number of training images at each
`--fractions` share, the saturating curve of `reporting.curves` fitted in images, and what the curve says
about doubling each class's images; and a check of the method on the comparison's own runs: the largest
fraction's accuracy estimated from the smaller fractions alone, beside the measured one.

Every number here is an estimate from a curve through few points (one per fraction, each the mean over that
fraction's seeds), measured on few evaluation images per class; it is labelled as one. With 3 or more
fractions the curve is acc = a - b * n^(-c) with a, b, c free (through 3 points that rise and flatten it passes
exactly; points that dip get the closest rising curve, which misses some of them); with 2 the exponent is fixed
(FIXED_EXPONENT), so each doubling of the data adds 1/sqrt(2) of what the one before added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.evaluation.scores import ClassScores, class_scores
from imgclf.reporting.curves import SaturatingFit, fit_power_fixed, fit_saturating

MIN_FIT_POINTS = 3  # a free exponent needs 3 sizes; 2 get the fixed-exponent form
MIN_IMAGE_SPAN = 1.5  # the sizes must spread over at least this ratio (rounding makes 0.3 -> 0.6 just under 2x)
FIXED_EXPONENT = 0.5  # the 2-point form's c: error falls as 1/sqrt(images), the textbook rate for a fixed model
SHOWN = 3  # how many classes the report names as gaining most
MIN_GAIN = 0.001  # ... each estimated to gain at least this much (0.1 points): a flat curve names no class


def predicted_scores(run_dir: Path, split: str, num_classes: int) -> ClassScores | None:
    """Per-class scores from a run's saved predictions on `split`; None where the run saved none."""
    path = run_dir / f"predictions_{split}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        pred, labels = data["logits"].argmax(axis=1), data["labels"]
    return class_scores(labels, pred, num_classes)


@dataclass
class Level:
    """One variant at one training fraction (its seeds' mean): overall and per-class accuracy on the split,
    the training images in all and per class (None where the record predates per-class counts), and each
    class's evaluation images."""

    fraction: float
    images: int
    accuracy: float
    class_images: list[int] | None
    class_accuracy: np.ndarray
    support: np.ndarray


def levels(folder: Path, records: Sequence[Mapping[str, Any]], num_classes: int,
           split: str) -> dict[str, list[Level]]:
    """Per variant, its fractions in increasing order, scored from the runs' saved predictions."""
    groups: dict[str, dict[float, list[Mapping[str, Any]]]] = {}
    for r in records:
        if not r.get("error"):
            groups.setdefault(r["variant"], {}).setdefault(float(r["train_fraction"]), []).append(r)
    out: dict[str, list[Level]] = {}
    for variant, by_fraction in groups.items():
        for fraction in sorted(by_fraction):
            runs = by_fraction[fraction]
            scored = [s for s in (predicted_scores(folder / "runs" / r["name"], split, num_classes) for r in runs)
                      if s is not None]
            if not scored:
                continue
            accuracy = float(np.mean([np.trace(s.confusion) / max(int(s.confusion.sum()), 1) for s in scored]))
            out.setdefault(variant, []).append(Level(
                fraction, int(runs[0]["train_images"]), accuracy, runs[0].get("train_class_counts"),
                np.mean([s.recall for s in scored], axis=0), scored[0].support))
    return out


def fit_data(images: Sequence[float], accuracy: Sequence[float]) -> SaturatingFit | None:
    """The curve in training images: 3 or more distinct sizes get the free saturating fit, 2 the fixed-exponent
    one; fewer, or sizes spread under MIN_IMAGE_SPAN, None."""
    sizes = np.asarray(images, dtype=float)
    if len(np.unique(sizes)) >= MIN_FIT_POINTS:
        return fit_saturating(sizes, accuracy, min_points=MIN_FIT_POINTS, min_span=MIN_IMAGE_SPAN)
    if len(np.unique(sizes)) == 2 and sizes.min() > 0 and sizes.max() >= MIN_IMAGE_SPAN * sizes.min():
        return fit_power_fixed(sizes, accuracy, FIXED_EXPONENT)
    return None


def doubling(fit: SaturatingFit | None, images: int, measured: float) -> dict[str, Any]:
    """What as many images again should buy: the gain the curve predicts from `images` to twice that, and the
    measured accuracy plus that gain (the measured point's offset from the curve kept, as for time)."""
    if fit is None or images <= 0:
        return {"more_images": images, "gain": None, "estimate": None}
    gain = float(fit(2 * images) - fit(images))
    return {"more_images": images, "gain": gain, "estimate": float(np.clip(measured + gain, 0.0, 1.0))}


def class_line(entry: Mapping[str, Any]) -> str:
    """'about N more images of class X should add about Y points (...)', or why there is no estimate."""
    name = entry["class"]
    if entry.get("gain") is None:
        return f"class {name}: not estimated ({entry.get('why', 'too few fractions to fit a curve')})"
    measured = ", ".join(f"{100 * acc:.0f}%" for _, acc in entry["curve"])
    sizes = ", ".join(f"{int(n):,}" for n, _ in entry["curve"])
    return (f"about {entry['more_images']:,} more images of class {name} should add about "
            f"{100 * entry['gain']:.1f} points (an estimate from a curve through {entry['points']} fractions: "
            f"{measured} with {sizes} images -> ~{100 * entry['estimate']:.0f}% with {2 * entry['images']:,})")


def _class_entries(lv: Sequence[Level], classes: Sequence[str]) -> list[dict[str, Any]]:
    top, entries = lv[-1], []
    for c, name in enumerate(classes):
        points = [[int(lvl.class_images[c]), float(lvl.class_accuracy[c])] for lvl in lv if lvl.class_images]
        entry: dict[str, Any] = {"class": name, "images": int(top.class_images[c]) if top.class_images else None,
                                 "test_images": int(top.support[c]), "measured": float(top.class_accuracy[c]),
                                 "points": len(points), "curve": points, "fit": None}
        if top.class_images is None:
            entry.update(more_images=None, gain=None, why="the comparison did not record per-class image counts")
        elif not top.support[c]:
            entry.update(more_images=None, gain=None, why="no evaluation images of this class")
        else:
            fit = fit_data([p[0] for p in points], [p[1] for p in points])
            entry.update(doubling(fit, entry["images"], entry["measured"]), fit=fit.to_dict() if fit else None)
        entry["line"] = class_line(entry)
        entries.append(entry)
    return entries


def _check(lv: Sequence[Level]) -> dict[str, Any]:
    """The method tried where the answer is known: the largest fraction's accuracy (overall, and each class's)
    estimated from the smaller fractions alone, beside what that fraction measured."""
    smaller, top = lv[:-1], lv[-1]
    fit = fit_data([lvl.images for lvl in smaller], [lvl.accuracy for lvl in smaller])
    if fit is None:
        return {"fractions": [lvl.fraction for lvl in smaller], "estimate": None,
                "note": "needs 2 or more smaller fractions, spread over at least "
                        f"{MIN_IMAGE_SPAN:g}x in images, to estimate the largest"}
    check: dict[str, Any] = {"fractions": [lvl.fraction for lvl in smaller], "points": len(smaller),
                             "method": fit.method, "fraction": top.fraction, "images": top.images,
                             "estimate": float(fit(top.images)), "measured": top.accuracy}
    check["error"] = check["estimate"] - top.accuracy
    if top.class_images and all(lvl.class_images for lvl in smaller):
        errors = []
        for c in np.nonzero(top.support)[0]:
            class_fit = fit_data([lvl.class_images[c] for lvl in smaller], [lvl.class_accuracy[c] for lvl in smaller])
            if class_fit is not None:
                errors.append(float(class_fit(top.class_images[c])) - float(top.class_accuracy[c]))
        if errors:
            check["class_mean_abs_error"] = float(np.mean(np.abs(errors)))
            check["classes_checked"] = len(errors)
    return check


def data_estimates(folder: str | Path, records: Sequence[Mapping[str, Any]], classes: Sequence[str],
                   split: str) -> dict[str, dict[str, Any]]:
    """Per variant with 2 or more fractions: the curve of overall accuracy in training images and what doubling
    the largest fraction's images should buy; one entry a class (its line: 'about N more images of class X
    should add about Y points'), N being as many images again as the class had at the largest fraction; the
    classes that would gain most; and the check of the method on the smaller fractions."""
    out: dict[str, dict[str, Any]] = {}
    for variant, lv in levels(Path(folder), records, len(classes), split).items():
        if len(lv) < 2:
            continue
        top = lv[-1]
        fit = fit_data([lvl.images for lvl in lv], [lvl.accuracy for lvl in lv])
        entries = _class_entries(lv, classes)
        gaining = sorted((e for e in entries if (e.get("gain") or 0.0) >= MIN_GAIN), key=lambda e: -e["gain"])
        out[variant] = {
            "split": split, "fractions": [lvl.fraction for lvl in lv], "points": len(lv), "images": top.images,
            "measured": top.accuracy, "curve": [[lvl.images, lvl.accuracy] for lvl in lv],
            "fit": fit.to_dict() if fit else None, "method": fit.method if fit else None,
            **doubling(fit, top.images, top.accuracy),
            "classes": entries, "gain_most": [e["class"] for e in gaining[:SHOWN]], "check": _check(lv),
            "note": (f"estimates from a curve fitted to {len(lv)} fractions "
                     f"({'a - b·n^(-c), c free' if len(lv) >= MIN_FIT_POINTS else f'a - b·n^(-{FIXED_EXPONENT:g})'}"
                     f", n the training images), not measurements; N more images = as many again as at the "
                     "largest fraction"),
        }
    return out


def _segments(entry: Mapping[str, Any]) -> tuple[list[tuple[float, float]], np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """An entry's measured points, its fitted curve across them, and the anchored continuation to 2x."""
    points = [(float(x), float(y)) for x, y in entry["curve"]]
    if not entry.get("fit") or entry.get("gain") is None:
        empty = np.array([])
        return points, empty, empty, empty, empty
    fit = SaturatingFit.from_dict(entry["fit"])
    lo, hi = min(p[0] for p in points), max(p[0] for p in points)
    inside = np.geomspace(lo, hi, 60)
    past = np.geomspace(hi, 2 * hi, 30)
    shift = float(entry["measured"]) - float(fit(hi))
    return points, inside, fit(inside), past, np.clip(fit(past) + shift, 0.0, 1.0)


def figure_panels(estimates: Mapping[str, Mapping[str, Any]],
                  limit: int = 12) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Per class (up to `limit`: those that would gain most, over all variants), per variant: the measured
    points, the fit across them and the estimate past them, ready for `figures.class_data_curves`."""
    best: dict[str, float] = {}
    for entry in estimates.values():
        for e in entry["classes"]:
            if e["curve"]:
                best[e["class"]] = max(best.get(e["class"], -1.0), e.get("gain") or 0.0)
    order = [c for c in best if c in sorted(best, key=lambda c: -best[c])[:limit]]  # class order, the top kept
    panels: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name in order:
        for variant, entry in estimates.items():
            e = next(e for e in entry["classes"] if e["class"] == name)
            panels.setdefault(name, {})[variant] = _segments(e)
    return panels
