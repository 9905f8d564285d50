"""What a running app holds: :class:`ServiceState`, built once by ``create_app`` and started by its lifespan.

It keeps the shipped tasks and the calibration overlays (loaded and checked at start, by name:
:func:`load_calibrations`), one ``Classifier`` per set of options (bounded, least recently used
dropped), the one :class:`~medzero.service.batching.Batcher` and its compute, decode and index
threads, the models' readiness for ``/readyz``, the in-flight byte budget and the open case
indexes. Routes reach it through :func:`state_of`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.requests import Request

import medzero
from medzero.classifier import Classifier

from .auth import ApiKeys
from .batching import Batcher, QueueFull, embed_and_score
from .budget import BudgetExceeded, InFlight, Lease, decoded_nbytes
from .config import MIB, ServiceConfig, input_limits
from .errors import ApiError, busy, error_for, size_text, undecodable
from .options import ClassifyOptions
from .uploads import named

__all__ = ["ServiceState", "load_calibrations", "state_of", "NAME_PATTERN"]

_logger = logging.getLogger("medzero.service")  # the service's log lines keep one logger name

#: A name a client gives: a case index, or a calibration overlay (its file's stem).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def state_of(request: Request) -> "ServiceState":
    """The state of the app serving ``request``."""
    return request.app.state.medzero


# -- calibration overlays ---------------------------------------------------------------------------------
def load_calibrations(directory: "str | os.PathLike | None", tasks: dict[str, Any]) -> dict[str, Any]:
    """The site overlays in ``directory`` by name (``NAME.yaml`` or ``NAME.yml``), each checked against its task.

    A client names an overlay, never a path. Each is read once, here; its ``path`` is reduced to the
    file name, so results do not show where the server keeps its files. Raises ``ValueError`` with one
    line naming the file when one is not a valid overlay or is for a task this server does not have.
    """
    if directory is None:
        return {}
    from medzero.tasks.overlay import apply_calibration, load_overlay

    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"the calibration directory {root} does not exist")
    found: dict[str, Any] = {}
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
            continue
        if not NAME_PATTERN.fullmatch(path.stem):
            raise ValueError(f"{path.name}: an overlay's name is 1-64 letters, digits, '-' or '_'")
        if path.stem in found:
            raise ValueError(f"two calibration overlays are named {path.stem!r}")
        try:
            overlay = load_overlay(path)
            if overlay.task not in tasks:
                raise medzero.TaskError(f"{path.name} is for task {overlay.task}, which this server does not have")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a changed task warns when a classifier applies it
                apply_calibration(tasks[overlay.task], overlay)  # labels the task does not have: refused now
        except medzero.MedzeroError as exc:
            raise ValueError(str(exc)) from None
        found[path.stem] = dataclasses.replace(overlay, path=path.name)
    if not found:
        raise ValueError(f"no calibration overlays (NAME.yaml) in {root}")
    return found


# -- state -------------------------------------------------------------------------------------------------
class ServiceState:
    """What a running app holds: classifiers, the batcher, executors, model readiness, indexes."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.keys = None if config.insecure_no_auth else ApiKeys(config.api_key_hashes)
        self.tasks = {t.name: t for t in medzero.list_tasks()}
        self.calibrations = load_calibrations(config.calibration_dir, self.tasks)
        self.budget = InFlight(config.max_inflight_bytes)
        self.limits = input_limits(config)
        self.classifiers: OrderedDict[tuple, Any] = OrderedDict()
        self.models: dict[str, dict[str, Any]] = {
            m: {"modality": m, "state": "loading" if m in config.preload else "on_demand", "fingerprint": None, "error": None}
            for m in ("audio", "image")
        }
        self.compute: ThreadPoolExecutor | None = None
        self.decode: ThreadPoolExecutor | None = None
        self.index_pool: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None
        self.indexes: OrderedDict[str, Any] = OrderedDict()

    # lifecycle
    def start(self) -> None:
        try:  # a server's log is no place for download and weight-loading progress bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is a dependency
            pass
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-compute")
        self.decode = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medzero-decode")
        self.index_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-index")
        self.batcher = Batcher(
            embed_and_score, max_batch=self.config.max_batch, window_s=self.config.batch_window_ms / 1000.0,
            capacity=self.config.queue_size, executor=self.compute,
        )
        threading.Thread(target=self._load_models, name="medzero-preload", daemon=True).start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.index_pool is not None:
            await asyncio.get_running_loop().run_in_executor(self.index_pool, self._close_indexes)
        for pool in (self.compute, self.decode, self.index_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _load_models(self) -> None:
        for modality in self.config.preload:
            ref = self.config.audio_model if modality == "audio" else self.config.image_model
            try:
                encoder = medzero.create_encoder(ref, modality=modality, device=self.config.device)
            except medzero.MedzeroError as exc:
                self.models[modality].update(state="failed", error=str(exc))
                _logger.error("the %s model is not available: %s", modality, exc)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process keeps serving the rest
                self.models[modality].update(state="failed", error=f"{type(exc).__name__} while loading the model")
                _logger.exception("loading the %s model failed", modality)
            else:
                self.models[modality].update(state="ready", fingerprint=encoder.fingerprint)
                _logger.info("%s model ready (%s)", modality, encoder.fingerprint)

    @property
    def ready(self) -> bool:
        return all(self.models[m]["state"] == "ready" for m in self.config.preload)

    # classification
    def classifier(self, options: ClassifyOptions) -> Any:
        """The classifier of one set of options (task or labels, template, calibration), built once."""
        if options.task is not None and options.task not in self.tasks:
            raise ApiError(
                422, "invalid_request", f"unknown task {options.task!r}; shipped tasks: {', '.join(sorted(self.tasks))}"
            )
        calibration = None
        if options.calibration is not None:
            if not self.calibrations:
                raise ApiError(422, "invalid_request", "this server has no calibration overlays (start it with --calibration-dir)")
            calibration = self.calibrations.get(options.calibration)
            if calibration is None:
                raise ApiError(422, "invalid_request", f"unknown calibration {options.calibration!r}; this server has: "
                               f"{', '.join(sorted(self.calibrations))}")
        key = options.key()
        classifier = self.classifiers.get(key)
        if classifier is not None:
            self.classifiers.move_to_end(key)
            return classifier
        try:
            classifier = medzero.Classifier(
                task=self.tasks[options.task] if options.task is not None else None,
                labels=list(options.labels) if options.labels is not None else None,
                template=options.template,
                multilabel=options.multilabel,
                audio_model=self.config.audio_model,
                image_model=self.config.image_model,
                device=self.config.device,
                batch_size=self.config.max_batch,
                calibration=calibration,
                limits=options.limits(self.limits),
                mos=options.mos,
            )
        except medzero.MedzeroError as exc:
            raise error_for(exc) from None
        self.classifiers[key] = classifier
        while len(self.classifiers) > self.config.max_configurations:  # one still in use lives on in its jobs
            self.classifiers.popitem(last=False)
        return classifier

    def check_room(self, n: int = 1) -> None:
        """503 at once when ``n`` more sources would not fit in the queue (before a body is read or decoded)."""
        if self.batcher is None or self.batcher.waiting + n > self.batcher.capacity:
            raise ApiError(503, "queue_full", "the server is busy; try again shortly", {"Retry-After": "1"})

    async def classify(self, options: ClassifyOptions, items: list[tuple[bytes, str]], lease: Lease) -> list[tuple[Any, int]]:
        """Results for uploads ``(bytes, name)``, each with the size of the forward pass it shared.

        Each upload is decoded by its classifier in the decode threads (while the compute thread
        embeds others), then queued for the next forward pass of its modality's model, which
        sources of every configuration share: the models are the server's, and the embedding of
        a source does not depend on the task that scores it. The decoded arrays are held in
        ``lease`` until the response is sent: 503 when the in-flight budget has no room for them.
        """
        classifier = self.classifier(options)
        self.check_room(len(items))
        loop = asyncio.get_running_loop()
        jobs: list = []

        async def run() -> list:
            decoded = await asyncio.gather(*(
                loop.run_in_executor(self.decode, _prepare, classifier, data, name) for data, name in items
            ))
            ready = [p for p in decoded if not isinstance(p, medzero.Result)]
            needed = sum(decoded_nbytes(p.item) + decoded_nbytes(p.input) for p in ready)
            try:
                lease.hold(needed)
            except BudgetExceeded:
                if lease.held + needed > lease.budget.limit:  # would not fit an idle server either
                    raise ApiError(413, "too_large", f"the files decode to {needed / MIB:.1f} MiB, more than this server holds "
                                   f"for all requests ({size_text(lease.budget.limit)}); send fewer per request") from None
                raise busy("the decoded uploads") from None
            try:
                jobs.extend(self.batcher.enqueue([(classifier, p) for p in ready]) if ready else [])
            except QueueFull:
                raise ApiError(503, "queue_full", "the server is busy; try again shortly", {"Retry-After": "1"}) from None
            await asyncio.gather(*(job.future for job in jobs))
            return decoded

        try:
            decoded = await asyncio.wait_for(run(), self.config.timeout_s)
        except asyncio.TimeoutError:
            Batcher.cancel(jobs)
            raise ApiError(
                503, "timeout", f"the classification did not finish within {self.config.timeout_s:g} s", {"Retry-After": "5"}
            ) from None
        except BaseException:
            Batcher.cancel(jobs)
            raise
        done = iter(jobs)  # one job per upload that decoded, in order
        out = []
        for p in decoded:
            if isinstance(p, medzero.Result):  # failed before its forward pass
                out.append((p, 0))
            else:
                job = next(done)
                out.append((job.future.result(), job.batch_size))
        return out

    # case indexes
    def index_dir(self, name: str, *, must_exist: bool) -> Path:
        if self.config.index_root is None:
            raise ApiError(404, "not_found", "case search is not enabled on this server (start it with --index-root)")
        if not NAME_PATTERN.fullmatch(name):
            raise ApiError(422, "invalid_request", "an index name is 1-64 letters, digits, '-' or '_', starting with a letter or digit")
        root = Path(self.config.index_root)
        path = root / name
        if path.is_symlink() or (path.exists() and path.resolve().parent != root.resolve()):
            raise ApiError(404, "not_found", f"no case index named {name!r}")
        if must_exist and name not in self.config.index_stores and not (path / "cases.sqlite").is_file():
            raise ApiError(404, "not_found", f"no case index named {name!r}")
        return path

    def open_index(self, name: str, path: Path):
        index = self.indexes.get(name)
        if index is None:
            # a PostgreSQL index (--index-store) is written by other servers too; its uploads stay under path
            index = medzero.CaseIndex(self.config.index_stores.get(name, path), audio_model=self.config.audio_model,
                                      image_model=self.config.image_model, device=self.config.device)
            self.indexes[name] = index
            while len(self.indexes) > 8:
                _, old = self.indexes.popitem(last=False)
                old.close()
        self.indexes.move_to_end(name)
        return index

    def _close_indexes(self) -> None:
        while self.indexes:
            _, index = self.indexes.popitem()
            try:
                index.close()
            except Exception:  # noqa: BLE001 - closing at shutdown; the database has every commit
                _logger.warning("closing a case index failed", exc_info=True)

    async def in_index_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.index_pool, fn, *args)


def _prepare(classifier: Classifier, data: bytes, name: str) -> Any:
    """One upload decoded by its classifier (in a decode thread). Whatever the decoding path raises
    that is not a :class:`MedzeroError` costs this upload a one-line 400 (:class:`Undecodable`), never
    the request or the server: in a batch the other files go on."""
    try:
        return classifier.prepare(named(data, name))
    except medzero.MedzeroError as exc:
        return medzero.Result.failed(name, exc)
    except Exception as exc:  # noqa: BLE001
        return medzero.Result.failed(name, undecodable(name, exc))
