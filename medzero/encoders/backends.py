"""Inference backends: the model's own torch modules, or graphs exported from them to ONNX.

- ``auto`` (the default): on a GPU, ``torch``; on the CPU, the backends the model's family declared
  as measured best there, best first (``prefer_on_cpu`` of its
  :class:`~medzero.encoders.registry.Family` row; CLAP: ``openvino`` then ``onnx``, open_clip:
  ``torch``), the first whose runtime is installed. If it cannot load the model (a runtime error),
  ``auto`` tries the next, and ``torch`` last; an export that cannot be had (refused, or its cache
  unwritable) fails every exported backend alike, so it goes straight to ``torch``. One warning
  names what failed and what was used: ``auto`` never fails where ``torch`` works.
- ``torch``: the towers run as the model library built them.
- ``onnx``: each tower (audio or image, and text) is exported once per model fingerprint with
  torch's TorchScript ONNX exporter, checked against torch on a probe batch (largest difference at
  most :data:`TOLERANCE`, else the export is refused), kept in ``<cache>/onnx/<model>-<key>/`` and
  run by ONNX Runtime on the CPU. Once a model is exported, loading it reads no torch weights, and
  the CLAP path imports neither torch nor transformers.
- ``openvino``: the same export, compiled by OpenVINO's CPU plug-in in float32 (it fuses the
  attention blocks of CLAP's Swin audio tower, which ONNX Runtime does not: about twice as fast
  there). Scores equal torch's to :data:`TOLERANCE`, as with ``onnx``. The compiled model is kept
  in ``<export>/openvino-cache/`` (as large again as the export), so later processes start as
  fast as ``onnx`` (:func:`_load_openvino`).
- ``onnx-int8``: as ``onnx``, with the audio or image tower's matrix products quantised to int8
  (dynamic quantisation: int8 weights, activations quantised per batch). It is a different
  numerical model: its fingerprint ends in ``+int8``, so it never shares a case-index space or a
  cached text embedding with the float model. ``bench/bench_audio.py`` and ``bench/bench_image.py``
  print how far its scores move.

A family supports these backends by naming, in its ``Family`` row, an ``onnx`` loader
(``"module:function"``) that loads it with ``backend=``. The cache directory is
``$MEDZERO_CACHE_DIR/onnx`` (default ``~/.cache/medzero/onnx``); an export is written into a
temporary folder beside it and renamed into place when complete, so a killed export leaves no half
model, and two processes exporting the same model at once both end up using one complete copy. The
temporary folder goes on any failure, Ctrl-C included (:func:`discard_unfinished_exports` for a
process that exits without waiting for the exporting thread); one a killed process left is removed
by the next export on that machine.

An export that is refused (torch cannot export the model, or the runtime's output differs from
torch's) is remembered: ``<export folder>.refused.json`` says why, with the versions of medzero,
torch, onnx and the runtime. While they stay the same, later processes do not try again: ``auto``
loads torch at once with one warning, and an exported backend asked for by name is the same error
at once. An upgrade of any of them, or deleting the file, tries again. ``MEDZERO_ONNX_OPSET`` sets
the ONNX opset exports target (default :data:`OPSET`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..core.errors import MedzeroError, ModelUnavailableError
from ..core.files import fsync_dir, fsync_file, replacing
from . import registry

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "TOLERANCE",
    "resolve",
    "choose",
    "candidates",
    "checked",
    "use",
    "use_in_processes",
    "cpu_device",
    "cpu_threads",
    "cpu_session",
    "is_onnx",
    "quantised",
    "runtime",
    "require",
    "cache_root",
    "export_dir",
    "exported",
    "read_export",
    "export_onnx",
    "opset",
    "refused",
    "discard_unfinished_exports",
    "building",
    "quantise",
    "Session",
    "BackendError",
    "ExportUnavailable",
    "Exported",
    "check_close",
    "package_versions",
]

_logger = logging.getLogger(__name__)


class BackendError(ModelUnavailableError):
    """An exported backend cannot run a model (its runtime missing, an export refused or broken),
    as opposed to the model itself being unavailable: ``auto`` goes on to its next backend on it."""


class ExportUnavailable(BackendError):
    """The ONNX export itself cannot be had (refused, or its cache cannot be written): every
    exported backend would fail alike, so ``auto`` goes straight to torch."""


BACKENDS = ("auto", "torch", "onnx", "openvino", "onnx-int8")
#: The runtime that runs each exported backend, and the pip extra that installs it.
_RUNTIMES = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "onnx": "onnx"}
DEFAULT_BACKEND = "auto"
ENV = "MEDZERO_BACKEND"
#: The help of every command's ``--backend`` option.
OPTION_HELP = (
    "auto [default]: the measured best for each model (CPU: openvino if installed, else onnx, for CLAP; torch for open_clip; GPU: torch); "
    "onnx or openvino: ONNX Runtime or OpenVINO on the CPU, the model exported once (openvino needs "
    "medzero[openvino]); onnx-int8: int8 audio/image tower, faster, scores move slightly."
)
#: The largest difference between an exported tower's embeddings and torch's that is accepted.
TOLERANCE = 1e-4
#: Bumped when the exported graphs change meaning, so older exports are not reused.
EXPORT_VERSION = 1
#: The ONNX opset exports target, unless ``MEDZERO_ONNX_OPSET`` says otherwise.
OPSET = 17
OPSET_ENV = "MEDZERO_ONNX_OPSET"

_process_default: str | None = None
_default_lock = threading.Lock()


def resolve(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else the command line's ``--backend`` (see
    :func:`use`), else ``MEDZERO_BACKEND``, else ``auto``. An unknown name is a one-line error."""
    name = backend or _process_default or os.environ.get(ENV) or DEFAULT_BACKEND
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ModelUnavailableError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def choose(backend: str, family: str, device: str) -> str:
    """The backend ``backend`` stands for with a ``family`` model on ``device`` (a resolved device:
    ``cpu``, ``cuda``, ...): itself, unless it is ``auto``."""
    return candidates(backend, family, device)[0]


def candidates(backend: str, family: str, device: str) -> tuple[str, ...]:
    """The backends to try, in order, for ``backend`` with a ``family`` model on ``device``:
    ``backend`` alone unless it is ``auto``; for ``auto`` on a CPU, those of the family's
    ``prefer_on_cpu`` whose runtime is installed, then ``torch`` (on a GPU, ``torch``)."""
    if backend != "auto":
        return (backend,)
    row = registry.family(family)
    preferred = row.preferred_on_cpu() if row is not None else ()
    if device != "cpu":
        return ("torch",)
    installed = tuple(name for name in preferred if name != "torch" and importlib.util.find_spec(runtime(name)) is not None)
    return (*installed, "torch")


def checked(backend: str | None, device: str | None = "auto") -> str:
    """:func:`resolve`, and for the exported backends a one-line error now (not at the first file)
    when their runtime is missing or a GPU was asked for."""
    name = resolve(backend)
    if is_onnx(name):
        cpu_device(name, device)
        require(runtime(name), why=f"the {name} backend")
    return name


def use_in_processes(backend: str | None, device: str | None = "auto") -> None:
    """For a long-running command (``serve``, ``listen``): check ``backend`` now (a missing runtime
    is one line before anything starts) and make it the default of this process and of the worker
    processes it starts, through ``MEDZERO_BACKEND``. ``None`` changes nothing."""
    if backend is not None:
        os.environ[ENV] = checked(backend, device)


@contextmanager
def use(backend: str | None) -> Iterator[None]:
    """Make ``backend`` the default of every encoder created while the block runs, in every thread
    (the CLI wraps each command in it; ``None`` leaves the default as it is)."""
    global _process_default
    if backend is not None:
        resolve(backend)  # refuse an unknown name before anything runs
    with _default_lock:
        previous, _process_default = _process_default, backend or _process_default
    try:
        yield
    finally:
        with _default_lock:
            _process_default = previous


def is_onnx(backend: str) -> bool:
    """Whether ``backend`` runs the exported ONNX graphs (every backend but ``torch``)."""
    return backend in _RUNTIMES


def runtime(backend: str) -> str:
    """``onnxruntime`` or ``openvino``: the module that runs an exported backend."""
    return _RUNTIMES[backend]


def quantised(backend: str) -> bool:
    return backend == "onnx-int8"


def cpu_device(backend: str, device: str | None) -> str:
    """The device of a non-torch backend: the CPU (``auto`` and ``cpu``), else a one-line error."""
    wanted = (device or "auto").lower()
    if wanted not in ("auto", "cpu"):
        raise ModelUnavailableError(
            f"the {backend} backend runs on the CPU, not {wanted}; use --device cpu, or --backend torch on {wanted}"
        )
    return "cpu"


def require(module: str, *, why: str) -> Any:
    """Import an optional dependency of the exported backends, or raise a one-line error naming the extra."""
    if importlib.util.find_spec(module) is None:
        extra = _EXTRAS.get(module, "onnx")
        raise BackendError(f"{why} needs {module}, which is not installed; pip install 'medzero[{extra}]', or use --backend torch")
    return importlib.import_module(module)


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the libraries an export depends on (read without importing them)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


# -- the export cache ------------------------------------------------------------------------------


def opset() -> int:
    """The ONNX opset exports target: ``MEDZERO_ONNX_OPSET`` if set, else :data:`OPSET`."""
    raw = os.environ.get(OPSET_ENV, "").strip()
    if not raw:
        return OPSET
    if not raw.isdigit():
        raise BackendError(f"{OPSET_ENV} must be a whole number (an ONNX opset such as {OPSET}), not {raw!r}")
    return int(raw)


def cache_root() -> Path:
    from .cache import cache_dir

    return cache_dir() / "onnx"


def export_dir(fingerprint: str, family: str, versions: Mapping[str, str]) -> Path:
    """Where a model's exported towers live: readable model name, then a hash of everything the
    export depends on (fingerprint, family, exporter version, library versions)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", fingerprint).strip("._")[:64] or "model"
    key = json.dumps({"fingerprint": fingerprint, "family": family, "export": EXPORT_VERSION, "opset": opset(), **versions}, sort_keys=True)
    return cache_root() / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def read_export(directory: Path) -> dict[str, Any] | None:
    """The metadata of the complete export in ``directory``, or ``None`` (absent or incomplete)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = meta.get("files", []) if isinstance(meta, dict) else None
    if not isinstance(files, list) or not all((directory / f).is_file() for f in files):
        return None
    return meta


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_dir(directory)


#: This machine's name as it appears in temporary export folders (whose owner may be gone).
HOST = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:40] or "host"
#: ``.<export>.tmp-<host>-<pid>-<random>.tmp``: which process on which machine is writing it.
_TEMPORARY = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^/]*\.tmp$")
#: Temporary export folders this process is writing (removed by discard_unfinished_exports).
_UNFINISHED: set[Path] = set()
_UNFINISHED_LOCK = threading.Lock()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _remove_stale_temporaries(root: Path, older_than_s: float = 3600.0) -> None:
    """Temporary export folders a killed process left: its process is gone (same machine), or
    they are hours old (a cache shared between machines), so never one being written."""
    now = time.time()
    for path in root.glob(".*.tmp"):
        try:
            owner = _TEMPORARY.search(path.name)
            dead = owner is not None and owner["host"] == HOST and _process_gone(int(owner["pid"]))
            if path.is_dir() and (dead or now - path.stat().st_mtime > older_than_s):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def discard_unfinished_exports() -> None:
    """Remove the temporary folders of exports still running in this process: for a process that
    exits at once (Ctrl-C during a load) without waiting for the thread that exports."""
    with _UNFINISHED_LOCK:
        unfinished = list(_UNFINISHED)
    for path in unfinished:
        shutil.rmtree(path, ignore_errors=True)


# -- refused exports ---------------------------------------------------------------------------------


def _refusal_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".refused.json")


def _refusal_versions(runtime_module: str) -> dict[str, str]:
    """What a refusal depends on beyond the export folder's key: an upgrade of any retries."""
    return package_versions("medzero", "torch", "onnx", runtime_module)


def refused(directory: Path, runtime_module: str = "onnxruntime") -> BackendError | None:
    """The remembered refusal of the export that belongs in ``directory`` (as a one-line error),
    or ``None``: never refused, or refused under other versions of medzero, torch, onnx or the runtime."""
    marker = _refusal_path(directory)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("versions") != _refusal_versions(runtime_module):
        return None
    return ExportUnavailable(
        f"its ONNX export was refused on {str(record.get('created', ''))[:10]}, remembered in {marker} (delete it, or "
        f"upgrade medzero, torch, onnx or {runtime_module}, to try again): {record.get('reason', '')}"
    )


def _remember_refusal(directory: Path, runtime_module: str, reason: str) -> None:
    record = {"reason": reason, "versions": _refusal_versions(runtime_module), "runtime": runtime_module,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with replacing(_refusal_path(directory)) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    except OSError as exc:  # a read-only cache: the next process tries again
        _logger.debug("cannot remember the refused export in %s (%s)", directory.parent, exc)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _refusal(exc: Exception, what: str) -> BackendError:
    """The one-line error of an export that failed for a reason that would fail it again (the
    exporter or the runtime refusing the model), as opposed to the machine (disk, memory)."""
    if isinstance(exc, BackendError):
        return exc
    return BackendError(
        f"torch cannot export {what} to ONNX opset {opset()} ({type(exc).__name__}: {_one_line(exc)}); use --backend torch for this model"
    )


def exported(
    directory: Path, build: Callable[[Path], dict[str, Any]], *, runtime_module: str = "onnxruntime", what: str = ""
) -> dict[str, Any]:
    """The metadata of the complete export in ``directory``, building it first if there is none.

    ``build(tmp)`` writes the files into the empty folder ``tmp`` and returns the metadata, which
    must list them under ``files``; ``meta.json`` is written last, everything is synced, and the
    folder is renamed to ``directory`` in one step. A folder without a valid ``meta.json`` and all
    its files is not an export and is replaced. The temporary folder goes whatever happens.

    A refused export (``build`` raising anything but an ``OSError``, a ``MemoryError`` or an
    interruption) is a one-line :class:`BackendError`, remembered beside ``directory`` (see
    :func:`refused`, checked first: a remembered refusal raises at once).
    """
    meta = read_export(directory)
    if meta is not None:
        return meta
    earlier = refused(directory, runtime_module)
    if earlier is not None:
        raise earlier
    root = directory.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{HOST}-{os.getpid()}-", suffix=".tmp", dir=root))
    except OSError as exc:
        raise ExportUnavailable(f"cannot write the onnx export cache in {root}: {exc.strerror or exc}; set MEDZERO_CACHE_DIR") from None
    with _UNFINISHED_LOCK:
        _UNFINISHED.add(tmp)
    try:
        try:
            meta = dict(build(tmp))
        except (OSError, MemoryError) as exc:  # the machine, not the model: the next process tries again
            raise ExportUnavailable(f"the ONNX export of {what or directory.name} failed ({type(exc).__name__}: {_one_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - the exporter and the runtimes raise many types
            error = ExportUnavailable(str(_refusal(exc, what or directory.name)))
            _remember_refusal(directory, runtime_module, str(error))
            _logger.info("the ONNX export of %s was refused; remembered in %s", what or directory.name, _refusal_path(directory))
            raise error from None
        meta.setdefault("files", [])
        meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        _fsync_tree(tmp)
        try:
            os.rename(tmp, directory)
        except OSError:
            if read_export(directory) is None:  # a broken leftover, not another process's export
                shutil.rmtree(directory, ignore_errors=True)
                os.rename(tmp, directory)
        fsync_dir(root)
    finally:
        with _UNFINISHED_LOCK:
            _UNFINISHED.discard(tmp)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _refusal_path(directory).unlink(missing_ok=True)  # refused under other versions, exported now
    final = read_export(directory)
    if final is None:  # pragma: no cover - the rename above either landed or raised
        raise BackendError(f"the onnx export in {directory} is incomplete; delete it and try again")
    return final


def quantise(directory: Path, name: str) -> Path:
    """``<name>.int8.onnx`` beside ``<name>.onnx`` (made on first use, atomically): the matrix
    products quantised to int8 with dynamic activation quantisation, per output channel."""
    target = directory / f"{name}.int8.onnx"
    if target.is_file():
        return target
    require("onnx", why="int8 quantisation")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)  # the quantiser logs "consider pre-processing" on the root logger
    try:
        with replacing(target) as tmp:
            # MatMul/Gemm only: ONNX Runtime's ConvInteger is slower than its float convolution.
            quantize_dynamic(
                str(directory / f"{name}.onnx"), tmp, weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
    finally:
        root.removeFilter(advice)
    return target


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


# -- running ---------------------------------------------------------------------------------------


def cpu_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` if set, else the CPUs this process may run on."""
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_BUILDING = 0  # sessions being built (compiled) right now, in any thread
_BUILDING_LOCK = threading.Lock()


def building() -> bool:
    """Whether a runtime is building a session in this process right now (seconds of native code,
    often in the background thread of :meth:`Session.preload`)."""
    return _BUILDING > 0


class Session:
    """One exported tower, run with numpy inputs by ONNX Runtime or OpenVINO (``runtime``), loaded
    on first use.

    ONNX Runtime's threads do not spin while waiting for work, so the ingest pipeline's decoding
    threads get the cores between operators (on the 2-core benchmark machine this measured faster
    than spinning). OpenVINO compiles in float32 (no bf16 down-casting on CPUs that could) with one
    infer request per calling thread.
    """

    def __init__(self, path: Path, runtime: str = "onnxruntime", *, keep_compiled: bool = True):
        self.path = Path(path)
        self.runtime = runtime
        self.keep_compiled = keep_compiled  # OpenVINO: through the cache of compiled models (not for an export's check)
        self._model: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def load(self) -> Any:
        global _BUILDING
        with self._lock:
            if self._model is None:
                module = require(self.runtime, why="running an exported model")
                with _BUILDING_LOCK:
                    _BUILDING += 1
                try:
                    self._model = _load_openvino(module, self.path, keep=self.keep_compiled) if self.runtime == "openvino" else _load_onnxruntime(module, self.path)
                except MedzeroError:
                    raise
                except Exception as exc:  # the runtimes raise their own exception types
                    raise BackendError(
                        f"{self.runtime} cannot load {self.path} ({type(exc).__name__}); delete {self.path.parent} to export it again"
                    ) from None
                finally:
                    with _BUILDING_LOCK:
                        _BUILDING -= 1
            return self._model

    def preload(self) -> "Session":
        """Start loading in a background thread (the model compiles while the first files decode);
        a failure there is raised again by the first call."""

        def load_quietly() -> None:
            try:
                self.load()
            except Exception:  # the first call loads again and raises it
                pass

        # Not a daemon: a runtime still building its session when the interpreter exits aborts
        # the process ("terminate called without an active exception"); exit waits for it instead.
        threading.Thread(target=load_quietly, name="medzero-session-load", daemon=False).start()
        return self

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        model = self.load()
        if self.runtime != "openvino":
            return model.run(None, inputs)[0]
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = model.create_infer_request()
        return np.array(request.infer(inputs)[model.output(0)])


class Exported:
    """What the exported encoders share: their two sessions (the audio or image tower, made to
    load at once in the background; the text tower on first use), a fingerprint that ends in
    ``+int8`` for the quantised model, a different numerical model that never shares an index
    space or a text-cache entry with the float one, and the torch model loaded only when something
    needs it (model packs): ``torch_loader(source, revision=, device=, cfg=)`` given ``torch_source``."""

    backend: str
    export_dir: Path
    torch_loader: Callable[..., Any]
    torch_source: tuple[str, str | None, Any] | None = None  # (source, revision, cfg) it was loaded from
    _torch: Any = None

    def torch_encoder(self) -> Any:
        if self._torch is None:
            if self.torch_source is None:
                raise ModelUnavailableError(f"{self.fingerprint} was loaded from its ONNX export alone; load it with --backend torch")
            source, revision, cfg = self.torch_source
            self._torch = self.torch_loader(source, revision=revision, device="cpu", cfg=cfg)
        return self._torch

    @property
    def model(self) -> Any:
        return self.torch_encoder().model

    def open_towers(self, tower: str) -> tuple[Session, Session]:
        """The sessions of the ``tower`` graph (``audio`` or ``image``, int8 for ``onnx-int8``) and of
        the text graph; the subclasses call it once their export folder is known."""
        graph = quantise(self.export_dir, tower) if quantised(self.backend) else self.export_dir / f"{tower}.onnx"
        return Session(graph, runtime(self.backend)).preload(), Session(self.export_dir / "text.onnx", runtime(self.backend))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint + ("+int8" if quantised(self.backend) else "")

    @fingerprint.setter
    def fingerprint(self, value: str) -> None:  # create() gives a pack's fingerprint
        self._fingerprint = str(value).removesuffix("+int8")


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime session on the CPU with medzero's settings (every graph optimisation, the
    process's CPUs, no spinning threads, warnings only): for a model medzero runs on ONNX Runtime."""
    import onnxruntime

    return _load_onnxruntime(onnxruntime, path)


def _load_onnxruntime(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_OV_CORE: Any = None


#: The folder, beside an exported graph, of OpenVINO's compiled models (see :func:`_load_openvino`).
OPENVINO_CACHE = "openvino-cache"


def _load_openvino(ov: Any, path: Path, *, keep: bool = True) -> Any:
    """``path`` compiled by OpenVINO's CPU plug-in, through a cache of compiled models beside it.

    Compiling the full CLAP audio tower takes about 1 s; importing the compiled model from the
    cache about 0.1 s. OpenVINO names a cached model by a hash of the graph, the settings and the
    device, and checks it when importing (a truncated one is compiled again). OpenVINO writes its
    cache files in place, so two processes compiling at once could read each other's half-written
    file: each process compiles into a private folder holding hard links to the finished files,
    and new files are renamed into the shared folder when complete. Where the cache cannot be
    written (a read-only cache), the model is compiled without it. ``keep=False`` (the check of a
    new export, in its temporary folder) compiles without it too: OpenVINO keys a model read from
    a file by its path, so what it kept there would never be found again.
    """
    global _OV_CORE
    if _OV_CORE is None:
        _OV_CORE = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": cpu_threads(), "PERFORMANCE_HINT": "LATENCY"}
    if not keep:
        return _OV_CORE.compile_model(str(path), "CPU", config)
    shared = path.parent / OPENVINO_CACHE
    try:
        shared.mkdir(exist_ok=True)
        _remove_stale_temporaries(shared)
        private = Path(tempfile.mkdtemp(prefix=f".compile.tmp-{HOST}-{os.getpid()}-", suffix=".tmp", dir=shared))
    except OSError as exc:
        _logger.debug("compiling %s without OpenVINO's cache (%s)", path, exc)
        return _OV_CORE.compile_model(str(path), "CPU", config)
    try:
        cache = private
        for blob in shared.glob("*.blob"):
            try:
                os.link(blob, private / blob.name)
            except FileNotFoundError:  # replaced by another process just now
                pass
            except OSError:  # no hard links here: OpenVINO's own way
                cache = shared
                break
        try:
            compiled = _OV_CORE.compile_model(str(path), "CPU", {**config, "CACHE_DIR": str(cache)})
        except RuntimeError as exc:  # a cache it cannot write: compile as if there were none
            _logger.debug("compiling %s without OpenVINO's cache (%s)", path, _one_line(exc))
            return _OV_CORE.compile_model(str(path), "CPU", config)
        kept = False
        for blob in private.glob("*.blob"):
            target = shared / blob.name
            try:
                if target.exists() and os.path.samefile(blob, target):
                    continue  # imported from the cache: nothing new
                fsync_file(blob)
                os.replace(blob, target)
                kept = True
            except OSError as exc:  # the cache is only a cache
                _logger.debug("cannot keep OpenVINO's compiled %s (%s)", path, exc)
        if kept:
            fsync_dir(shared)
        return compiled
    finally:
        shutil.rmtree(private, ignore_errors=True)


def check_close(what: str, got: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """The largest difference between an export's output and torch's; a one-line error above ``tolerance``."""
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)))) if np.size(expected) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise BackendError(
            f"the ONNX export of {what} differs from torch by {diff:.2e} (more than {tolerance:g}); use --backend torch for this model"
        )
    return diff


def export_onnx(module: Any, args: Sequence[Any], path: Path, *, inputs: Sequence[str], dynamic: Mapping[str, Mapping[int, str]]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (lighter than the dynamo one, and it
    needs only the ``onnx`` package), one output named ``embeds``, under ``no_grad``."""
    import warnings

    require("onnx", why="exporting a model for the onnx and openvino backends")
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings(), _exporter_log_to_debug(torch):
            warnings.simplefilter("ignore")  # tracer and deprecation warnings about the TorchScript exporter
            torch.onnx.export(
                module, tuple(args), str(path), dynamo=False, opset_version=opset(), input_names=list(inputs),
                output_names=["embeds"], dynamic_axes={**{k: dict(v) for k, v in dynamic.items()}, "embeds": {0: "batch"}},
                do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@contextmanager
def _exporter_log_to_debug(torch: Any) -> Iterator[None]:
    """Send the TorchScript exporter's own log to this module's debug log while it runs.

    The exporter turns its log on for every export (its ``setup_onnx_logging`` tests the function
    ``_jit_is_onnx_log_enabled`` rather than its result) and, when a model cannot be exported,
    prints the whole TorchScript graph, hundreds of lines, to standard output, where it would land
    in ``--format json`` output.
    """
    native = getattr(torch._C, "_jit_onnx_log", None)
    if native is None:  # another torch: nothing to quiet
        yield
        return

    def to_debug(*parts: Any) -> None:
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("exporter: %s", _one_line(" ".join(str(p) for p in parts), 2000))

    torch._C._jit_onnx_log = to_debug
    try:
        yield
    finally:
        torch._C._jit_onnx_log = native
