"""Errors a user can cause. Each carries one line that says what was wrong and what to do.

The CLI prints ``str(error)`` and exits non-zero; batch runs turn it into an error row and go on.
Anything that is not a :class:`MedzeroError` is a bug in medzero and keeps its traceback.
"""
from __future__ import annotations


class MedzeroError(Exception):
    """Base class. The message is always a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class BadInputError(MedzeroError, ValueError):
    """A file, byte string or array that cannot be used: not audio/image, truncated, empty, too large."""


class TaskError(MedzeroError, ValueError):
    """An unknown task, a prompt-set file that fails its schema, or labels that do not fit."""


class ModelUnavailableError(MedzeroError, RuntimeError):
    """Model weights that cannot be loaded (not cached offline, bad directory, unknown name)."""


class CaseIndexError(MedzeroError, RuntimeError):
    """A case index that is locked, opened with another model, or asked a query of the wrong shape."""


def one_line(error: "BaseException | str", limit: int = 240) -> str:
    """An exception's message (or a text) on one line, shortened to ``limit`` characters.

    Used wherever a library's own message becomes part of a medzero one-line error.
    """
    text = " ".join(str(error).split()) or (type(error).__name__ if isinstance(error, BaseException) else "")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
