"""API keys: bearer tokens kept only as SHA-256 hashes and compared in constant time.

Keys come from a file (``--api-key-file``) and from ``MEDZERO_API_KEYS``. In both, each entry is
either a token as clients send it or ``sha256:<64 hex digits>``, the hash of one; the file holds
one entry per line (blank lines and ``#`` comments are skipped), the variable a comma-separated
list. Tokens are hashed as soon as they are read, so the server never holds a token it was given
in configuration, and a file of hashes can be deployed without the tokens themselves.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Iterable

__all__ = ["ENV_VAR", "hash_token", "parse_keys", "load_api_keys", "ApiKeys"]

ENV_VAR = "MEDZERO_API_KEYS"
_HEX = re.compile(r"[0-9a-f]{64}")
#: Shorter tokens are refused: a bearer token is a secret, not a password someone remembers.
MIN_TOKEN_CHARS = 16


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a token, as stored and as written after ``sha256:``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_keys(entries: Iterable[str], where: str = "the API keys") -> list[str]:
    """Hashes from entries (tokens or ``sha256:<hex>``); blank entries and ``#`` comments are skipped.

    Raises ``ValueError`` with a one-line message naming ``where`` and the entry's number, never its text.
    """
    hashes: list[str] = []
    for number, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.lower().startswith("sha256:"):
            digest = entry[len("sha256:"):].strip().lower()
            if not _HEX.fullmatch(digest):
                raise ValueError(f"{where}, entry {number}: sha256: must be followed by 64 hex digits")
            hashes.append(digest)
        elif any(c.isspace() for c in entry):
            raise ValueError(f"{where}, entry {number}: a token cannot contain spaces")
        elif len(entry) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}, entry {number}: a token must be at least {MIN_TOKEN_CHARS} characters")
        else:
            hashes.append(hash_token(entry))
    return list(dict.fromkeys(hashes))


def load_api_keys(path: "str | os.PathLike | None" = None, environ: "dict[str, str] | None" = None) -> list[str]:
    """Every key hash from the file at ``path`` (if given) and from ``MEDZERO_API_KEYS``."""
    environ = os.environ if environ is None else environ
    hashes: list[str] = []
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the API key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        hashes += parse_keys(text.splitlines(), where=f"API key file {path}")
    if environ.get(ENV_VAR):
        hashes += parse_keys(environ[ENV_VAR].split(","), where=ENV_VAR)
    return list(dict.fromkeys(hashes))


class ApiKeys:
    """Checks an ``Authorization`` header against the stored hashes.

    The presented token is hashed and compared with *every* stored hash using
    :func:`hmac.compare_digest`, with no early exit, so neither the position of a matching key
    nor the length of a common prefix shows in the time taken.
    """

    def __init__(self, hashes: Iterable[str]):
        self._digests = [bytes.fromhex(h) for h in hashes]
        if not self._digests:
            raise ValueError("no API keys configured")

    def __len__(self) -> int:
        return len(self._digests)

    def check_token(self, token: str | None) -> bool:
        presented = hashlib.sha256((token or "").encode("utf-8")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found and bool(token)

    def check_header(self, authorization: str | None) -> bool:
        """``Authorization: Bearer <token>`` (scheme case-insensitive) with a known token."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        return self.check_token(token.strip())
