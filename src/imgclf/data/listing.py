"""The image names of a folder or archive, read without the images, and an archive's files one at a time:
what `imgclf predict` needs to go through 100,000 images in the memory of one batch (sources.py, which
decodes a whole dataset once for training, reads an archive into memory in one go)."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from imgclf.data.sources import ARCHIVE_ERRORS, ARCHIVE_SUFFIXES, _images_only, _list_members
from imgclf.errors import UserError


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
