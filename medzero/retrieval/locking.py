"""The one-writer rule of a case index: ``fcntl.flock`` on ``write.lock``, holding the writer's pid.

A writing operation takes the lock without blocking for its whole duration; a second writer gets a
one-line :class:`CaseIndexError` naming the holder's pid. Readers take no lock. The lock is
re-entrant within one :class:`WriteLock` (an add that saves takes it once).
"""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.errors import CaseIndexError

__all__ = ["WriteLock"]


class WriteLock:
    """The write lock of the index directory ``directory`` (file ``write.lock``)."""

    NAME = "write.lock"

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    @contextmanager
    def hold(self) -> Iterator[bool]:
        """Hold the lock for the block; yields ``True`` when this is the outermost hold."""
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        try:
            yield self._depth == 1
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.release()

    def _acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise CaseIndexError(
                    f"index {self.directory} is being written by another process{who}; try again when it finishes"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._depth = 0
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def other_writer_active(self) -> bool:
        """Whether another process holds the lock now (it may be mid-add, with its FAISS file behind)."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None
