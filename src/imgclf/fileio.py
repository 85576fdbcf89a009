"""Atomic file writes: the one place a run's files reach the disk.

Every file of a run (checkpoints, history, metrics, config, reports, caches, ONNX) is written to a
temp file beside its target, fsynced, then renamed over it. A kill at any moment leaves the old file
or the new one, never a torn one; a failed write (disk full) removes its temp file and raises a
one-line UserError, so nothing already written is lost and no temp file keeps the disk full.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from imgclf.errors import UserError

__all__ = ["atomic_file", "write_bytes", "write_json", "write_text", "write_with"]


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}: free space and rerun "
                            "(the previous version of the file is intact)") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], Any]) -> None:
    """Atomically write `path` by calling writer(binary file), e.g. torch.save or np.savez."""
    with atomic_file(path, "wb") as f:
        writer(f)


def write_bytes(path: str | Path, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
