"""Labels from a CSV (`--data labels.csv`): columns file,label[,split], files relative to the CSV's folder.

The rows stand for the folder listing they describe ({split: [(class, file)]}); data/sources.py decodes and
caches them like a folder, so splits, skipped files and dropped classes behave the same. A row that cannot
be used (a missing file, an empty label, an unknown split) is refused with its row number, as a spreadsheet
counts them (the header is row 1).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path, PurePath

from imgclf.data.decode import CACHE_VERSION
from imgclf.data.listing import SPLIT_NAMES
from imgclf.errors import UserError

COLUMNS = ("file", "label")  # required; `split` is optional, and other columns (notes, sources) are ignored


class CsvListing:
    """A labels CSV read and checked: `layout()` gives {split: [(label, file)]} like a folder's listing,
    `read(file)` the image's path. A row without a split (no column, or an empty cell) is a training row;
    without val rows, val is carved from train by the seeded per-class split, as for a plain folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups, self.stamps = _read_rows(path)

    def read(self, member: str) -> Path:
        return self.path.parent / member

    def layout(self) -> dict[str, list[tuple[str, str]]]:
        return self.groups

    def fingerprint(self, image_size: int | None) -> str:
        """Cache key: the CSV's bytes and every listed file's size and mtime (a changed image is re-read)."""
        h = hashlib.sha256(os.fsencode(f"{CACHE_VERSION}|csv|{self.path.resolve()}|{image_size}"))
        h.update(self.path.read_bytes())
        for member, (size, mtime) in sorted(self.stamps.items()):
            h.update(os.fsencode(f"{member}|{size}|{mtime}\n"))
        return h.hexdigest()[:24]


def _read_rows(path: Path) -> tuple[dict[str, list[tuple[str, str]]], dict[str, tuple[int, int]]]:
    """({split: [(label, file)]}, {file: (size, mtime_ns)}), every row checked; UTF-8 with or without a BOM
    (spreadsheets write one)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    stamps: dict[str, tuple[int, int]] = {}
    first_row: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip().lower() for name in next(reader, [])]
            missing = [name for name in COLUMNS if name not in header]
            if missing:
                raise UserError(f"{path} row 1: missing column(s) {', '.join(missing)}; the header must name "
                                f"file,label and optionally split (found: {','.join(header) or 'nothing'})")
            where = {name: header.index(name) for name in (*COLUMNS, "split") if name in header}
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue  # a blank line, as spreadsheets leave at the end
                row = reader.line_num
                cell = {name: (cells[i].strip() if i < len(cells) else "") for name, i in where.items()}
                member, split = _checked(path, row, cell)
                if member in first_row:
                    raise UserError(f"{path} row {row}: {cell['file']} is listed twice (also row {first_row[member]})")
                first_row[member] = row
                target = path.parent / member
                if not target.is_file():
                    raise UserError(f"{path} row {row}: file not found: {cell['file']} (paths are relative to "
                                    f"{path.parent})")
                st = target.stat()
                stamps[member] = (st.st_size, st.st_mtime_ns)
                groups.setdefault(split, []).append((cell["label"], member))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path} row {reader.line_num}: not a readable CSV row ({exc})") from None
    if "train" not in groups:
        raise UserError(f"{path}: no training rows (each row needs a file and a label; split train, val, test "
                        "or empty)")
    return groups, stamps


def _checked(path: Path, row: int, cell: dict[str, str]) -> tuple[str, str]:
    """(the file as a normalised relative name, the split) of one row, or a UserError naming the row."""
    if not cell["file"]:
        raise UserError(f"{path} row {row}: empty file name")
    if not cell["label"]:
        raise UserError(f"{path} row {row}: empty label for {cell['file']}")
    split = cell.get("split", "").lower()
    if split and split not in SPLIT_NAMES:
        raise UserError(f"{path} row {row}: unknown split {cell['split']!r} (expected train, val or test, or "
                        "empty for train)")
    return PurePath(os.path.normpath(cell["file"])).as_posix(), SPLIT_NAMES.get(split, "train")
