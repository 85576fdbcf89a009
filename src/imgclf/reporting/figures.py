"""Matplotlib figures for reports, in one style: train is always blue, validation orange, errors red.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas attached (no pyplot, no global
backend switch), so nothing here touches pyplot state or needs a display, and reports can be written
from any thread or server. Every builder returns a Figure; `save` writes it as PNG.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib
import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter

TRAIN = "#3563a8"
VAL = "#e07b39"
TEST = "#2a9d8f"
GOOD = "#2e8b57"
BAD = "#c0392b"
MUTED = "#8c8c8c"
# Comparison runs, in order; the first two echo TRAIN/VAL so "scratch vs finetune" reads naturally.
PALETTE = ["#3563a8", "#e07b39", "#2a9d8f", "#8e5ea2", "#c0392b", "#b8860b", "#4d4d4d", "#d16ba5", "#5f9e4f"]
DPI = 110

STYLE: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": "#444444",
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
    "font.family": "DejaVu Sans",
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}

P = ParamSpec("P")
R = TypeVar("R")


def styled(builder: Callable[P, R]) -> Callable[P, R]:
    """Build the figure inside the shared rc style (rc values are read when artists are created)."""

    @functools.wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with rc_context(STYLE):
            return builder(*args, **kwargs)

    return wrapper


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG (white background, tight box) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(STYLE):
        fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def new_figure(**kwargs: Any) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _percent_axis(ax: Any, axis: str = "y") -> None:
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _col(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r.get(key, np.nan)) for r in history], dtype=float)


# -- a single run ------------------------------------------------------------------------------------------

@styled
def learning_curves(history: Sequence[Mapping[str, Any]], *, best_epoch: int | None = None,
                    turn_epoch: int | None = None, label_smoothing: float = 0.0) -> Figure:
    """Loss and accuracy per epoch, train vs val; the gap shaded, the best epoch and the val-loss turn marked."""
    epochs = _col(history, "epoch")
    fig = new_figure(figsize=(11, 4.0))
    ax_loss, ax_acc = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None
    ax_loss.plot(epochs, _col(history, "train_loss"), color=TRAIN, marker=marker, ms=4, label="train")
    ax_loss.plot(epochs, _col(history, "val_loss"), color=VAL, marker=marker, ms=4, label="validation")
    ax_loss.set_title("Loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    if label_smoothing:
        ax_loss.set_title(f"Loss (train includes label smoothing {label_smoothing:g})")

    train_acc, val_acc = _col(history, "train_acc"), _col(history, "val_acc")
    ax_acc.fill_between(epochs, train_acc, val_acc, where=train_acc >= val_acc, color=BAD, alpha=0.10, lw=0,
                        label="gap (train above val)", interpolate=True)
    ax_acc.plot(epochs, train_acc, color=TRAIN, marker=marker, ms=4, label="train")
    ax_acc.plot(epochs, val_acc, color=VAL, marker=marker, ms=4, label="validation")
    if best_epoch is not None and best_epoch in set(epochs.astype(int).tolist()):
        i = int(np.where(epochs.astype(int) == best_epoch)[0][0])
        ax_acc.plot([best_epoch], [val_acc[i]], marker="*", ms=15, color=VAL, mec="black", mew=0.8, ls="none",
                    label=f"best val ({100 * val_acc[i]:.1f}%, epoch {best_epoch})")
    ax_acc.set_title("Accuracy")
    ax_acc.set_xlabel("epoch")
    _percent_axis(ax_acc)
    if turn_epoch is not None:
        for ax in (ax_loss, ax_acc):
            ax.axvspan(turn_epoch, epochs.max(), color=BAD, alpha=0.06, lw=0)
            ax.axvline(turn_epoch, color=BAD, ls="--", lw=1.2)
        ax_loss.text(turn_epoch, ax_loss.get_ylim()[1], " val loss turns up", color=BAD, fontsize=9, va="top")
    for ax in (ax_loss, ax_acc):
        if len(epochs) and epochs.max() <= 20:
            ax.set_xticks(np.arange(1, int(epochs.max()) + 1, max(1, int(epochs.max()) // 10)))
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


@styled
def lr_schedule(steps: Sequence[float], lrs: Sequence[float], steps_per_epoch: float | None = None,
                xlabel: str = "optimizer step") -> Figure:
    """The learning rate at every optimizer step (what the schedule actually did), epochs marked."""
    fig = new_figure(figsize=(11, 2.8))
    ax = fig.subplots()
    ax.plot(steps, lrs, color=TEST, lw=1.8)
    ax.fill_between(steps, lrs, color=TEST, alpha=0.12, lw=0)
    ax.set_title("Learning-rate schedule")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    if steps_per_epoch and len(steps) and steps[-1] / steps_per_epoch <= 40:
        for e in np.arange(steps_per_epoch, steps[-1], steps_per_epoch):
            ax.axvline(e, color=MUTED, lw=0.6, alpha=0.5)
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def confusion_matrix(confusion: np.ndarray, classes: Sequence[str]) -> Figure:
    """Row-normalized confusion matrix: each row says where that true class's images went."""
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    side = min(12.0, max(4.5, 0.55 * k + 2.5))
    fig = new_figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    ax.grid(False)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_title("Confusion matrix (each row sums to 100%)")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 40:
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=45, ha="right")
        ax.set_yticks(range(k), [str(c) for c in classes])
    if k <= 20:
        for i in range(k):
            for j in range(k):
                value = norm[i, j]
                if round(100 * value) == 0 and i != j:
                    continue
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8.5 if k <= 12 else 7,
                        color="white" if value > 0.55 else ("#222222" if i == j else BAD))
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    fig.tight_layout()
    return fig


@styled
def per_class_scores(classes: Sequence[str], precision: Sequence[float], recall: Sequence[float],
                     f1: Sequence[float]) -> Figure:
    """F1 per class, worst first, with precision and recall as markers: which classes need attention."""
    order = np.argsort(np.asarray(f1))
    k = len(classes)
    fig = new_figure(figsize=(8, max(2.5, 0.32 * k + 1.2)))
    ax = fig.subplots()
    y = np.arange(k)
    ax.barh(y, np.asarray(f1)[order], color=TRAIN, alpha=0.35, label="F1", height=0.7)
    ax.plot(np.asarray(precision)[order], y, "o", color=TEST, ms=6, label="precision")
    ax.plot(np.asarray(recall)[order], y, "D", color=VAL, ms=5, label="recall")
    ax.set_yticks(y, [str(classes[i]) for i in order] if k <= 60 else [""] * k)
    ax.set_xlim(0, 1.04)
    _percent_axis(ax, "x")
    ax.set_title("Per-class scores (worst F1 at the top)")
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=3)
    fig.tight_layout()
    return fig


@styled
def precision_recall_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]],
                            points: Mapping[str, tuple[float, float]], split: str) -> Figure:
    """Multi-label: each class's precision against recall as its threshold sweeps (`curves`: class -> (recall,
    precision, AP)), the operating point its chosen threshold gives marked (`points`: class -> (recall,
    precision)); a small panel a class, so many classes stay readable."""
    names = list(curves)
    cols = min(4, max(1, len(names)))
    rows = math.ceil(len(names) / cols)
    fig = new_figure(figsize=(2.6 * cols + 0.6, 2.5 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        recall, precision, ap = curves[name]
        ax.step(recall, precision, where="post", color=TRAIN)
        if name in points:
            ax.plot(*points[name], "o", color=VAL, ms=6)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.04)
        ax.set_title(f"{name} (AP {ap:.2f})" if ap is not None else f"{name} (no positive)", fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.suptitle(f"Precision-recall per class ({split} split); the dot is the chosen threshold", fontsize=11,
                 x=0.02, ha="left", fontweight="bold")
    fig.tight_layout()
    return fig


@styled
def top_losses(images: Sequence[np.ndarray], titles: Sequence[tuple[str, str, float, float]],
               cols: int = 6, title: str = "Highest-loss test images") -> Figure:
    """A grid of images, each titled 'true / predicted (confidence)'; wrong predictions in red.

    `titles[i]` is (true name, predicted name, predicted-class probability, loss).
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = new_figure(figsize=(1.9 * cols, 2.45 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, (true, pred, prob, loss) in zip(axes, images, titles, strict=False):
        ax.imshow(image, interpolation="nearest" if image.shape[0] <= 64 else "antialiased")
        wrong = true != pred
        ax.set_title(f"true: {true}\npred: {pred} ({100 * prob:.0f}%)\nloss {loss:.2f}", fontsize=8.5,
                     color=BAD if wrong else "#222222", loc="center", fontweight="normal")
    fig.suptitle(title, x=0.01, ha="left", fontweight="bold", fontsize=12)
    return fig


@styled
def reliability_diagram(edges: Sequence[float], confidence: Sequence[float], accuracy: Sequence[float],
                        counts: Sequence[int], ece: float, ece_after: float | None = None,
                        temperature: float | None = None) -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration; counts underneath."""
    edges = np.asarray(edges)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.nan_to_num(np.asarray(accuracy, dtype=float))
    conf = np.asarray(confidence, dtype=float)
    counts = np.asarray(counts)
    filled = counts > 0
    fig = new_figure(figsize=(6.2, 6.0))
    ax, ax_hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.bar(centers[filled], acc[filled], width=width * 0.92, color=TRAIN, alpha=0.85, label="accuracy in bin")
    gap_bottom = np.minimum(acc, conf)[filled]
    gap_height = np.abs(conf - acc)[filled]
    ax.bar(centers[filled], gap_height, bottom=gap_bottom, width=width * 0.92, fill=False, hatch="///",
           edgecolor=BAD, lw=0.8, label="gap to the bin's mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="#444444", lw=1.2, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    _percent_axis(ax)
    title = f"Reliability diagram (ECE {100 * ece:.1f} pts"
    if ece_after is not None and temperature is not None:
        title += f"; {100 * ece_after:.1f} after T={temperature:.2f}"
    ax.set_title(title + ")")
    ax.legend(loc="upper left")
    share = counts / max(counts.sum(), 1)
    ax_hist.bar(centers, share, width=width * 0.92, color=MUTED)
    ax_hist.set_ylabel("share of\nimages")
    ax_hist.set_xlabel("confidence of the predicted class")
    _percent_axis(ax_hist)
    _percent_axis(ax_hist, "x")
    fig.tight_layout()
    return fig


@styled
def coverage_accuracy(coverage: Sequence[float], accuracy: Sequence[float], split: str,
                      marks: Sequence[tuple[float, float, str]] = (), val_curve: tuple[Sequence[float],
                                                                                   Sequence[float]] | None = None
                      ) -> Figure:
    """Selective prediction: accuracy on the images answered against the share answered, as the threshold on
    the top probability rises from right (answer all) to left; `marks` are (coverage, accuracy, label) of
    chosen thresholds, `val_curve` the validation split's curve they were chosen on."""
    fig = new_figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    if val_curve is not None:
        ax.plot(val_curve[0], val_curve[1], color=VAL, lw=1.4, alpha=0.8, label="validation (thresholds chosen here)")
    ax.plot(coverage, accuracy, color=TEST, label=f"{split} split")
    for i, (cov, acc, label) in enumerate(marks):
        ax.plot([cov], [acc], "o", color=PALETTE[(i + 3) % len(PALETTE)], ms=7, label=label)
    ax.set_xlim(0, 1.01)
    lowest = min([float(np.nanmin(accuracy))] + [a for _, a, _ in marks if np.isfinite(a)])
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.set_xlabel("coverage: share of images answered")
    ax.set_ylabel("accuracy on the images answered")
    _percent_axis(ax)
    _percent_axis(ax, "x")
    ax.set_title("Coverage against accuracy (reject option)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


@styled
def lr_finder(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggested: float,
              min_loss_lr: float | None = None, diverged_at: float | None = None) -> Figure:
    """Loss against learning rate (log scale): raw and smoothed, the suggestion and the minimum marked."""
    lrs_a, smooth_a = np.asarray(lrs), np.asarray(smoothed)
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(lrs_a, losses, color=MUTED, lw=1, alpha=0.6, label="loss per batch")
    ax.plot(lrs_a, smooth_a, color=TRAIN, lw=2.2, label="smoothed loss")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    finite = smooth_a[np.isfinite(smooth_a)]
    if finite.size:
        low, start = float(finite.min()), float(finite[: max(1, len(finite) // 10)].mean())
        top = max(start, low) + 0.6 * abs(start - low) + 0.1
        ax.set_ylim(low - 0.1 * abs(start - low) - 0.05, top)
    y_at = float(np.interp(np.log(suggested), np.log(lrs_a), smooth_a)) if len(lrs_a) else 0.0
    ax.axvline(suggested, color=GOOD, ls="--", lw=1.4)
    ax.plot([suggested], [y_at], "o", color=GOOD, ms=9, label=f"suggested lr {suggested:.2g}")
    if min_loss_lr is not None:
        ax.axvline(min_loss_lr, color=VAL, ls=":", lw=1.4, label=f"lowest loss at {min_loss_lr:.2g}")
    if diverged_at is not None:
        ax.axvspan(diverged_at, lrs_a.max() * 1.5, color=BAD, alpha=0.07, lw=0)
        ax.text(diverged_at, ax.get_ylim()[1], " diverged", color=BAD, va="top", fontsize=9)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


# -- comparisons -------------------------------------------------------------------------------------------

def _colors(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


@styled
def accuracy_bars(names: Sequence[str], test: Sequence[float | None], val: Sequence[float | None],
                  split_name: str = "test") -> Figure:
    """Final accuracy per run (the evaluation split solid, validation lighter), values printed on the bars."""
    n = len(names)
    fig = new_figure(figsize=(max(6.0, 1.1 * n + 3), 4.2))
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.38
    t = np.array([np.nan if v is None else v for v in test], dtype=float)
    v = np.array([np.nan if a is None else a for a in val], dtype=float)
    colors = _colors(n)
    bars = ax.bar(x - w / 2, np.nan_to_num(t), w, color=colors, label=split_name)
    ax.bar(x + w / 2, np.nan_to_num(v), w, color=colors, alpha=0.40, label="validation")
    for rect, value in zip(bars, t, strict=True):
        if np.isfinite(value):
            ax.text(rect.get_x() + rect.get_width() / 2, value + 0.01, f"{100 * value:.1f}%", ha="center",
                    va="bottom", fontsize=9, fontweight="bold")
    ax.set_xticks(x, names, rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylim(0, min(1.08, max(0.2, np.nanmax(np.concatenate([t, v, [0.0]])) + 0.12)))
    _percent_axis(ax)
    ax.set_title(f"Accuracy per run ({split_name} solid, validation light)")
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


@styled
def time_bars(names: Sequence[str], seconds: Sequence[float], images_per_second: Sequence[float | None]) -> Figure:
    """Training seconds per run, throughput printed on each bar: the cost side of the comparison."""
    n = len(names)
    fig = new_figure(figsize=(max(6.0, 1.1 * n + 3), 3.6))
    ax = fig.subplots()
    x = np.arange(n)
    bars = ax.bar(x, seconds, 0.6, color=_colors(n))
    top = max(seconds) if len(seconds) else 1.0
    for rect, secs, ips in zip(bars, seconds, images_per_second, strict=True):
        label = f"{secs:.0f} s" if secs >= 10 else f"{secs:.1f} s"
        if ips:
            label += f"\n{ips:,.0f} img/s"
        ax.text(rect.get_x() + rect.get_width() / 2, secs + 0.02 * top, label, ha="center", va="bottom", fontsize=8.5)
    ax.set_xticks(x, names, rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylim(0, top * 1.3 + 1e-9)
    ax.set_ylabel("training seconds")
    ax.set_title("Training time per run")
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


@styled
def overlaid_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], x: str = "epoch") -> Figure:
    """Every run's accuracy (val solid, train dashed) and validation loss on shared axes."""
    fig = new_figure(figsize=(11, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)
    xlabel = "training seconds" if x == "seconds" else "epoch"
    for color, (name, history) in zip(_colors(len(histories)), histories.items(), strict=True):
        xs = _col(history, x)
        ax_acc.plot(xs, _col(history, "val_acc"), color=color, label=name)
        ax_acc.plot(xs, _col(history, "train_acc"), color=color, ls="--", lw=1.2, alpha=0.8)
        ax_loss.plot(xs, _col(history, "val_loss"), color=color, label=name)
    ax_acc.set_title("Accuracy (validation solid, train dashed)")
    _percent_axis(ax_acc)
    ax_loss.set_title("Validation loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel(xlabel)
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    return fig


@styled
def fraction_curve(series: Mapping[str, Sequence[tuple[float, float]]], split_name: str = "test") -> Figure:
    """Accuracy against the share of training data used (log x): the data-efficiency curve."""
    fig = new_figure(figsize=(7.5, 4.3))
    ax = fig.subplots()
    for color, (name, points) in zip(_colors(len(series)), series.items(), strict=True):
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=7, color=color, label=name)
        for frac, acc in pts:
            ax.annotate(f"{100 * acc:.0f}%", (frac, acc), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=8.5, color=color)
    ax.set_xscale("log")
    ticks = sorted({p[0] for points in series.values() for p in points})
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("share of the training set used (log scale)")
    ax.set_ylabel(f"{split_name} accuracy")
    _percent_axis(ax)
    ax.set_title("Data efficiency")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


@styled
def class_data_curves(panels: Mapping[str, Mapping[str, tuple[Any, ...]]], split_name: str = "test") -> Figure:
    """One small panel per class: its accuracy against its own training images (log x) per variant, the measured
    points joined by the fitted curve (dashed) and, dotted past them, the estimate out to twice the images.
    A panel's value: (points, x within, y within, x past, y past), the curve arrays empty where none fits."""
    names = list(panels)
    cols = min(4, max(len(names), 1))
    rows = math.ceil(len(names) / cols) if names else 1
    fig = new_figure(figsize=(3.0 * cols, 2.5 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    variants = list(dict.fromkeys(v for panel in panels.values() for v in panel))
    colors = dict(zip(variants, _colors(len(variants)), strict=True))
    for ax, name in zip(axes, names, strict=False):
        for variant, (points, x_in, y_in, x_past, y_past) in panels[name].items():
            color = colors[variant]
            ax.plot([p[0] for p in points], [p[1] for p in points], ls="none", marker="o", ms=5, color=color,
                    label=f"{variant} (measured)")
            if len(x_in):
                ax.plot(x_in, y_in, ls="--", lw=1.3, color=color, label=f"{variant} (fitted)")
                ax.plot(x_past, y_past, ls=":", lw=1.8, color=color, label=f"{variant} (estimate)")
                ax.plot([x_past[-1]], [y_past[-1]], marker="D", ms=5, color=color, mfc="white", mew=1.4)
        ax.set_xscale("log")
        sizes = {p[0] for points, *_, x_past, _ in panels[name].values() for p in points}
        sizes |= {x_past[-1] for *_, x_past, _ in panels[name].values() if len(x_past)}
        ax.set_xticks(sorted(sizes))  # the measured sizes and twice the largest: the few x values that matter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.05)
        _percent_axis(ax)
        ax.set_title(str(name), fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if names:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8.5)
    fig.suptitle(f"What more data buys, per class ({split_name} accuracy against the class's training images; "
                 "past the points: an estimate)", x=0.01, ha="left", fontsize=11, fontweight="bold")
    fig.tight_layout(rect=(0, 0.08 if rows == 1 else 0.05, 1, 0.95))
    return fig


@styled
def per_class_difference(classes: Sequence[str], diff: Sequence[float], better: str, worse: str) -> Figure:
    """Per-class accuracy of `better` minus `worse`, sorted: where the winner wins and where it loses."""
    d = np.asarray(diff, dtype=float)
    order = np.argsort(d)[::-1]
    k = len(classes)
    fig = new_figure(figsize=(8, max(2.5, 0.32 * k + 1.3)))
    ax = fig.subplots()
    y = np.arange(k)
    ax.barh(y, d[order], color=[GOOD if v >= 0 else BAD for v in d[order]], height=0.7)
    ax.axvline(0, color="#444444", lw=1)
    ax.set_yticks(y, [str(classes[i]) for i in order] if k <= 60 else [""] * k)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:+.0f}"))
    ax.set_xlabel(f"accuracy points: {better} minus {worse}")
    ax.set_title("Per-class accuracy difference")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


@styled
def gap_bars(names: Sequence[str], train: Sequence[float], val: Sequence[float],
             test: Sequence[float | None]) -> Figure:
    """Clean-train vs validation accuracy per variant with the gap written between: what each regularizer buys."""
    n = len(names)
    fig = new_figure(figsize=(max(7.0, 1.3 * n + 3), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(n)
    w = 0.27
    tr, va = np.asarray(train, dtype=float), np.asarray(val, dtype=float)
    te = np.array([np.nan if v is None else v for v in test], dtype=float)
    ax.bar(x - w, tr, w, color=TRAIN, label="train (clean images, eval mode)")
    ax.bar(x, va, w, color=VAL, label="validation")
    if np.isfinite(te).any():
        ax.bar(x + w, np.nan_to_num(te), w, color=TEST, label="test")
    for i in range(n):
        ax.annotate(f"gap {100 * (tr[i] - va[i]):.1f}", (x[i] - w / 2, max(tr[i], va[i]) + 0.02), ha="center",
                    fontsize=9, fontweight="bold", color=BAD if tr[i] - va[i] > 0.05 else "#222222")
    ax.set_xticks(x, names, rotation=15 if n > 5 else 0, ha="right" if n > 5 else "center")
    ax.set_ylim(0, 1.12)
    _percent_axis(ax)
    ax.set_title("Train/validation gap per variant")
    fig.legend(loc="outside lower center", ncols=3)
    ax.grid(axis="x", visible=False)
    return fig
