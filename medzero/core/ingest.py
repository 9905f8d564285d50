"""The ingest pipeline: from what a user passed to decoded items ready for an encoder.

One path for every entry point (``Classifier``, ``CaseIndex``, the CLI, the app, the service)::

    paths | folders | bytes | file objects | arrays | scheme://urls
        │ expand()            folders walked once; scheme handlers (dicomweb://) list their items
        ▼
    Source                    sniffed once: name, data, modality, format (or the error that stopped it)
        │ Pipeline.batches()  the next batch decodes in worker threads while the caller embeds this one
        ▼
    Prepared                  Modality.prepare: the decoded item, PHI-safe metadata, measurements
        │ Pipeline.embed()    one forward pass per modality per batch
        ▼
    vectors                   float32, L2-normalised

A source's first bytes are read once, by :func:`Source.of`; the loaders get the sniffed format and
do not sniff again. Nothing here knows a modality by name: modalities come from the registry
(:mod:`medzero.core.modality`).
"""
from __future__ import annotations

import hashlib
import importlib
import itertools
import logging
import os
import queue
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import BadInputError, MedzeroError
from .modality import get_modality, modalities
from .sniff import MEDIA_SUFFIXES, sniff_source

if TYPE_CHECKING:  # pragma: no cover
    from .contracts import Encoder

__all__ = [
    "Source",
    "Prepared",
    "Pipeline",
    "map_ahead",
    "expand",
    "iter_expand",
    "source_name",
    "register_scheme",
    "declare_scheme",
    "unrecognised_message",
]

_logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: scheme -> handler(url) -> iterable of sources (paths, bytes, named file objects or Sources),
#: or the "module:function" that holds it, imported on first use
_SCHEMES: dict[str, "Callable[[str], Iterable[Any]] | str"] = {}
_SCHEME_EXTRAS: dict[str, str] = {}


def register_scheme(scheme: str, handler: Callable[[str], Iterable[Any]]) -> None:
    """Let ``scheme://...`` sources expand through ``handler`` (e.g. ``dicomweb`` for a PACS).

    The handler may return a generator: sources are pulled from it as the pipeline needs them,
    so a study of thousands of instances is never held in memory at once.
    """
    _SCHEMES[scheme.lower()] = handler


def declare_scheme(scheme: str, target: str, *, extra: str | None = None) -> None:
    """Like :func:`register_scheme` with the handler named ``"module:function"``, imported on first
    use; when it cannot be imported, the error names the pip ``extra`` that provides it."""
    _SCHEMES.setdefault(scheme.lower(), target)
    if extra:
        _SCHEME_EXTRAS[scheme.lower()] = extra


def _scheme_handler(scheme: str) -> Callable[[str], Iterable[Any]] | None:
    handler = _SCHEMES.get(scheme)
    if isinstance(handler, str):
        module, _, name = handler.partition(":")
        try:
            handler = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            extra = _SCHEME_EXTRAS.get(scheme)
            how = f"pip install 'medzero[{extra}]'" if extra else f"install what {module} needs"
            raise BadInputError(f"{scheme}:// sources need packages that are not installed ({exc.name or exc}); {how}") from None
        _SCHEMES[scheme] = handler
    return handler


def source_name(source: Any, *, absolute: bool = False) -> str:
    """How results and errors call a source: its path (absolute if asked), else a stream's
    ``name``, else ``<bytes>``, ``<array>`` or ``<file>``."""
    if isinstance(source, Source):
        return os.path.abspath(source.name) if absolute and source.is_path else source.name
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return os.path.abspath(path) if absolute and not _SCHEME.match(path) else path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (np.ndarray, tuple, dict)):
        return "<array>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and name else "<file>"


def unrecognised_message(name: str) -> str:
    """``X is neither audio nor an image (unrecognised content; expected WAV, ... or TIFF)``."""
    known = modalities()
    words = [w for m in known for w in m.format_words]
    formats = ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)
    kinds = " nor ".join(m.word for m in known)
    return f"{name} is neither {kinds} (unrecognised content; expected {formats})"


@dataclass(frozen=True)
class Source:
    """One input, sniffed once.

    ``data`` is a path (``str``), bytes, a seekable binary file object or an in-memory array;
    ``modality`` and ``format`` come from the content (``modality`` is ``None`` for an array until
    a task or the registry decides); ``error`` is set instead when it cannot be read at all.
    """

    name: str
    data: Any
    modality: str | None = None
    format: str | None = None
    error: MedzeroError | None = None

    @classmethod
    def of(cls, obj: Any, *, name: str | None = None, absolute: bool = False) -> "Source":
        """Sniff ``obj`` (a Source is returned as it is); a problem lands in ``error``, never raises."""
        if isinstance(obj, Source):
            return obj
        label = name or source_name(obj, absolute=absolute)
        data = os.path.abspath(os.fspath(obj)) if absolute and isinstance(obj, (str, os.PathLike)) else obj
        if isinstance(data, os.PathLike):
            data = os.fspath(data)
        try:
            modality, fmt = sniff_source(obj)
        except MedzeroError as exc:
            return cls(label, data, error=exc)
        except OSError as exc:
            return cls(label, data, error=BadInputError(f"cannot read {label}: {exc.strerror or exc}"))
        if modality == "array":
            return cls(label, data, None, None)
        if modality is None:
            if _is_empty(data):
                return cls(label, data, error=BadInputError(f"{label} is empty (0 bytes)"))
            return cls(label, data, error=BadInputError(unrecognised_message(label)))
        return cls(label, data, modality, fmt)

    @property
    def is_path(self) -> bool:
        return isinstance(self.data, str)

    @property
    def is_array(self) -> bool:
        return self.error is None and self.modality is None

    def with_modality(self, modality: str) -> "Source":
        return replace(self, modality=modality)

    def read(self, limit: int | None = None) -> "Source":
        """The same source with its content in memory (``bytes``), read once; arrays stay as they are.

        ``limit``: refuse more than this many bytes (a one-line error) before reading them.
        """
        if self.error is not None or self.is_array or isinstance(self.data, bytes):
            return self
        if isinstance(self.data, (bytearray, memoryview)):
            return replace(self, data=bytes(self.data))
        try:
            if self.is_path:
                size = os.path.getsize(self.data)
                if limit is not None and size > limit:
                    raise BadInputError(f"{self.name}: {size:,} bytes is over the limit of {limit:,} bytes")
                with open(self.data, "rb") as fh:
                    data = fh.read()
            else:
                data = self.data.read(-1 if limit is None else limit + 1)
                if limit is not None and len(data) > limit:
                    raise BadInputError(f"{self.name}: over the limit of {limit:,} bytes")
        except OSError as exc:
            raise BadInputError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        return replace(self, data=bytes(data))

    def sha256(self) -> str:
        """The content hash (reads a path in blocks; use :meth:`read` first to read a file once)."""
        digest = hashlib.sha256()
        if isinstance(self.data, (bytes, bytearray, memoryview)):
            digest.update(self.data)
        elif self.is_path:
            with open(self.data, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            raise BadInputError(f"cannot hash {self.name}: pass a path or bytes")
        return digest.hexdigest()


@dataclass
class Prepared:
    """A source decoded for its modality's encoder, or the one-line error that stopped it.

    ``item`` is what ``encoder.embed`` takes (an AudioClip at the model rate, a LoadedImage);
    ``metrics`` are measurements scoring rules may use; ``metadata`` is PHI-safe; ``columns`` are
    the case index's columns (``duration_s``, ``width``, ``height``). ``input`` is the item's model
    input made ahead, in the decoding thread, by an encoder that has ``prepare_input(item)``
    (CLAP's log-mel features, an image's preprocessed pixels); ``embed`` takes it instead of the item.
    """

    source: Source
    item: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    error: MedzeroError | None = None
    input: Any = None
    #: Where a voice activity detector heard speech, ``(start, end)`` seconds (audio); the Result carries it.
    speech_segments: list[tuple[float, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def modality(self) -> str | None:
        return self.source.modality

    @property
    def ok(self) -> bool:
        return self.error is None


def expand(sources: "Iterable[Any] | Any", *, absolute: bool = False) -> list[Source]:
    """Every source as a sniffed :class:`Source`, as a list (see :func:`iter_expand`)."""
    return list(iter_expand(sources, absolute=absolute))


def is_url(obj: Any) -> bool:
    """A ``scheme://`` source (expanded by a scheme handler) rather than a local path."""
    return isinstance(obj, str) and bool(_SCHEME.match(obj)) and not os.path.exists(obj)


def iter_expand(sources: "Iterable[Any] | Any", *, absolute: bool = False) -> Iterator[Source]:
    """Every source as a sniffed :class:`Source`, folders walked once and scheme URLs expanded, lazily.

    Files named explicitly are kept whatever they hold, so that a bad file gets its own error row;
    files found inside a folder (sorted, hidden ones skipped) are kept only when their content is
    of a registered modality. ``absolute`` makes paths absolute (a case index must point at them).
    """
    if not isinstance(sources, (list, tuple, Iterator)):  # one source (a path, bytes, an array, ...)
        sources = [sources]
    for obj in sources:
        if is_url(obj):
            yield from _expand_url(obj, absolute)
        elif isinstance(obj, (str, os.PathLike)) and os.path.isdir(obj):
            yield from _walk(Path(obj), absolute)
        else:
            yield Source.of(obj, absolute=absolute)


def _walk(root: Path, absolute: bool) -> Iterator[Source]:
    """A folder's recordings and images by content, sorted; nothing in it passed over without a word.

    Hidden entries (``.DS_Store``, ``.git/``) are left out. A file that is empty or unrecognised
    but named like a recording or an image (``visit.wav`` holding text) was meant as an input: it
    gets an error row. Other files (``notes.txt``) and what is not a regular file (a FIFO, a
    socket) are reported as skipped in one warning per folder. A folder with nothing to classify
    is an error row of its own, so that a run over an empty folder cannot succeed silently.
    """
    known = {m.name for m in modalities()}
    found = 0
    skipped: list[str] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        source = Source.of(str(path), absolute=absolute)
        if source.error is None and source.modality in known:
            found += 1
            yield source
        elif path.suffix.lower() in MEDIA_SUFFIXES and path.is_file():
            found += 1
            yield source
        else:
            skipped.append(str(relative) + ("" if path.is_file() else " (not a regular file)"))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        _logger.warning("%s: skipped %d file%s that %s neither audio nor an image: %s", root, len(skipped),
                        "s" if len(skipped) > 1 else "", "are" if len(skipped) > 1 else "is", shown)
    if not found:
        other = f" ({len(skipped)} other file{'s' if len(skipped) > 1 else ''} skipped)" if skipped else ""
        name = os.path.abspath(root) if absolute else os.fspath(root)
        yield Source(name, name, error=BadInputError(f"{name}: no recordings or images in this folder{other}"))


def _is_empty(data: Any) -> bool:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data) == 0
    if isinstance(data, str):
        try:
            return os.path.getsize(data) == 0
        except OSError:
            return False
    return False


def _expand_url(url: str, absolute: bool) -> Iterator[Source]:
    scheme = _SCHEME.match(url).group(1).lower()
    try:
        handler = _scheme_handler(scheme)
        if handler is None:
            raise BadInputError(f"{url}: no handler for {scheme}:// sources")
        for item in handler(url):
            yield Source.of(item, absolute=absolute)
    except MedzeroError as exc:
        yield Source(url, url, error=exc)


class Pipeline:
    """Decodes sources batch by batch for the encoders, the next batch in threads while this one embeds.

    Args:
        encoder: ``encoder(modality) -> Encoder`` (loaded once per process by the registry).
        limits: per-modality input limits (default: each modality's own, from the environment).
        batch_size: sources per batch (one forward pass per modality per batch).
        workers: decoding threads.
        array_modality: the modality of in-memory arrays (a task's); ``None``: the first modality
            whose ``accepts_array`` says yes.
        check: called with each source before it is decoded; a :class:`MedzeroError` it raises
            becomes that source's error (e.g. a task of the other modality).
        settings: per-modality fields filled into its limits where they are ``None`` (left to the
            caller), each a value or a function of no arguments asked when an input is prepared,
            e.g. ``{"audio": {"mos": classifier_uses_dnsmos}}``.
    """

    def __init__(
        self,
        encoder: "Callable[[str], Encoder]",
        *,
        limits: Mapping[str, Any] | None = None,
        batch_size: int = 8,
        workers: int = 2,
        array_modality: str | None = None,
        check: Callable[[Source], None] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.encoder = encoder
        self.limits = dict(limits or {})
        self.settings = {name: dict(values) for name, values in (settings or {}).items()}
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers))
        self.array_modality = array_modality
        self.check = check

    def limits_for(self, modality: Any) -> Any:
        """``modality``'s limits (given, else its own from the environment, read now), with this
        pipeline's settings filled in where the limits leave them ``None``."""
        limits = self.limits.get(modality.name) or modality.limits()
        fill = {name: value() if callable(value) else value
                for name, value in self.settings.get(modality.name, {}).items() if getattr(limits, name, 0) is None}
        return replace(limits, **fill) if fill else limits

    def resolve(self, source: Source) -> Source:
        """Give an in-memory array its modality."""
        if not source.is_array:
            return source
        if self.array_modality is not None:
            return source.with_modality(self.array_modality)
        for modality in modalities():
            if modality.accepts_array(source.data):
                return source.with_modality(modality.name)
        return replace(source, error=BadInputError(f"{source.name}: cannot tell which modality this array is; name a task"))

    def prepare(self, source: Source) -> Prepared:
        """Decode one source; a problem lands in ``Prepared.error``."""
        source = self.resolve(Source.of(source))
        if source.error is not None:
            return Prepared(source, error=source.error)
        try:
            if self.check is not None:
                self.check(source)
            modality = get_modality(source.modality)
            limits = self.limits_for(modality)
            encoder = self.encoder(modality.name)
            prepared = modality.prepare(source, encoder, limits)
            prepare_input = getattr(encoder, "prepare_input", None)
            if prepare_input is not None and prepared.ok and prepared.item is not None:
                prepared.input = prepare_input(prepared.item)  # off the embedding thread's path
            return prepared
        except MedzeroError as exc:
            return Prepared(source, error=exc)
        except Exception as exc:  # noqa: BLE001 - a decoder's fault costs this source, never the batch
            return Prepared(source, error=decode_failure(source, exc))

    def batches(self, sources: Iterable[Any]) -> Iterator[list[Prepared]]:
        """Prepared batches in order; batch i+1 decodes in the worker threads while batch i is used.

        ``sources`` may be a lazy iterable (a scheme handler's generator): it is pulled by a
        background thread a batch ahead, so fetching overlaps embedding too, and at most about
        three batches are in memory at a time.
        """
        chunks = _chunks(prefetch(sources, 2 * self.batch_size), self.batch_size)
        first = next(chunks, None)
        if first is None:
            return
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medzero-ingest") as pool:
            pending: list[Future] = [pool.submit(self.prepare, s) for s in first]
            while pending:
                ready = [f.result() for f in pending]
                following = next(chunks, None)
                pending = [pool.submit(self.prepare, s) for s in following] if following else []
                yield ready

    def embed(self, batch: Sequence[Prepared]) -> list[np.ndarray | None]:
        """Each prepared item's embedding (``None`` for failed items): one forward pass per modality.

        An encoder failure becomes the error of every item it was given.
        """
        out: list[np.ndarray | None] = [None] * len(batch)
        by_modality: dict[str, list[int]] = {}
        for i, p in enumerate(batch):
            if p.ok:
                by_modality.setdefault(p.modality, []).append(i)
        for modality, indices in by_modality.items():
            try:
                vectors = self.encoder(modality).embed([_model_input(batch[i]) for i in indices])
            except Exception as exc:  # noqa: BLE001 - the batch's items get the error; the run goes on
                if not isinstance(exc, MedzeroError):
                    _logger.error("the %s model failed on a batch of %d (%s)", modality, len(indices), type(exc).__name__)
                    exc = MedzeroError(f"the {modality} model failed on this input ({type(exc).__name__}); see the log")
                for i in indices:
                    batch[i].error = exc
                continue
            for i, vector in zip(indices, vectors):
                out[i] = vector
        return out


def decode_failure(source: Source, exc: BaseException) -> BadInputError:
    """The one-line error of a source whose decoder raised something other than a MedzeroError.

    Only the exception's type is named: a library's message may quote the file's own bytes or
    element values (patient data), so it goes neither into the error nor into the log.
    """
    _logger.debug("decoding failed with %s", type(exc).__name__)
    noun = get_modality(source.modality).noun if source.modality else "a recording or an image"
    return BadInputError(
        f"{source.name} cannot be decoded as {noun}: the file is damaged or malformed ({type(exc).__name__} in the decoder)"
    )


def _model_input(prepared: Prepared) -> Any:
    return prepared.input if prepared.input is not None else prepared.item


def map_ahead(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``fn`` of each item in order, the next one computed in a worker thread while the caller uses
    this one (an encoder's features of batch i+1 while batch i runs through the model)."""
    if len(items) <= 1:
        yield from (fn(item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-ahead") as pool:
        pending = pool.submit(fn, items[0])
        for item in items[1:]:
            ready = pending.result()
            pending = pool.submit(fn, item)
            yield ready
        yield pending.result()


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_DONE = object()


def prefetch(items: Iterable[Any], size: int) -> Iterator[Any]:
    """``items`` pulled by a background thread up to ``size`` ahead (lists are returned as they are)."""
    if isinstance(items, (list, tuple)):
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def pull() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            buffer.put(exc)

    thread = threading.Thread(target=pull, name="medzero-prefetch", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()

