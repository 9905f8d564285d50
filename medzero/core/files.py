"""Durable file replacement: what the case index, the ONNX export cache and Parquet results share.

:func:`replacing` gives a temporary path beside the target; when the block ends without an error
the file is fsynced, renamed over the target in one step and the folder fsynced, so a reader (or a
process killed at any point) sees the old file or the whole new one, never half of it. On an error
the temporary file is removed and the target is untouched.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["fsync_dir", "fsync_file", "replacing"]


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fsync_file(directory)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """``with replacing(target) as tmp: write(tmp)`` replaces ``target`` durably and atomically.

    The temporary file is ``<target>.tmp<pid>`` (cleaners of a killed writer's leftovers glob for
    ``<target>.tmp*``)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
