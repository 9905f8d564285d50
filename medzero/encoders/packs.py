"""Model packs: a model's files in one tar, carried to a machine without internet.

``pack(["clap-htsat-fused", "biomedclip"], "models.tar")`` on a connected machine loads each model
through the registry (so the pack holds exactly what the registry resolves: the Hugging Face cache
of a hub id, downloaded if needed, or a local directory) and writes a self-contained folder per
model that its family loads as ``local-dir:``: safetensors weights, configs, tokenizer files, the
preprocessing config, and the licence text or model card when the source has one. The tar starts
with ``medzero-pack.json``: per model its name, modality, family, source, revision (the hub commit,
or none for a directory), fingerprint, the preprocessing the loader really applied, and the size
and sha256 of every file.

``install("models.tar")`` on the offline machine extracts with tarfile's ``data`` filter (no
absolute paths, no ``..``, no links, plain files only), refuses a file that is not in the manifest
or whose sha256 differs (one line naming it; nothing is installed), and moves each model folder
into ``models_dir()/<name>`` (``MEDZERO_MODELS_DIR``, default ``<medzero cache>/models``)
atomically. The registry then finds it by name, or by the hub id it was packed from, and loads it
with the fingerprint recorded in the pack, so text-embedding caches and case indexes built with the
original model keep working. ``verify()`` checks the checksums again and loads each model with the
hub in offline mode to compare the preprocessing the loader uses with the pack's.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from ..core.errors import ModelUnavailableError
from . import hub
from .factory import create, forget, local_dir, resolve
from .installed import MODEL_MANIFEST, InstalledPack, file_problems, installed, models_dir, read_manifest, remember_hashes, sha256_file
from .registry import families, family, named_model

__all__ = [
    "PACK_MANIFEST",
    "Check",
    "pack",
    "install",
    "verify",
    "copy_files",
    "LICENCE_PATTERNS",
    "TOKENIZER_FILES",
]

_logger = logging.getLogger(__name__)

PACK_MANIFEST = "medzero-pack.json"
FORMAT = "medzero-model-pack"
VERSION = 1
#: A pack name: what ``create()`` is given. No ``/``, ``:`` or ``@`` (hub ids, schemes, tags).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LICENCE_PATTERNS = ("LICENSE*", "LICENCE*", "COPYING*", "NOTICE*", "README.md")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)
_MAX_MANIFEST_BYTES = 16 << 20


# -- packing ------------------------------------------------------------------------------------------


def copy_files(source: Path, patterns: Sequence[str]) -> dict[str, Path]:
    """Top-level files of ``source`` matching ``patterns`` (symlinks, as in the hub cache, followed),
    as ``{name: path}``."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        for path in sorted(source.glob(pattern)):
            if path.is_file() and path.name != MODEL_MANIFEST and not path.name.startswith("."):
                found.setdefault(path.name, path)
    return found


def _split_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=REF`` -> (NAME, REF); anything else -> (None, spec)."""
    name, sep, ref = spec.partition("=")
    if sep and NAME_RE.match(name) and ref:
        return name, ref
    return None, spec


def _default_name(ref: str) -> str:
    base = ref.removeprefix("local-dir:").removeprefix("hf-hub:").rstrip("/\\")
    base = re.split(r"[/\\]", base)[-1] or "model"
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base.replace("@", "-")).strip("-.") or "model"
    return base[:100]


def _detect_modality(ref: str) -> str | None:
    directory = local_dir(ref)
    if directory is None:
        return None
    for row in families():
        if row.recognise is not None and row.recognise(directory):
            return row.modality
    return None


@dataclass
class _Staged:
    name: str
    entry: dict[str, Any]
    files: dict[str, Path]


def _stage(spec: str, work: Path, *, modality: str | None, licence_files: Sequence[Path], device: str) -> _Staged:
    name, ref = _split_spec(spec)
    cfg = named_model(name or ref)
    known = cfg or named_model(ref)
    if known is not None:
        modality = known.modality
    modality = modality or _detect_modality(ref)
    if modality is None:
        raise ModelUnavailableError(f"cannot tell whether {ref} is an audio or an image model; give --modality")
    name = name or (cfg.name if cfg is not None else _default_name(ref))
    if not NAME_RE.match(name):
        raise ModelUnavailableError(f"{name!r} cannot name a pack; use letters, digits, '.', '_' and '-' (NAME=REF)")
    target = resolve(ref, modality=modality)
    row = family(target.family)
    stage = row.stage if row is not None else None
    if stage is None:
        raise ModelUnavailableError(f"the {target.family} model family cannot be packed")
    encoder = create(ref, modality=modality, device=device, backend="torch")  # packs hold the model's own files
    dest = work / name
    dest.mkdir(parents=True)
    files = dict(stage(encoder, target, dest))
    if target.pack is not None:
        source_kind, source, revision = target.pack.manifest.get("source_kind"), target.pack.source, target.pack.revision
    elif target.directory is not None:
        source_kind, source, revision = "directory", str(target.directory.resolve()), None
    else:
        source_kind = "hub"
        source = target.cfg.hub_id if target.cfg is not None else target.ref
        fp = str(encoder.fingerprint)
        revision = fp.rsplit("@", 1)[1] if "@" in fp and re.fullmatch(r"[0-9a-f]{40}", fp.rsplit("@", 1)[1]) else target.revision
        repo = source.removeprefix("hf-hub:")
        if "/" in repo and hub.offline_reason() is None:
            files.update({k: v for k, v in _hub_licence(repo, revision, dest).items() if k not in files})
    for path in licence_files:
        path = Path(path)
        if not path.is_file():
            raise ModelUnavailableError(f"licence file not found: {path}")
        files[path.name] = path
    licence = sorted(k for k in files if any(Path(k).match(p) for p in LICENCE_PATTERNS))
    licence_id = (cfg.extra.get("license") if cfg is not None else None) or _card_licence(files.get("README.md"))
    if not licence:
        _logger.warning("%s: no licence text or model card found in %s; add one with --licence FILE before passing the pack on", name, source)
    weights = [k for k in files if k.endswith(".safetensors")]
    if not weights:
        raise ModelUnavailableError(f"{name}: the {target.family} packer wrote no safetensors weights")
    entry = {
        "name": name,
        "modality": modality,
        "family": target.family,
        "source_kind": source_kind,
        "source": source,
        "revision": revision,
        "fingerprint": str(encoder.fingerprint),
        "preprocess": _jsonable(encoder.preprocess_config()) if hasattr(encoder, "preprocess_config") else {},
        "licence": {"id": licence_id, "files": licence},
        "files": {rel: {"size": path.stat().st_size, "sha256": sha256_file(path)} for rel, path in sorted(files.items())},
    }
    return _Staged(name, entry, files)


def _hub_licence(repo: str, revision: str | None, dest: Path) -> dict[str, Path]:
    """The model card and licence file of a hub repository, when it has them (connected machines)."""
    from huggingface_hub import hf_hub_download

    found = {}
    for filename in ("LICENSE", "LICENSE.txt", "LICENSE.md", "README.md"):
        try:
            found[filename] = Path(hf_hub_download(repo, filename, revision=revision))
        except Exception:  # absent from the repository, or the hub refused: the pack warns if none
            continue
    return found


def _card_licence(readme: Path | None) -> str | None:
    """``license:`` from a model card's YAML header."""
    if readme is None:
        return None
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return None
    match = re.search(r"^---\s*\n(.*?)\n---", head, re.S | re.M)
    found = re.search(r"^licen[cs]e:\s*['\"]?([^'\"\n]+)", match.group(1), re.M) if match else None
    return found.group(1).strip() if found else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def pack(
    specs: Sequence[str],
    output: str | os.PathLike,
    *,
    modality: str | None = None,
    licence_files: Sequence[str | os.PathLike] = (),
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Write one tar holding every model of ``specs`` (registered names, ``NAME=DIR_OR_HUB_ID``,
    directories or hub ids); returns their manifest entries. Written to a temporary file first,
    then renamed, so a failed pack leaves nothing behind."""
    if not specs:
        raise ModelUnavailableError("name at least one model to pack")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medzero-pack-") as tmp:
        work = Path(tmp)
        staged: list[_Staged] = []
        for spec in specs:
            item = _stage(spec, work, modality=modality, licence_files=[Path(p) for p in licence_files], device=device)
            if any(s.name == item.name for s in staged):
                raise ModelUnavailableError(f"two models named {item.name} in one pack; use NAME=REF to rename one")
            staged.append(item)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "models": [s.entry for s in staged],
        }
        tmp_out = output.with_name(f".{output.name}.tmp{os.getpid()}")
        try:
            with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
                body = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
                _add_bytes(tar, PACK_MANIFEST, body)
                for s in staged:
                    for rel, path in sorted(s.files.items()):
                        _add_file(tar, f"{s.name}/{rel}", path, s.entry["files"][rel])
            os.replace(tmp_out, output)
        finally:
            tmp_out.unlink(missing_ok=True)
    return manifest["models"]


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = len(data), 0o644, int(_dt.datetime.now().timestamp())
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, arcname: str, path: Path, entry: dict[str, Any]) -> None:
    """A plain file member (symlinks followed), refused if it changed since it was hashed."""
    real = path.resolve()
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.mtime = real.stat().st_size, 0o644, int(real.stat().st_mtime)
    if info.size != entry["size"]:
        raise ModelUnavailableError(f"{real} changed while it was being packed")
    with real.open("rb") as fh:
        tar.addfile(info, fh)


# -- installing ---------------------------------------------------------------------------------------


@contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _safe_rel(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel or rel.startswith("/") or "\x00" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[-1] != MODEL_MANIFEST


def _check_manifest(manifest: Any, label: str) -> list[dict[str, Any]]:
    def bad(why: str) -> ModelUnavailableError:
        return ModelUnavailableError(f"{label} is not a valid medzero model pack: {why}")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad(f"{PACK_MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise bad(f"manifest version {manifest.get('version')!r}; this medzero reads version {VERSION}")
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise bad("the manifest lists no models")
    names = set()
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not NAME_RE.match(m["name"]):
            raise bad(f"a model has no usable name ({m.get('name') if isinstance(m, dict) else m!r})")
        if m["name"] in names:
            raise bad(f"{m['name']} is listed twice")
        names.add(m["name"])
        for key in ("modality", "family", "fingerprint"):
            if not isinstance(m.get(key), str) or not m[key]:
                raise bad(f"{m['name']} has no {key}")
        files = m.get("files")
        if not isinstance(files, dict) or not files:
            raise bad(f"{m['name']} lists no files")
        for rel, entry in files.items():
            if not _safe_rel(rel):
                raise bad(f"{m['name']} lists an unsafe path {rel!r}")
            if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256")))):
                raise bad(f"{m['name']}/{rel} has no size and sha256")
    return models


def install(
    source: "str | os.PathLike | IO[bytes]",
    *,
    directory: str | os.PathLike | None = None,
    name: str | None = None,
    modality: str | None = None,
) -> list[InstalledPack]:
    """Install a model pack (a tar path or a binary file object), or a model folder (a directory;
    it is packed first, under ``name`` or its folder's name), into ``directory`` (default
    :func:`models_dir`). Returns the installed models. A file that is missing, unexpected, not a
    plain file, or whose sha256 differs from the manifest is refused with a one-line
    :class:`ModelUnavailableError` naming it; then nothing is installed."""
    root = Path(directory) if directory is not None else models_dir()
    if not hasattr(source, "read"):
        path = Path(os.fspath(source)).expanduser()
        if path.is_dir():
            if (path / MODEL_MANIFEST).is_file():  # an installed pack's folder, copied here
                return _install_folder(path, root, name=name)
            with tempfile.TemporaryDirectory(prefix="medzero-pack-", dir=_tmp_parent(root)) as tmp:
                spec = f"{name}={path}" if name else str(path)
                tar_path = Path(tmp) / "models.tar"
                pack([spec], tar_path, modality=modality)
                return install(tar_path, directory=root)
        if not path.is_file():
            raise ModelUnavailableError(f"model pack not found: {path} (it does not exist)")
        label = path.name
        opener = lambda: tarfile.open(path, mode="r:*")  # noqa: E731
    else:
        label = getattr(source, "name", None) or "the uploaded pack"
        label = Path(str(label)).name
        opener = lambda: tarfile.open(fileobj=source, mode="r:*")  # noqa: E731
    try:
        tar = opener()
    except (tarfile.TarError, OSError) as exc:
        raise ModelUnavailableError(f"{label} is not a model pack (not a readable tar file: {exc})") from None
    with tar, _install_lock(root):
        return _install_tar(tar, label, root)


def _tmp_parent(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


def _install_tar(tar: tarfile.TarFile, label: str, root: Path) -> list[InstalledPack]:
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelUnavailableError(f"{label} is damaged (the tar file cannot be read: {exc})") from None
    head = next((m for m in members if m.name == PACK_MANIFEST), None)
    if head is None or not head.isfile() or head.size > _MAX_MANIFEST_BYTES:
        raise ModelUnavailableError(f"{label} is not a medzero model pack (it has no {PACK_MANIFEST})")
    try:
        manifest = json.loads(tar.extractfile(head).read().decode("utf-8"))  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelUnavailableError(f"{label}: {PACK_MANIFEST} is not valid JSON ({exc})") from None
    models = _check_manifest(manifest, label)
    expected = {f"{m['name']}/{rel}": (m, rel) for m in models for rel in m["files"]}
    wanted = []
    for member in members:
        if member.name == PACK_MANIFEST or (member.isdir() and member.name.rstrip("/") in {m["name"] for m in models}):
            continue
        if member.name not in expected:
            raise ModelUnavailableError(f"{label}: {member.name} is not in the pack's manifest; nothing was installed")
        if not member.isfile():
            raise ModelUnavailableError(f"{label}: {member.name} is not a plain file (a link or device); nothing was installed")
        wanted.append(member)
    missing = sorted(set(expected) - {m.name for m in wanted})
    if missing:
        raise ModelUnavailableError(f"{label}: {missing[0]} is listed in the manifest but not in the pack; nothing was installed")
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        try:
            tar.extractall(staging, members=wanted, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ModelUnavailableError(f"{label} cannot be extracted ({exc}); nothing was installed") from None
        for member in wanted:
            m, rel = expected[member.name]
            path = staging / member.name
            entry = m["files"][rel]
            if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                raise ModelUnavailableError(
                    f"{label}: {member.name} does not match its sha256 in the manifest (the file was changed or damaged); nothing was installed"
                )
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        done, digests = [], {}
        for m in models:
            folder = staging / m["name"]
            record = {**m, "installed": stamp, "pack": label}
            (folder / MODEL_MANIFEST).write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
            final = root / m["name"]
            if final.exists():
                os.replace(final, staging / f".old-{m['name']}")
            os.replace(folder, final)
            for rel, entry in m["files"].items():
                digests[final / rel] = entry["sha256"]
            done.append(InstalledPack(m["name"], final, record))
        remember_hashes(digests)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _forget(done)
    return done


def _install_folder(path: Path, root: Path, *, name: str | None) -> list[InstalledPack]:
    manifest = read_manifest(path) or {}
    problem = file_problems(path, manifest, memo=False)
    if problem:
        raise ModelUnavailableError(f"{path}: {problem}; nothing was installed")
    name = name or path.name
    with tempfile.TemporaryDirectory(prefix="medzero-pack-", dir=_tmp_parent(root)) as tmp:
        tar_path = Path(tmp) / "models.tar"
        entry = {k: v for k, v in manifest.items() if k not in ("installed", "pack")} | {"name": name}
        body = json.dumps({"format": FORMAT, "version": VERSION, "models": [entry]}).encode()
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, PACK_MANIFEST, body)
            for rel, file_entry in sorted(entry["files"].items()):
                _add_file(tar, f"{name}/{rel}", path / rel, file_entry)
        return install(tar_path, directory=root)


def _forget(done: Sequence[InstalledPack]) -> None:
    forget([ref for p in done for ref in (p.name, p.source, p.source.removeprefix("hf-hub:")) if ref])


# -- verifying ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One installed model's verification: ``ok``, or the first ``problem`` found."""

    name: str
    path: Path
    ok: bool
    problem: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict, compare=False)


def _differences(expected: Any, got: Any, prefix: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(expected) | set(got), key=str):
            out += _differences(expected.get(key), got.get(key), f"{prefix}{key}.")
        return out
    if expected != got:
        return [f"{prefix.rstrip('.')} {json.dumps(got)} instead of {json.dumps(expected)}"]
    return []


def verify(names: Sequence[str] = (), *, directory: str | os.PathLike | None = None, load: bool = True) -> list[Check]:
    """Check installed packs (all, or ``names``): every file against the manifest's sha256, then
    (``load``) load the model on the CPU with the hub in offline mode and compare the preprocessing
    the loader really uses with the one recorded when the pack was made."""
    packs = installed(directory)
    if names:
        known = {p.name: p for p in packs}
        unknown = [n for n in names if n not in known]
        if unknown:
            have = ", ".join(known) or "none"
            raise ModelUnavailableError(f"no installed model pack named {unknown[0]} in {directory or models_dir()} (installed: {have})")
        packs = [known[n] for n in names]
    checks = []
    for p in packs:
        problem = file_problems(p.path, p.manifest, memo=False)
        if problem:
            checks.append(Check(p.name, p.path, False, problem))
            continue
        if not load:
            checks.append(Check(p.name, p.path, True))
            continue
        row = family(p.family)
        if row is None:
            checks.append(Check(p.name, p.path, False, f"no loader for the {p.family} model family in this medzero"))
            continue
        try:
            with hub.offline():
                encoder = row.load(f"local-dir:{p.path}", revision=None, device="cpu", cfg=None)
        except ModelUnavailableError as exc:
            checks.append(Check(p.name, p.path, False, f"it does not load offline: {getattr(exc, 'reason', exc)}"))
            continue
        used = _jsonable(encoder.preprocess_config()) if hasattr(encoder, "preprocess_config") else {}
        diffs = _differences(p.manifest.get("preprocess") or {}, used)
        if diffs:
            checks.append(Check(p.name, p.path, False, "the loader's preprocessing differs from the pack's: " + "; ".join(diffs[:4]), used))
        else:
            checks.append(Check(p.name, p.path, True, "", used))
    return checks
