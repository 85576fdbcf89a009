"""`imgclf predict` over many images: the inputs (files, folders, archives) listed by name first, with the
true class where folders name one, then read lazily in that order; a progress display; the tally of what
was right. Only names are held for all images; decoded pixels only for the batch in hand."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from imgclf.data.decode import printable_name
from imgclf.data.listing import archive_files, class_layout, image_names, is_archive
from imgclf.errors import UserError
from imgclf.evaluation.scores import class_report

PROGRESS_LINES = 10  # off a terminal, one progress line per tenth of the images


@dataclass
class Listing:
    """What `predict` was given, image by image. Each image has a name as results print it (a file as it was
    given, a folder's FOLDER/MEMBER, an archive's ARCHIVE:MEMBER); `labels` holds the true class of each name
    whose folder names one of the model's classes."""

    inputs: list[tuple[str, Path, list[str]]]  # (argument as given, its path, its members; [""] for a file)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(members) for _, _, members in self.inputs)

    def sources(self) -> Iterator[tuple[str, bytes | Path]]:
        """(name, file path or bytes) of every image in listed order, an archive read one member at a time."""
        for given, path, members in self.inputs:
            if is_archive(path):
                yield from ((_name(given, path, m), data) for m, data in archive_files(path))
            else:
                yield from ((_name(given, path, m), path / m if m else path) for m in members)


def _name(given: str, path: Path, member: str) -> str:
    if not member:
        return given
    return printable_name(f"{given}:{member}" if is_archive(path) else str(path / member))


def list_inputs(images: Sequence[str], classes: list[str], err: TextIO) -> Listing:
    """Each argument's images by name, and the true classes where a folder or archive is laid out as
    <class>/<image> (or train/val/test/<class>/<image>) with class names the model knows; a layout whose
    folder names are not the model's classes gets no labels and a note naming them."""
    listing = Listing([])
    known = set(classes)
    for image in images:
        path = Path(image).expanduser()
        if not (path.is_dir() or is_archive(path)):  # a file, or a missing one: named when it is read
            listing.inputs.append((image, path, [""]))
            continue
        members = image_names(path)
        listing.inputs.append((image, path, members))
        groups, _ = class_layout(members)
        named = {member: c for items in groups.values() for c, member in items}
        unknown = sorted(set(named.values()) - known)
        if unknown:
            print(f"imgclf: note: {image}: folder name(s) {', '.join(map(repr, unknown[:3]))} are not the model's "
                  "classes; no true labels taken from it", file=err)
        else:
            listing.labels.update((_name(image, path, m), c) for m, c in named.items())
    if not listing.total:
        raise UserError(f"no images in {', '.join(images)}")
    return listing


class Progress:
    """Images done, on `stream`: a tqdm bar on a terminal; elsewhere (a log, CI) a line at each tenth."""

    def __init__(self, total: int, stream: TextIO, enabled: bool = True) -> None:
        self.total, self.stream, self.enabled, self.done = total, stream, enabled, 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, unit="img", file=stream) if enabled and stream.isatty() else None

    def update(self, count: int = 1) -> None:
        before, self.done = self.done, self.done + count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and self.done * PROGRESS_LINES // self.total > before * PROGRESS_LINES // self.total:
            print(f"imgclf: {self.done}/{self.total} images ({self.rate():.0f} img/s)", file=self.stream, flush=True)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Tally:
    """Counts of a predict run, and the (true, predicted) class indices of the labelled images (two small
    ints an image) for the scores at the end; with a reject threshold, which answers were "I don't know"."""

    classes: list[str]
    reject_below: float | None = None
    images: int = 0
    rejected: int = 0
    unreadable: list[str] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    pred: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.classes)}

    def add(self, name: str, result: dict[str, Any] | str, true_label: str | None) -> None:
        self.images += 1
        if isinstance(result, str):
            self.unreadable.append(name)
            return
        self.rejected += result["label"] is None
        if true_label is not None:
            self.true.append(self.index[true_label])
            self.pred.append(self.index[result["top_k"][0]["label"]])
            self.kept.append(result["label"] is not None)

    def summary(self, seconds: float) -> dict[str, Any]:
        """Counts, speed, and where any image was labelled its accuracy, balanced accuracy and macro-F1; with a
        reject threshold, the share answered (coverage) and these scores on the answered images, beside the
        accuracy had every image been answered."""
        predicted = self.images - len(self.unreadable)
        out: dict[str, Any] = {"images": self.images, "predicted": predicted,
                               "unreadable": len(self.unreadable), "labelled": len(self.true),
                               "seconds": round(seconds, 2), "images_per_second": round(self.images / seconds, 1)}
        if self.reject_below is not None:
            out.update(reject_below=round(self.reject_below, 6), rejected=self.rejected,
                       coverage=(predicted - self.rejected) / predicted if predicted else None)
        kept = np.asarray(self.kept, dtype=bool)
        if self.true and self.reject_below is not None:
            out.update(accuracy_without_reject=float((np.asarray(self.true) == np.asarray(self.pred)).mean()),
                       labelled_kept=int(kept.sum()))
        if kept.any():
            true, pred = np.asarray(self.true)[kept], np.asarray(self.pred)[kept]
            report = class_report(true, pred, self.classes)
            out.update(accuracy=float((true == pred).mean()), balanced_accuracy=report["balanced_accuracy"],
                       macro_f1=report["macro_f1"])
        return out


def score_line(summary: dict[str, Any]) -> str | None:
    """The summary in one line for stderr, where there is a score to give."""
    if "accuracy" not in summary:
        return None
    on = f"{summary['labelled']} labelled images"
    if "labelled_kept" in summary:
        on = (f"the {summary['labelled_kept']} of {on} answered ({summary['labelled_kept'] / summary['labelled']:.1%}; "
              f"{summary['accuracy_without_reject']:.2%} answering all)")
    return (f"imgclf: accuracy {summary['accuracy']:.2%} on {on} (balanced accuracy "
            f"{summary['balanced_accuracy']:.2%}, macro-F1 {summary['macro_f1']:.3f})")
