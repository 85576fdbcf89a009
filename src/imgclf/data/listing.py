"""The names of a folder's or archive's images, read without decoding them: the layout they carry (split
and class folders) and a reader for each member, for the data layer (sources.py decodes and caches what
is listed here), inspection and `imgclf predict`; and an archive's files one at a time, what predict needs
to go through 100,000 images in the memory of one batch (`_list_members` reads an archive into memory in
one go, as training decodes a whole dataset once)."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from imgclf.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
COMPRESSED_TAR = {b"\x1f\x8b": gzip.open, b"\xfd7zXZ\x00": lzma.open, b"BZh": bz2.open}  # magic -> opener
# what a damaged archive raises while it is read (zipfile: NotImplementedError for an unknown method,
# RuntimeError for a set encryption flag, UnicodeDecodeError/ValueError for a mangled name)
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, EOFError, OSError,
                  NotImplementedError, RuntimeError, ValueError, struct.error)


class FolderTree:
    """A listing of an image folder or archive: {split: [(relative class dir, member name)]}, plus a reader."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members, self.read = _list_members(path)

    def layout(self, need_train: bool = True) -> dict[str, list[tuple[str, str]]]:
        """{split or "": [(class, member)]}: train/val/test folders when present, else class folders;
        `need_train` False also takes split folders without train/ (a test folder scored on its own)."""
        groups, has_splits = class_layout(self.members)
        if not groups or (need_train and has_splits and "train" not in groups):
            raise UserError(f"{self.path}: expected <class>/<image> or train/<class>/<image> folders")
        return groups


def class_layout(members: list[str]) -> tuple[dict[str, list[tuple[str, str]]], bool]:
    """Members grouped by where they lie, {split or "": [(class, member)]} (train/val/test/<class>/<image>,
    else <class>/<image>; inside one top folder or not), and whether split folders were found. Members
    lying elsewhere are in no group; no group at all means the names carry no classes."""
    parts = {PurePosixPath(m).parts: m for m in members}
    nested = {p: m for p, m in parts.items() if len(p) > 1}
    tops = {p[0] for p in nested}
    if len(tops) == 1 and not (set(SPLIT_NAMES) & tops) and any(len(p) >= 3 for p in nested):
        # one top folder: step inside it; loose files in it (a README, ATTRIBUTION.txt) are no images
        parts = {p[1:]: m for p, m in nested.items() if len(p) >= 3}
    has_splits = any(p[0].lower() in SPLIT_NAMES and len(p) == 3 for p in parts)
    groups: dict[str, list[tuple[str, str]]] = {}
    for p, member in parts.items():
        if has_splits and len(p) == 3 and p[0].lower() in SPLIT_NAMES:
            groups.setdefault(SPLIT_NAMES[p[0].lower()], []).append((p[1], member))
        elif not has_splits and len(p) == 2:
            groups.setdefault("", []).append((p[0], member))
    return groups, has_splits


def single_label(label: str) -> list[str]:
    """The class names a folder's (or a single-label CSV's) label stands for: itself."""
    return [label]


def train_classes(path: Path, groups: dict[str, list[tuple[str, str]]],
                  names: Callable[[str], list[str]] = single_label) -> tuple[str, list[str]]:
    """The training group's key and its sorted class names (each label's `names`: several for a multi-label
    CSV); val/test classes must be among them."""
    train_key = "train" if "train" in groups else ""
    classes = sorted({n for c, _ in groups[train_key] for n in names(c)})
    unknown = sorted({n for g in groups.values() for c, _ in g for n in names(c)} - set(classes))
    if unknown:
        raise UserError(f"{path}: classes {unknown[:3]} appear in val/test but not in train")
    return train_key, classes


def _list_members(path: Path) -> tuple[list[str], Callable[[str], bytes | Path]]:
    """Image members (posix relative names) of a folder or archive, and a function that reads one.

    A link to nothing (dangling, or a loop) is listed like a file, so that it is skipped and named with the
    other unreadable files rather than vanishing or crashing the listing.
    """
    if path.is_dir():
        members = sorted(p.relative_to(path).as_posix() for p in walk_files(path) if not p.name.startswith("."))
        return _images_only(members), lambda m: path / m
    blobs = _read_archive(path)
    return _images_only(sorted(blobs)), blobs.pop


def walk_files(root: Path) -> list[Path]:
    """Every file below `root` (and every link to nothing), following links to folders, so a class or split
    folder kept elsewhere and linked in is found; a link back to a folder above it would list forever, and is
    refused. Hidden folders are not entered (their files are no data)."""
    found: list[Path] = []

    def visit(folder: Path, above: frozenset[tuple[int, int]]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
        for entry in entries:
            p = Path(folder, entry.name)
            if not p.is_dir():  # a file, or a link to nothing or to itself
                found.append(p)
            elif not entry.name.startswith("."):
                st = p.stat()
                if (st.st_dev, st.st_ino) in above:
                    raise UserError(f"{p}: a symbolic link loop (it leads back to {p.resolve()}, a folder above "
                                    "it); remove the link or point it at a folder outside the data")
                visit(p, above | {(st.st_dev, st.st_ino)})

    st = root.stat()
    visit(root, frozenset({(st.st_dev, st.st_ino)}))
    return found


def _read_archive(path: Path) -> dict[str, bytes]:
    """Every file of a .zip or a tar (plain, .gz, .xz, .bz2), read to the archive's end, so a damaged one is
    refused here with one line before anything is decoded or cached, never half-read: zip members are
    checked against their CRC-32, a compressed tar against its stream checksum, and a tar listing that
    stops early (tarfile ends quietly at a broken member header) by the block it stopped at not being zeros."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = next((o for m, o in COMPRESSED_TAR.items() if magic.startswith(m)), open)
        with opener(path, "rb") as f:
            raw = f.read()
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            blobs = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar if m.isfile()}
            end = tar.offset
        if raw[end:end + tarfile.BLOCKSIZE].strip(b"\0"):  # the listing stopped at a header, not at the end
            raise tarfile.ReadError(f"a broken member header at byte {end}, after {len(blobs)} files")
        return blobs
    except ARCHIVE_ERRORS as exc:
        detail = " ".join(str(exc).split()) or exc.__class__.__name__
        raise UserError(f"{path}: damaged or unreadable archive, nothing loaded ({detail})") from None


def _images_only(members: list[str]) -> list[str]:
    """Skip hidden files and folders (.DS_Store, __MACOSX) but keep unknown suffixes: decode decides."""
    return [m for m in members if not any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(m).parts)]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def image_names(path: Path) -> list[str]:
    """Posix names, relative to `path`, of a folder's or archive's files (hidden ones left out) in the order
    they are read: sorted for a folder, stored order for an archive (a first pass that keeps only names)."""
    if path.is_dir():
        return _list_members(path)[0]  # a folder's listing reads no file
    return _images_only([name for name, _ in _entries(path, read=False)])


def archive_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file of an archive that `image_names` lists, in the same order, one at a time."""
    for name, data in _entries(path, read=True):
        if _images_only([name]):
            yield name, data or b""


def _entries(path: Path, read: bool) -> Iterator[tuple[str, bytes | None]]:
    """Every file of a .zip or a tar (plain, .gz, .xz, .bz2: streamed, so a compressed one is never held
    whole), with its bytes when `read`; damage is one UserError that says how far the reading got."""
    count = 0
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        count += 1
                        yield info.filename, archive.read(info) if read else None
            return
        with tarfile.open(path, mode="r|*") as tar:
            while (member := tar.next()) is not None:
                if member.isfile():
                    count += 1
                    data = tar.extractfile(member)
                    yield member.name.removeprefix("./"), data.read() if read and data else None
                tar.members.clear()  # a stream still keeps every header it read: 100,000 of them add up
    except ARCHIVE_ERRORS as exc:
        detail = " ".join(str(exc).split()) or exc.__class__.__name__
        raise UserError(f"{path}: damaged or unreadable archive, stopped after {count} files ({detail})") from None
