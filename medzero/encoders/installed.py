"""Installed model packs: where they live, finding one by name or by the hub id it was packed
from, and checking a pack's files against its manifest.

The factory (:mod:`.factory`) asks this module whether a reference names an installed pack before
it looks at the hub, so it sits below the factory; making, installing and verifying packs
(:mod:`.packs`) loads models through the factory and sits above it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import model_error

__all__ = [
    "MODEL_MANIFEST",
    "InstalledPack",
    "models_dir",
    "installed",
    "find_installed",
    "read_manifest",
    "file_problems",
    "sha256_file",
    "remember_hashes",
]

_logger = logging.getLogger(__name__)

#: The manifest each installed model's folder holds (its entry of the pack, and when it was installed).
MODEL_MANIFEST = "medzero-model.json"


# -- where packs live -------------------------------------------------------------------------------


def models_dir() -> Path:
    """``MEDZERO_MODELS_DIR``, else ``<medzero cache>/models``."""
    from .cache import cache_dir

    if os.environ.get("MEDZERO_MODELS_DIR"):
        return Path(os.environ["MEDZERO_MODELS_DIR"]).expanduser()
    return cache_dir() / "models"


@dataclass(frozen=True)
class InstalledPack:
    """A model installed from a pack: its folder and its manifest entry."""

    name: str
    path: Path
    manifest: dict[str, Any] = field(repr=False, hash=False, compare=False)

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])

    @property
    def family(self) -> str:
        return str(self.manifest["family"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def revision(self) -> str | None:
        return self.manifest.get("revision")

    @property
    def source(self) -> str:
        return str(self.manifest.get("source", ""))

    def check_files(self) -> None:
        """Every file of the manifest present with its size and sha256 (hashes remembered per file
        size and modification time), and no other weights; else a one-line error naming the file."""
        problem = file_problems(self.path, self.manifest, memo=True)
        if problem:
            raise model_error(
                f"installed model pack {self.name} at {self.path} is damaged: {problem}",
                "install the pack again (medzero models install PACK.tar)",
            )


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """An installed model folder's manifest; ``None`` when it has none, or one for another name."""
    try:
        data = json.loads((folder / MODEL_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("name") == folder.name else None


def installed(directory: str | os.PathLike | None = None) -> list[InstalledPack]:
    """The packs installed in ``directory`` (default :func:`models_dir`), by name."""
    root = Path(directory) if directory is not None else models_dir()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            manifest = read_manifest(folder)
            if manifest is not None:
                found.append(InstalledPack(folder.name, folder, manifest))
    return found


def _hub_key(ref: str) -> str:
    return ref.removeprefix("hf-hub:").strip().lower()


def find_installed(ref: str, *, modality: str | None = None, revision: str | None = None) -> InstalledPack | None:
    """The installed pack named ``ref``, or packed from the hub id ``ref``; ``revision``, when
    given, must equal the pack's (a pinned commit that the pack does not hold is not used)."""
    if not ref or ref.startswith("local-dir:"):
        return None
    candidates = installed()
    by_name = [p for p in candidates if p.name == ref]
    by_source = [p for p in candidates if p.manifest.get("source_kind") == "hub" and _hub_key(p.source) == _hub_key(ref)]
    for p in by_name + by_source:
        if modality not in (None, p.modality):
            continue
        if revision is not None and p.revision != revision:
            _logger.info("installed pack %s holds revision %s, not %s; not used", p.name, p.revision, revision)
            continue
        return p
    return None


# -- hashing ------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_path() -> Path:
    from .cache import cache_dir

    return cache_dir() / "pack_hashes.json"


def _load_memo() -> dict[str, str]:
    from .cache import read_memo

    return read_memo(_memo_path())


def _save_memo(memo: dict[str, str]) -> None:
    from .cache import write_memo

    write_memo(_memo_path(), memo)


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_problems(folder: Path, manifest: dict[str, Any], *, memo: bool) -> str:
    """The first problem with ``folder``'s files against ``manifest`` (empty when there is none)."""
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    if not files:
        return "its manifest lists no files"
    remembered = _load_memo() if memo else {}
    changed = False
    try:
        for rel, entry in sorted(files.items()):
            path = folder / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != entry["size"]:
                return f"{rel} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
            key = _stamp(path)
            digest = remembered.get(key) if memo else None
            if digest is None:
                digest = sha256_file(path)
                if memo:
                    remembered[key] = digest
                    changed = True
            if digest != entry["sha256"]:
                return f"{rel} does not match its sha256 in the manifest (the file was changed or damaged)"
        extra = sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and p.name != MODEL_MANIFEST and str(p.relative_to(folder)) not in files
        )
        if extra:
            return f"{extra[0]} is not in the manifest"
        return ""
    finally:
        if changed:
            _save_memo(remembered)


def remember_hashes(digests: dict[Path, str]) -> None:
    """Record the sha256 of files just written and checked (an install), so that the next
    :meth:`InstalledPack.check_files` does not hash them again."""
    memo = _load_memo()
    memo.update({_stamp(path): digest for path, digest in digests.items()})
    _save_memo(memo)
