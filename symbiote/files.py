"""Files written whole or not at all; by default only their owner may read them."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["write_atomic", "write_private"]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = False) -> None:
    """Write ``data`` to ``path`` (created with ``mode``): into a file of its own beside it, then
    renamed over ``path``, so that a reader sees the old file or the new one, never a part. The
    file of its own is named for this process and thread: a write cut short by a cancellation may
    still be running in its thread when the next one writes the same path. ``durable``: the data
    and the rename are on disk (fsynced, the file and its folder) before this returns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def write_private(path: Path, data: bytes) -> None:
    """:func:`write_atomic` with mode 0600: for what only the data dir's owner may read."""
    write_atomic(path, data, mode=0o600)
