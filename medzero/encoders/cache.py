"""Text-embedding cache keyed by (encoder fingerprint, prompt text).

Prompt sets are scored over and over with the same texts; encoding them once per model is enough.
Entries live in memory and in one SQLite file under the cache directory (``MEDZERO_CACHE_DIR``,
default ``~/.cache/medzero``), so that a new process does not encode them again either. Two
encoders with different fingerprints never share an entry. A cache directory that cannot be
written is not an error: the cache then lives in memory only, and says so once in the log.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["cache_dir", "read_memo", "write_memo", "TextEmbeddingCache", "text_cache"]

_logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``MEDZERO_CACHE_DIR``, else ``$XDG_CACHE_HOME/medzero``, else ``~/.cache/medzero``."""
    if os.environ.get("MEDZERO_CACHE_DIR"):
        return Path(os.environ["MEDZERO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medzero"


def read_memo(path: Path) -> dict[str, str]:
    """A small JSON memo (file stamps to hashes) as a dict; empty when missing or unreadable: a memo
    only saves work, so it is never an error."""
    try:
        memo = json.loads(path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def write_memo(path: Path, memo: dict[str, str]) -> None:
    """Replace a JSON memo in one step (a reader sees the old or the new one); one that cannot be
    written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, path)
    except OSError:
        pass


class TextEmbeddingCache:
    def __init__(self, directory: Path | None = None, *, persist: bool = True):
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()
        self._db_path = (directory or cache_dir()) / "text_embeddings.sqlite" if persist else None
        self._db: sqlite3.Connection | None = None
        self._db_failed = False

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._db_failed or self._db_path is None:
            return self._db
        try:
            self._db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._db_path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS text_embedding ("
                " fingerprint TEXT NOT NULL, text TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (fingerprint, text))"
            )
            self._db = db
        except (OSError, sqlite3.Error) as exc:
            self._db_failed = True
            _logger.warning("text-embedding cache %s is not usable (%s); caching in memory only", self._db_path, exc)
        return self._db

    def get_or_compute(
        self, fingerprint: str, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """Embeddings for ``texts`` (n, d) in order; only the texts never seen are passed to ``compute``."""
        texts = list(texts)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if (fingerprint, t) not in self._memory]
            if missing:
                self._load(fingerprint, missing)
                missing = [t for t in missing if (fingerprint, t) not in self._memory]
            if missing:
                vectors = np.ascontiguousarray(compute(missing), dtype=np.float32)
                if vectors.shape[0] != len(missing):
                    raise RuntimeError(f"text encoder returned {vectors.shape[0]} vectors for {len(missing)} texts")
                for text, vector in zip(missing, vectors):
                    self._memory[(fingerprint, text)] = vector
                self._store(fingerprint, missing, vectors)
            return np.stack([self._memory[(fingerprint, t)] for t in texts])

    def _load(self, fingerprint: str, texts: list[str]) -> None:
        db = self._connect()
        if db is None:
            return
        try:
            for start in range(0, len(texts), 500):
                chunk = texts[start : start + 500]
                rows = db.execute(
                    f"SELECT text, dim, vector FROM text_embedding WHERE fingerprint = ? AND text IN ({','.join('?' * len(chunk))})",
                    [fingerprint, *chunk],
                ).fetchall()
                for text, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (dim,):
                        self._memory[(fingerprint, text)] = vector.copy()
        except sqlite3.Error as exc:
            _logger.warning("text-embedding cache read failed (%s); recomputing", exc)

    def _store(self, fingerprint: str, texts: list[str], vectors: np.ndarray) -> None:
        db = self._connect()
        if db is None:
            return
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR REPLACE INTO text_embedding VALUES (?, ?, ?, ?)",
                    [(fingerprint, t, int(v.shape[0]), v.astype(np.float32).tobytes()) for t, v in zip(texts, vectors)],
                )
        except sqlite3.Error as exc:
            _logger.warning("text-embedding cache write failed (%s); kept in memory only", exc)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()


_default: TextEmbeddingCache | None = None
_default_dir: Path | None = None


def text_cache() -> TextEmbeddingCache:
    """The process-wide cache for the current ``MEDZERO_CACHE_DIR``."""
    global _default, _default_dir
    directory = cache_dir()
    if _default is None or directory != _default_dir:
        _default, _default_dir = TextEmbeddingCache(directory), directory
    return _default
