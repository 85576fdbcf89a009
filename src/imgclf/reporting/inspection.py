"""`imgclf inspect`'s report of what imgclf.commands.inspect found: DIR/inspection.json, and
DIR/inspection.html (self-contained) + inspection.md with figures under DIR/figures, in the run report's
look (`Document`, the shared figure style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from imgclf.evaluation.inspection import Scan, decode, public
from imgclf.fileio import write_json
from imgclf.reporting import figures as figs
from imgclf.reporting.document import Document

THUMB = 96  # thumbnail box in pixels
SAMPLES = 8  # thumbnails per class in the sample grid
GRID_CLASSES = 20  # classes shown in the sample grid
SHOWN_GROUPS = 12  # duplicate groups / near pairs shown as thumbnails (all are listed in the JSON)
SHOWN_SUSPECTS = 18
SPLIT_COLORS = {"train": figs.TRAIN, "val": figs.VAL, "test": figs.TEST, "all": figs.TRAIN}
KIND_WORDS = {"within_class": "within a class", "across_classes": "across classes (label conflict)",
              "across_splits": "across splits (leakage)"}

Cell = tuple[np.ndarray, str, bool]  # image, caption, drawn in red


def thumbnail(scan: Scan, i: int) -> np.ndarray:
    image = Image.fromarray(decode(scan.sources[i], THUMB))
    image.thumbnail((THUMB, THUMB))
    return np.asarray(image)


@figs.styled
def image_rows(rows: Sequence[tuple[str, Sequence[Cell]]], title: str) -> Figure:
    """One row of captioned thumbnails per entry, labelled on the left; red captions mark a problem."""
    cols = max(1, max(len(cells) for _, cells in rows))
    fig = figs.new_figure(figsize=(1.55 * cols + 1.2, 1.85 * len(rows) + 0.4), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for (label, cells), line in zip(rows, axes, strict=True):
        for ax in line:
            ax.axis("off")
        line[0].text(-0.08, 0.5, label, transform=line[0].transAxes, ha="right", va="center", fontsize=9,
                     fontweight="bold")
        for ax, (image, caption, bad) in zip(line, cells, strict=False):
            ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) <= 64 else "antialiased")
            ax.set_title(caption, fontsize=7.5, color=figs.BAD if bad else "#222222", loc="center",
                         fontweight="normal")
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=12)
    return fig


@figs.styled
def class_counts(counts: dict[str, dict[str, int]], splits: list[str]) -> Figure:
    """Images per class, one bar per split, so an imbalance or a thin test class shows at a glance."""
    classes = list(counts)
    k = len(classes)
    fig = figs.new_figure(figsize=(8, max(2.5, 0.3 * k * max(1, len(splits)) / 1.5 + 1.2)))
    ax = fig.subplots()
    height = 0.8 / len(splits)
    y = np.arange(k)
    for s, split in enumerate(splits):
        ax.barh(y + s * height, [counts[c][split] for c in classes], height=height, label=split,
                color=SPLIT_COLORS.get(split, figs.MUTED))
    ax.set_yticks(y + 0.4 - height / 2, classes if k <= 60 else [""] * k)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("images")
    ax.set_title("Images per class and split")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the bars, never over one
    fig.tight_layout()
    return fig


@figs.styled
def size_spread(sizes: np.ndarray) -> Figure:
    """Width against height, and the aspect ratios: how much a model's square input will crop or pad."""
    fig = figs.new_figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    left.scatter(sizes[:, 0], sizes[:, 1], s=8, alpha=0.35, color=figs.TRAIN, linewidths=0)
    left.set_xlabel("width (px)")
    left.set_ylabel("height (px)")
    left.set_title("Image sizes")
    right.hist(sizes[:, 0] / sizes[:, 1], bins=40, color=figs.TRAIN, alpha=0.8)
    right.axvline(1.0, color=figs.MUTED, ls="--", lw=1)
    right.set_xlabel("aspect ratio (width / height)")
    right.set_ylabel("images")
    right.set_title("Aspect ratios")
    fig.tight_layout()
    return fig


def _where(scan: Scan, i: int) -> str:
    return f"{scan.splits[i]}/{scan.classes[scan.labels[i]]}"


def write_inspection(result: dict[str, Any], scan: Scan, out: str | Path) -> Path:
    """Write DIR/inspection.json, inspection.md and inspection.html; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "inspection.json", public(result))
    name = Path(result["data"]).name or result["data"]
    splits = list(result["splits"])
    doc = Document(f"Dataset inspection: {name}", out,
                   f"{result['images']:,} readable images · {len(result['classes'])} classes · "
                   + (f"{len(scan.classes)} label sets (multi-label) · " if scan.multilabel else "") +
                   f"splits: {', '.join(splits)} · {result['seconds']:.1f} s")
    dup = result["duplicates"]
    exact, near = dup["exact"], dup["near"]
    cards = [("images", f"{result['images']:,}"), ("unreadable", str(result["unreadable"]["count"])),
             ("exact duplicate groups", str(exact["groups"])), ("near-duplicate pairs", str(near["pairs"])),
             ("leaking across splits", str(exact["across_splits"] + near["across_splits"]))]
    if result["label_issues"] is not None:
        cards.append(("suspected label errors", str(result["label_issues"]["count"])))
    doc.cards(cards)
    _verdict(doc, result)
    _counts_section(doc, result, scan, splits)
    _sizes_section(doc, result, scan)
    _unreadable_section(doc, result)
    _duplicates_section(doc, result, scan)
    if result["label_issues"] is not None:
        _label_section(doc, result["label_issues"], scan)
    return doc.write("inspection")


def _verdict(doc: Document, result: dict[str, Any]) -> None:
    exact, near = result["duplicates"]["exact"], result["duplicates"]["near"]
    problems = []
    if exact["across_splits"] or near["across_splits"]:
        problems.append(f"**Leakage:** {exact['across_splits']} exact and {near['across_splits']} near-duplicate "
                        "group(s)/pair(s) span two splits, so validation and test scores will be optimistic. "
                        "Remove the copies from val/test (or from train).")
    if exact["across_classes"] or near["across_classes"]:
        problems.append(f"**Label conflicts:** {exact['across_classes']} exact and {near['across_classes']} "
                        "near-duplicate group(s)/pair(s) carry two labels; at most one label can be right.")
    if result["unreadable"]["count"]:
        problems.append(f"**Unreadable:** {result['unreadable']['count']} file(s) are no readable image; "
                        "training skips them.")
    issues = result["label_issues"]
    if issues and issues["count"]:
        problems.append(f"**Suspected label errors:** {issues['count']} of {sum(issues['scored'].values()):,} "
                        "images scored out of sample look mislabelled; check them by eye.")
    if problems:
        doc.callout("\n".join(problems), "underfitting")
    else:
        doc.callout("No leakage, label conflict or unreadable file found.", "good")


def _counts_section(doc: Document, result: dict[str, Any], scan: Scan, splits: list[str]) -> None:
    counts = result["counts"]
    doc.heading("Images per class")
    rows = [[c, *(counts[c][s] for s in splits), sum(counts[c].values())] for c in counts]
    totals = [sum(counts[c][s] for c in counts) for s in splits]
    doc.table(["class", *splits, "total"], rows + [["**total**", *totals, sum(totals)]],
              numeric=set(range(1, len(splits) + 2)))
    per_class = [sum(v.values()) for v in counts.values()]
    if min(per_class) and max(per_class) / min(per_class) >= 2:
        doc.paragraph(f"The classes are imbalanced: the largest holds {max(per_class) / min(per_class):.1f}x "
                      "the images of the smallest.")
    doc.figure("class_counts", class_counts(counts, splits), "Images per class, one bar per split.")
    first = splits[0]
    in_first = np.asarray(scan.splits) == first
    rows_of_cells = []
    for label, cls in enumerate(scan.classes[:GRID_CLASSES]):
        index = np.flatnonzero(in_first & (scan.labels == label))[:SAMPLES]
        rows_of_cells.append((cls, [(thumbnail(scan, int(i)), "", False) for i in index]))
    more = f" (the first {GRID_CLASSES} of {len(scan.classes)} classes)" if len(scan.classes) > GRID_CLASSES else ""
    doc.figure("samples", image_rows(rows_of_cells, "Samples per class"),
               f"The first {SAMPLES} {first} images of each class{more}: a wrong folder or a class of blank "
               "images shows here.")


def _sizes_section(doc: Document, result: dict[str, Any], scan: Scan) -> None:
    sizes = result["sizes"]
    doc.heading("Image sizes")
    if sizes["distinct"] == 1:
        w, h = scan.sizes[0]
        doc.paragraph(f"Every image is {w}x{h} pixels.")
        return
    doc.table(["", "min", "median", "max"],
              [[key, *(f"{sizes[key][s]:.3g}" for s in ("min", "median", "max"))]
               for key in ("width", "height", "aspect")], numeric={1, 2, 3})
    doc.paragraph(f"{sizes['distinct']:,} distinct sizes; {100 * sizes['square_share']:.0f}% of the images are "
                  "square. Photos are cropped to the model's square input (`--resize crop`); wide aspect ratios "
                  "lose their sides, where `--resize pad` keeps the whole photo.")
    doc.figure("sizes", size_spread(scan.sizes), "Left: each image's width and height. Right: aspect ratios "
               "(1 is square; the dashed line).")


def _unreadable_section(doc: Document, result: dict[str, Any]) -> None:
    files = result["unreadable"]["files"]
    if files:
        doc.heading("Unreadable files")
        doc.paragraph(f"{len(files)} file(s) are not readable images; training skips them:")
        doc.bullets([f"`{f}`" for f in files[:50]] + ([f"and {len(files) - 50} more (inspection.json lists all)"]
                                                      if len(files) > 50 else []))


def _severity(kinds: list[str]) -> int:
    """Sort key: label conflicts first, then leakage."""
    return -2 * ("across_classes" in kinds) - ("across_splits" in kinds)


def _duplicates_section(doc: Document, result: dict[str, Any], scan: Scan) -> None:
    exact, near = result["duplicates"]["exact"], result["duplicates"]["near"]
    doc.heading("Duplicates")
    doc.table(["", "groups / pairs", KIND_WORDS["within_class"], KIND_WORDS["across_classes"],
               KIND_WORDS["across_splits"]],
              [["exact (identical pixels)", exact["groups"], exact["within_class"], exact["across_classes"],
                exact["across_splits"]],
               [f"near (hash within {near['max_distance']} bits, thumbnails correlate ≥ {near['min_correlation']})",
                near["pairs"], near["within_class"],
                near["across_classes"], near["across_splits"]]], numeric={1, 2, 3, 4})
    doc.paragraph(f"Exact: {exact['groups']} group(s) of identical images, {exact['extra_copies']} extra copies. "
                  f"Near: {near['pairs']} pair(s) of distinct images whose perceptual hashes differ in at most "
                  f"{near['max_distance']} of 64 bits and whose grey thumbnails correlate at "
                  f"{near['min_correlation']} or more (resized, re-encoded or lightly edited copies), in "
                  f"{near['groups']} connected group(s); `--max-distance` widens or narrows the search. Within one "
                  "folder that `imgclf train` splits, a duplicate lands on both sides of its validation split "
                  "about as often as the validation fraction.")
    groups = sorted(zip(result["duplicates"]["_exact_groups"], (g["kinds"] for g in exact["list"]), strict=True),
                    key=lambda t: _severity(t[1]))[:SHOWN_GROUPS]
    if groups:
        rows = [(f"{i + 1}", [(thumbnail(scan, m), _where(scan, m), kinds != ["within_class"]) for m in g[:6]])
                for i, (g, kinds) in enumerate(groups)]
        doc.figure("exact_duplicates", image_rows(rows, "Exact duplicates"),
                   "One row per group of identical images (leakage and label conflicts first, in red), captioned "
                   "split/class; inspection.json names every file.")
    pairs = sorted(zip(result["duplicates"]["_near_pairs"].tolist(), near["list"], strict=True),
                   key=lambda t: (_severity(t[1]["kinds"]), t[1]["correlation"]))[:SHOWN_GROUPS]
    if pairs:
        cells = []
        for (a, b, d), row in pairs:
            bad = row["kinds"] != ["within_class"]
            cells += [(thumbnail(scan, a), f"{_where(scan, a)}\n{d} bits, r {row['correlation']:.2f}", bad),
                      (thumbnail(scan, b), _where(scan, b), bad)]
        rows = [("", cells[r:r + 4]) for r in range(0, len(cells), 4)]
        doc.figure("near_duplicates", image_rows(rows, "Near duplicates"),
                   "Pairs side by side, each with how many hash bits differ and the correlation r of the "
                   "thumbnails; label conflicts and leakage first (in red), then the least similar, so that the "
                   "threshold can be judged by eye.")


def _label_section(doc: Document, issues: dict[str, Any], scan: Scan) -> None:
    doc.heading("Suspected label errors")
    scored = ", ".join(f"{n:,} {s}" for s, n in issues["scored"].items())
    carved = (" (the validation images the run carved from its training folder, with its seed and fraction)"
              if issues["val_carved"] else "")
    doc.paragraph(f"`{issues['checkpoint']}` scored the images it did not train on: {scored}{carved}; its accuracy "
                  f"on them is {100 * (issues['accuracy'] or 0):.1f}%. Confident learning: a class's threshold is "
                  "the mean probability the model gives it on the images labelled with it; an image is suspect "
                  "when the likeliest class whose threshold it clears is not its label. "
                  f"**{issues['count']}** suspect(s), least self-confident first.")
    shown = issues["_index"][:SHOWN_SUSPECTS]
    if len(shown):
        cells = [(thumbnail(scan, int(i)), f"given: {row['class']}\nlikely: {row['likely']} "
                  f"({100 * row['likely_probability']:.0f}%)", True) for i, row in zip(shown, issues["list"],
                                                                                   strict=False)]
        cols = 6
        rows = [("", cells[r * cols:(r + 1) * cols]) for r in range(math.ceil(len(cells) / cols))]
        doc.figure("label_issues", image_rows(rows, "Suspected label errors"),
                   "Given label, and the class the model finds likelier with its probability.")
        doc.table(["file", "given", "likely", "p(given)", "p(likely)"],
                  [[f"`{r['name']}`", r["class"], r["likely"], f"{r['given_probability']:.2f}",
                    f"{r['likely_probability']:.2f}"] for r in issues["list"][:30]], numeric={3, 4})
