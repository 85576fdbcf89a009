"""Labels from a CSV (`--data labels.csv`): columns file,label[,split], files relative to the CSV's folder.

The rows stand for the folder listing they describe ({split: [(class, file)]}); data/sources.py decodes and
caches them like a folder, so splits, skipped files and dropped classes behave the same. A row that cannot
be used (a missing file, an empty label, an unknown split) is refused with its row number, as a spreadsheet
counts them (the header is row 1).

Multi-label: a label cell holding several names separated by `;` (`cat;dog`), or no label column and one 0/1
column per class (file,cat,dog[,split]), makes the listing multi-label. Each row's label is then its names
joined by LABEL_SEPARATOR ("" for none, which only the column form can say), and the data layer turns them
into multi-hot rows (`multi_hot`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path, PurePath

import numpy as np

from imgclf.data.decode import CACHE_VERSION
from imgclf.data.listing import SPLIT_NAMES
from imgclf.errors import UserError

COLUMNS = ("file", "label")  # required; `split` is optional, and other columns (notes, sources) are ignored
LABEL_SEPARATOR = ";"  # several labels in one cell: a multi-label CSV
TRUE_FALSE = {"1": True, "0": False}  # the cells of a column-per-class CSV


def label_names(label: str) -> list[str]:
    """The class names of one multi-label row's label (LABEL_SEPARATOR-joined; "" holds none)."""
    return [name for name in label.split(LABEL_SEPARATOR) if name]


def multi_hot(labels: list[str], classes: list[str]) -> np.ndarray:
    """float32 (N, C): row i is 1 at each class named in labels[i] (joined names, see `label_names`)."""
    index = {c: i for i, c in enumerate(classes)}
    hot = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, label in enumerate(labels):
        hot[row, [index[name] for name in label_names(label)]] = 1.0
    return hot


class CsvListing:
    """A labels CSV read and checked: `layout()` gives {split: [(label, file)]} like a folder's listing,
    `read(file)` the image's path. A row without a split (no column, or an empty cell) is a training row;
    without val rows, val is carved from train by the seeded per-class split, as for a plain folder.
    `multilabel`: the rows name several labels each (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups, self.stamps, self.multilabel = _read_rows(path)

    def read(self, member: str) -> Path:
        return self.path.parent / member

    def layout(self) -> dict[str, list[tuple[str, str]]]:
        return self.groups

    def fingerprint(self, image_size: int | None) -> str:
        """Cache key: the CSV's bytes and every listed file's size and mtime (a changed image is re-read)."""
        kind = "csv-multilabel" if self.multilabel else "csv"
        h = hashlib.sha256(os.fsencode(f"{CACHE_VERSION}|{kind}|{self.path.resolve()}|{image_size}"))
        h.update(self.path.read_bytes())
        for member, (size, mtime) in sorted(self.stamps.items()):
            h.update(os.fsencode(f"{member}|{size}|{mtime}\n"))
        return h.hexdigest()[:24]


def _read_rows(path: Path) -> tuple[dict[str, list[tuple[str, str]]], dict[str, tuple[int, int]], bool]:
    """({split: [(label, file)]}, {file: (size, mtime_ns)}, multi-label?), every row checked; UTF-8 with or
    without a BOM (spreadsheets write one)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    stamps: dict[str, tuple[int, int]] = {}
    first_row: dict[str, int] = {}
    several = False  # a label cell named several classes
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            names = [name.strip() for name in next(reader, [])]
            header = [name.lower() for name in names]
            columns = _class_columns(path, names, header)
            where = {name: header.index(name) for name in (*COLUMNS, "split") if name in header}
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue  # a blank line, as spreadsheets leave at the end
                row = reader.line_num
                cell = {name: (cells[i].strip() if i < len(cells) else "") for name, i in where.items()}
                member, split = _checked(path, row, cell)
                label = _row_label(path, row, cells, columns) if columns else _cell_label(path, row, cell)
                several = several or LABEL_SEPARATOR in label
                if member in first_row:
                    raise UserError(f"{path} row {row}: {cell['file']} is listed twice (also row {first_row[member]})")
                first_row[member] = row
                target = path.parent / member
                if not target.is_file():
                    raise UserError(f"{path} row {row}: file not found: {cell['file']} (paths are relative to "
                                    f"{path.parent})")
                st = target.stat()
                stamps[member] = (st.st_size, st.st_mtime_ns)
                groups.setdefault(split, []).append((label, member))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path} row {reader.line_num}: not a readable CSV row ({exc})") from None
    if "train" not in groups:
        raise UserError(f"{path}: no training rows (each row needs a file and a label; split train, val, test "
                        "or empty)")
    if columns:
        used = {name for items in groups.values() for label, _ in items for name in label_names(label)}
        unused = [name for _, name in columns if name not in used]
        if unused:
            raise UserError(f"{path}: class column(s) {', '.join(map(repr, unused[:3]))} hold no 1 (a class needs "
                            "at least one image)")
    return groups, stamps, several or bool(columns)


def _class_columns(path: Path, names: list[str], header: list[str]) -> list[tuple[int, str]]:
    """The (index, class name) of each 0/1 column of a column-per-class CSV (no label column); [] where
    there is a label column. A header without file, or with neither a label column nor two class columns,
    is refused."""
    if "file" in header and "label" in header:
        return []
    columns = [(i, name) for i, (name, key) in enumerate(zip(names, header, strict=True))
               if key not in ("file", "split")]
    if "file" not in header or len(columns) < 2:
        missing = [name for name in COLUMNS if name not in header]
        raise UserError(f"{path} row 1: missing column(s) {', '.join(missing)}; the header must name "
                        f"file,label and optionally split, or file and one 0/1 column per class (found: "
                        f"{','.join(header) or 'nothing'})")
    repeated = sorted({name for _, name in columns if sum(n == name for _, n in columns) > 1})
    if repeated or any(not name for _, name in columns):
        raise UserError(f"{path} row 1: class columns need distinct, non-empty names (found: {','.join(names)})")
    return columns


def _row_label(path: Path, row: int, cells: list[str], columns: list[tuple[int, str]]) -> str:
    """A column-per-class row's classes, joined: every column must hold 0 or 1 (none at all is allowed)."""
    chosen = []
    for i, name in columns:
        value = cells[i].strip() if i < len(cells) else ""
        if value not in TRUE_FALSE:
            raise UserError(f"{path} row {row}: column {name!r} must hold 0 or 1, got {value!r}")
        if TRUE_FALSE[value]:
            chosen.append(name)
    return LABEL_SEPARATOR.join(sorted(chosen))


def _cell_label(path: Path, row: int, cell: dict[str, str]) -> str:
    """A label cell as the listing keeps it: one name as it is, several (`a;b`) stripped, sorted and joined."""
    label = cell["label"]
    if LABEL_SEPARATOR in label:
        label = LABEL_SEPARATOR.join(sorted({name.strip() for name in label.split(LABEL_SEPARATOR)} - {""}))
    if not label:
        raise UserError(f"{path} row {row}: empty label for {cell['file']}")
    return label


def _checked(path: Path, row: int, cell: dict[str, str]) -> tuple[str, str]:
    """(the file as a normalised relative name, the split) of one row, or a UserError naming the row."""
    if not cell["file"]:
        raise UserError(f"{path} row {row}: empty file name")
    split = cell.get("split", "").lower()
    if split and split not in SPLIT_NAMES:
        raise UserError(f"{path} row {row}: unknown split {cell['split']!r} (expected train, val or test, or "
                        "empty for train)")
    return PurePath(os.path.normpath(cell["file"])).as_posix(), SPLIT_NAMES.get(split, "train")
