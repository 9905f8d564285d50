"""``medzero listen``: a DICOM C-STORE SCP that triages what a PACS or modality sends it.

::

    association ──C-STORE──► handler (association thread): parse, check, answer the status now
                                 │ queue (bounded)
                                 ▼
                             worker thread: classify_batch on what is queued (the one ingest path)
                                 ├─► SQLite results (PHI-safe: UIDs, task, model, scores, verdict, time)
                                 ├─► CaseIndex.add (optional)
                                 └─► per study, when its association ends (or it has been idle):
                                     build_sr ──C-STORE / STOW-RS──► the destination (optional)
                                     build_sc (explain: heatmap Secondary Captures) ──► the same

The handler only parses and checks a dataset (it must decode as DICOM, carry well-formed UIDs, an
image's native pixel data must be as long as its header says, and each compressed frame must be
complete: a JPEG with its end-of-image marker, a JPEG 2000 codestream with its end); it answers at
once, so the association is never held by the model. Unparseable, truncated or incomplete data is
refused with 0xC210 ("cannot understand"), an image without pixel data with 0xA900, and a full queue with 0xA700;
each refusal is one log line and the node goes on. Non-image objects (SR, KO, PR, ...) are
accepted and ignored. Images go through ``Classifier.classify_batch``, so a task's ``applies_to``
rules hold here as everywhere: an image the task does not judge (a CT slice sent to a chest X-ray
task) is recorded as ``not_applicable`` and gets no findings in an SR (a study with no applicable
image gets no SR). Received images are named by their SOP Instance UID; nothing is written to
disk but the results database (and the index when asked). Patient names, IDs and dates are never
logged or stored: what pydicom warns while it parses a received data set (its warnings quote
element values) is kept out of the log (:func:`medzero.image.pixels.library_messages`).

Calling AE titles outside ``allow`` (when given) are refused at association time, and the called
AE title must be this node's.
"""
from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from ..core.errors import BadInputError, MedzeroError, TaskError, one_line
from . import require_pacs

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["Listener", "listen", "RESULTS_SCHEMA", "STATUS"]

_logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

#: DIMSE statuses the handler answers
STATUS = {"success": 0x0000, "out_of_resources": 0xA700, "mismatch": 0xA900, "cannot_understand": 0xC210}

RESULTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    processed_at TEXT NOT NULL,          -- UTC time medzero classified it (not a study date)
    calling_ae TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    sop_instance_uid TEXT,
    sop_class_uid TEXT,
    task TEXT,
    model TEXT,
    verdict TEXT,
    scores TEXT,                         -- JSON {label: probability}
    thresholds TEXT,                     -- JSON {label: threshold}
    metadata TEXT,                       -- JSON, medzero's PHI-safe tags (Modality, ViewPosition, ...)
    error TEXT,
    sr_sop_instance_uid TEXT,
    sr_status TEXT                       -- sent | failed: <one line> | not sent
);
CREATE INDEX IF NOT EXISTS results_study ON results (study_instance_uid);
CREATE INDEX IF NOT EXISTS results_sop ON results (sop_instance_uid);
"""


class _NoPixels(BadInputError):
    """An image object without pixel data (answered 0xA900)."""


@dataclass
class _Received:
    """One accepted image, queued for the worker."""

    key: int  # association
    calling_ae: str
    data: bytes  # Part-10
    dataset: "Dataset"  # without pixel data: UIDs and the patient/study modules for the SR


@dataclass
class _End:
    key: int


@dataclass
class _Group:
    """Classified images of one study from one association, waiting for their SR."""

    calling_ae: str
    items: list = field(default_factory=list)  # (row id, Result, Dataset)
    pictures: dict = field(default_factory=dict)  # SOP Instance UID -> {label: overlay PNG} (explain)
    last: float = field(default_factory=time.monotonic)


class Listener:
    """A C-STORE SCP that triages received images.

    Args:
        ae_title: this node's AE title (callers must address it).
        port: TCP port (0: any free one; see :attr:`port`).
        task: the task applied to every image (an image task: ``chest_xray_findings`` by default).
        host: the address to bind.
        image_model, device, batch_size: as for :class:`medzero.Classifier`.
        allow: calling AE titles accepted (``None``: any).
        index: a case index directory to add each image to (with its scores).
        send_to: where SRs go: ``HOST:PORT:AET`` (C-STORE) or a DICOMweb service URL (STOW-RS);
            ``None``: no SR.
        credentials: a credentials file for a STOW-RS destination (else the environment).
        results_db: the SQLite file of PHI-safe results (``None``: none kept).
        study_idle_s: an open association's study is reported after this long without a new image.
        queue_size: images waiting for the model before C-STORE answers 0xA700.
        explain: with ``send_to``, also send heatmap Secondary Captures (:mod:`medzero.pacs.sc`) of
            each image's top 3 labels, in one new series per study, after the SR.
    """

    def __init__(
        self,
        ae_title: str = "MEDZERO",
        port: int = 11112,
        task: Any = "chest_xray_findings",
        *,
        host: str = "0.0.0.0",
        image_model: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        allow: Sequence[str] | None = None,
        index: "str | os.PathLike | None" = None,
        send_to: str | None = None,
        credentials: "str | os.PathLike | None" = None,
        results_db: "str | os.PathLike | None" = "medzero-results.sqlite",
        study_idle_s: float = 30.0,
        queue_size: int = 64,
        explain: bool = False,
    ):
        require_pacs("pynetdicom", "highdicom")
        if not ae_title or len(ae_title) > 16:
            raise BadInputError(f"AE title {ae_title!r}: 1 to 16 characters")
        self.ae_title = ae_title
        self.host = host
        self._port = int(port)
        self.task = task
        self.image_model = image_model
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.allow = [a.strip() for a in allow if a.strip()] if allow else None
        self.index_path = os.fspath(index) if index is not None else None
        self.destination = None
        if send_to:
            from .sr import parse_destination

            self.destination = parse_destination(send_to)
        self.credentials = credentials
        self.results_db = os.fspath(results_db) if results_db is not None else None
        self.study_idle_s = float(study_idle_s)
        self.explain = bool(explain) and self.destination is not None  # pictures only where they are sent
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, int(queue_size)))
        self._groups: "OrderedDict[tuple[int, str], _Group]" = OrderedDict()
        self._open_assocs: set[int] = set()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._server = None
        self._ae = None
        self._undivert = None
        self._worker: threading.Thread | None = None
        self._classifier = None
        self._index = None
        self._db: sqlite3.Connection | None = None
        self._task_name = ""

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is not None:
            return int(self._server.socket.getsockname()[1])
        return self._port

    def start(self) -> "Listener":
        """Load the model, open the results and the index, and start accepting (returns at once)."""
        import medzero
        import numpy as np

        task = medzero.load_task(self.task)
        if task.modality != "image":
            raise TaskError(f"listen triages images; task {task.name} is for {task.modality}")
        self._task_name = task.name
        self._classifier = medzero.Classifier(task=task, image_model=self.image_model, device=self.device, batch_size=self.batch_size)
        warm = self._classifier.classify_batch([np.zeros((64, 64), dtype=np.float32)])[0]  # load the model now
        if warm.exception is not None and not isinstance(warm.exception, BadInputError):
            raise warm.exception
        if self.index_path is not None:
            self._index = medzero.CaseIndex(self.index_path, image_model=self.image_model, device=self.device)
        if self.results_db is not None:
            with sqlite3.connect(self.results_db) as db:
                db.executescript(RESULTS_SCHEMA)
            db.close()
        self._stop.clear()
        from ..image.pixels import divert_threads

        self._ae = self._make_ae()
        # pynetdicom decodes what a peer sends in its own association and DUL threads, before any
        # handler runs; what pydicom and pynetdicom say there about a damaged command or data set
        # quotes its values: diverted (errors logged scrubbed), for this node's threads only.
        self._undivert = divert_threads(self._is_node_thread)
        try:
            self._server = self._ae.start_server(
                (self.host, self._port),
                block=False,
                evt_handlers=[
                    (_evt("EVT_C_STORE"), self._on_store),
                    (_evt("EVT_C_ECHO"), lambda event: 0x0000),
                    (_evt("EVT_ACCEPTED"), self._on_accepted),
                    (_evt("EVT_RELEASED"), self._on_end),
                    (_evt("EVT_ABORTED"), self._on_end),
                    (_evt("EVT_REJECTED"), self._on_rejected),
                ],
            )
        except BaseException:
            self.stop()
            raise
        self._worker = threading.Thread(target=self._work, name="medzero-listen-worker", daemon=True)
        self._worker.start()
        where = f"{self.ae_title} on {self.host}:{self.port}"
        _logger.info(
            "listening as %s: task %s, %s; SRs to %s",
            where, task.name, "callers " + ", ".join(self.allow) if self.allow else "any caller",
            self.destination or "nowhere",
        )
        if not self.allow:
            _logger.warning("no --allow list: any DICOM node that can reach %s may send images", where)
        return self

    def _make_ae(self):
        from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        if self.allow:
            ae.require_calling_aet = list(self.allow)
        ae.maximum_associations = 16
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        syntaxes = _transfer_syntaxes()
        for context in [*AllStoragePresentationContexts, *VerificationPresentationContexts]:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        return ae

    def _is_node_thread(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one of this node's pynetdicom association or DUL threads."""
        assoc = thread if hasattr(thread, "dimse") else getattr(thread, "assoc", None)
        return assoc is not None and getattr(assoc, "ae", None) is self._ae

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish what is queued (reporting every pending study), close the files."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._undivert is not None:
            self._undivert()
            self._undivert = None
        if self._worker is not None:
            self._open_assocs.clear()
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None
        if self._index is not None:
            try:
                self._index.close()
            finally:
                self._index = None

    def serve_forever(self) -> None:
        """:meth:`start`, then wait until interrupted (Ctrl-C) or :meth:`stop` is called from elsewhere."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            _logger.info("stopping")
        finally:
            self.stop()

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to return (from a signal handler or another thread)."""
        self._stop.set()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """True once nothing is queued or being classified and every finished study is reported."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0 and not self._busy.locked():
                with self._busy:
                    if not any(key[0] not in self._open_assocs for key in self._groups):
                        return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- association thread -------------------------------------------------------------------
    def _on_accepted(self, event) -> None:
        self._open_assocs.add(id(event.assoc))

    def _on_end(self, event) -> None:
        key = id(event.assoc)
        try:
            self._queue.put(_End(key), timeout=60)
        except queue.Full:  # pragma: no cover - the worker flushes idle studies anyway
            self._open_assocs.discard(key)

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        _logger.warning(
            "refused an association from %s (%s:%s): calling AE title not allowed, or called AE title not %s",
            requestor.ae_title, requestor.address, requestor.port, self.ae_title,
        )

    def _on_store(self, event) -> int:
        from ..image.pixels import library_messages, scrub

        calling = str(event.assoc.requestor.ae_title).strip()
        sop = _uid_or(getattr(event.request, "AffectedSOPInstanceUID", ""), "?")
        # pydicom's warnings about a damaged data set quote its values (a UID whose length runs over
        # the patient module quotes the name, ID and birth date): kept out of the log, this thread only.
        with library_messages() as said:
            try:
                received = self._receive(event, calling)
            except BadInputError as exc:
                status = STATUS["mismatch"] if isinstance(exc, _NoPixels) else STATUS["cannot_understand"]
                _logger.error("C-STORE from %s refused (0x%04X): instance %s: %s", calling, status, sop, one_line(exc, 200))
                return status
            except Exception as exc:  # noqa: BLE001 - pydicom's many ways to fail on bad bytes; the node goes on
                _logger.error("C-STORE from %s refused (0xC210): instance %s cannot be read: %s", calling, sop, scrub(exc))
                return STATUS["cannot_understand"]
            finally:
                for message in said:
                    _logger.debug("C-STORE from %s: instance %s: %s said: %s", calling, sop, message.source, message.safe)
        if received is None:
            return STATUS["success"]
        try:
            self._queue.put(received, timeout=30)
        except queue.Full:
            _logger.error("C-STORE from %s refused (0xA700): instance %s: the triage queue is full", calling, sop)
            return STATUS["out_of_resources"]
        return STATUS["success"]

    def _receive(self, event, calling: str) -> "_Received | None":
        """Parse and check one C-STORE dataset; ``None`` for an object without an image (accepted, ignored)."""
        from pydicom.filewriter import write_file_meta_info
        from pydicom.uid import UID

        raw = event.request.DataSet.getvalue()
        if not raw:
            raise BadInputError("empty dataset")
        dataset = event.dataset  # decodes; truncated or garbled data raises here
        dataset.file_meta = event.file_meta
        for element in dataset.iterall():  # decode every element now, not later in the worker
            pass
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = str(dataset.get(keyword, "") or "").strip("\x00 ")
            if not value:
                raise BadInputError(f"no {keyword}")
            if not _uid_or(value, ""):  # a damaged length: the value runs over the elements after it
                raise BadInputError(f"{keyword} is damaged (not a UID: {len(value)} characters)")
        sop_class = UID(str(dataset.SOPClassUID))
        if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
            if "Image" in sop_class.name:
                raise _NoPixels(f"no pixel data in a {sop_class.name} object")
            _logger.info("C-STORE from %s: %s is a %s, not an image: accepted, not triaged", calling, dataset.SOPInstanceUID, sop_class.name or sop_class)
            return None
        _check_pixels(dataset, event.file_meta.TransferSyntaxUID)
        from ..image.dicom import check_encapsulated_frames

        check_encapsulated_frames(dataset, "data set")  # an incomplete JPEG frame: refused now, not triaged half grey
        buffer = io.BytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
        buffer.write(raw)
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in dataset:
                delattr(dataset, keyword)
        return _Received(id(event.assoc), calling, buffer.getvalue(), dataset)

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        if self.results_db is not None:
            self._db = sqlite3.connect(self.results_db)
        try:
            while True:
                try:
                    first = self._queue.get(timeout=0.5)
                except queue.Empty:
                    self._flush_idle()
                    continue
                batch = [first]
                while first is not None and sum(isinstance(i, _Received) for i in batch) < self.batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                with self._busy:
                    try:
                        self._handle(batch)
                    except Exception:  # noqa: BLE001 - a bug must not stop the node; keep its traceback
                        _logger.exception("medzero listen: unexpected error while triaging; the node goes on")
                    finally:
                        for _ in batch:
                            self._queue.task_done()
                if any(item is None for item in batch):
                    with self._busy:
                        self._flush(lambda key: True)
                    return
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _handle(self, batch: list) -> None:
        received = [item for item in batch if isinstance(item, _Received)]
        if received:
            self._classify(received)
        ended = {item.key for item in batch if isinstance(item, _End)}
        if ended:
            self._open_assocs.difference_update(ended)
            self._flush(lambda key: key[0] in ended)
        self._flush_idle()

    def _classify(self, received: list[_Received]) -> None:
        results = self._classifier.classify_batch([_named(item) for item in received], explain=self.explain)
        if self._index is not None:
            self._add_to_index([item for item, result in zip(received, results) if result.error is None])
        for item, result in zip(received, results):
            ds = item.dataset
            row = self._record(item, result)
            pictures = self._pictures(item, result)
            item.data = b""
            if result.error is not None:
                uid, error = str(ds.SOPInstanceUID), one_line(result.error, 240)
                _logger.error("not triaged (from %s): %s", item.calling_ae, error if uid in error else f"{uid}: {error}")
                continue
            key = (item.key, str(ds.StudyInstanceUID))
            group = self._groups.setdefault(key, _Group(item.calling_ae))
            group.items.append((row, result, ds))
            if pictures:
                group.pictures[str(ds.SOPInstanceUID)] = pictures
            group.last = time.monotonic()
            self._groups.move_to_end(key)

    def _pictures(self, item: _Received, result) -> dict[str, bytes]:
        """The overlay PNGs of an explained image, drawn while its pixels are still here."""
        if not self.explain or result.error is not None or not result.explanations:
            return {}
        from ..image.explain import overlay_pngs

        try:
            return overlay_pngs(result, _named(item))
        except MedzeroError as exc:
            _logger.error("no heatmap pictures for %s: %s", item.dataset.SOPInstanceUID, one_line(exc, 200))
            return {}

    def _send_pictures(self, study: str, group: _Group) -> None:
        """Secondary Captures of each image's top labels' overlays, one new series per study, sent
        where the SR went; a failure is one log line (the SR is already sent)."""
        from pydicom.uid import generate_uid

        from .sc import build_sc, sc_items
        from .sr import send_sr

        series, number, sent = generate_uid(), 0, 0
        for _, result, ds in group.items:
            for label, png in sc_items(result, group.pictures.get(str(ds.SOPInstanceUID), {})):
                number += 1
                try:
                    sc = build_sc(png, ds, label=label, method=result.explanations[label]["method"], model=result.model,
                                  series_instance_uid=series, instance_number=number)
                    send_sr(sc, self.destination, ae_title=self.ae_title, credentials=self.credentials, what="Secondary Capture")
                    sent += 1
                except MedzeroError as exc:
                    _logger.error("study %s: a heatmap Secondary Capture was not sent: %s", study, one_line(exc, 200))
        if sent:
            _logger.info("study %s: %d heatmap Secondary Capture(s) sent to %s", study, sent, self.destination)

    def _add_to_index(self, received: list[_Received]) -> None:
        """Index the images that classified (the index embeds them again, with the task's scores)."""
        if not received:
            return
        try:
            report = self._index.add([_named(item) for item in received], task=self._task_name)
        except MedzeroError as exc:
            _logger.error("case index %s: %s", self.index_path, one_line(exc, 200))
            return
        for error in getattr(report, "errors", None) or []:
            name, message = error if isinstance(error, tuple) and len(error) == 2 else ("", error)
            text = str(message) if str(name) in str(message) else f"{name}: {message}"
            _logger.error("case index %s: %s", self.index_path, one_line(text, 200))

    def _record(self, item: _Received, result) -> int | None:
        if self._db is None:
            return None
        ds = item.dataset
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO results (processed_at, calling_ae, study_instance_uid, series_instance_uid, sop_instance_uid,"
                " sop_class_uid, task, model, verdict, scores, thresholds, metadata, error, sr_status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now, item.calling_ae, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID), result.task or self._task_name, result.model or None, result.verdict,
                    json.dumps(result.scores), json.dumps(result.thresholds), json.dumps(result.metadata, default=str),
                    result.error, "not sent" if result.error is None else None,
                ),
            )
        return cursor.lastrowid

    def _flush_idle(self) -> None:
        now = time.monotonic()
        self._flush(lambda key: key[0] not in self._open_assocs or now - self._groups[key].last >= self.study_idle_s)

    def _flush(self, due) -> None:
        for key in [k for k in self._groups if due(k)]:
            group = self._groups.pop(key)
            self._report(key[1], group)

    def _report(self, study: str, group: _Group) -> None:
        verdicts: dict[str, int] = {}
        for _, result, _ in group.items:
            verdicts[result.verdict or "-"] = verdicts.get(result.verdict or "-", 0) + 1
        counts = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
        if self.destination is None:
            _logger.info("study %s from %s: %d image(s) triaged (%s)", study, group.calling_ae, len(group.items), counts)
            return
        from .sr import NotApplicableError, build_sr, send_sr

        status, sr_uid = "sent", None
        try:
            sr = build_sr([(result, ds) for _, result, ds in group.items])
            sr_uid = str(sr.SOPInstanceUID)
            send_sr(sr, self.destination, ae_title=self.ae_title, credentials=self.credentials)
        except NotApplicableError as exc:
            status = f"not sent: {exc}"
            _logger.info("study %s from %s: %d image(s) triaged (%s); no SR: %s", study, group.calling_ae, len(group.items), counts, exc)
        except MedzeroError as exc:
            status = f"failed: {one_line(exc, 200)}"
            _logger.error("study %s from %s: the SR was not sent: %s", study, group.calling_ae, one_line(exc, 200))
        else:
            _logger.info(
                "study %s from %s: %d image(s) triaged (%s); SR %s sent to %s",
                study, group.calling_ae, len(group.items), counts, sr_uid, self.destination,
            )
            if group.pictures:
                self._send_pictures(study, group)
        if self._db is not None:
            rows = [row for row, _, _ in group.items if row is not None]
            with self._db:
                self._db.executemany(
                    "UPDATE results SET sr_sop_instance_uid = ?, sr_status = ? WHERE id = ?", [(sr_uid, status, row) for row in rows]
                )


def _named(item: _Received) -> io.BytesIO:
    """The received Part-10 bytes as a source named by its SOP Instance UID (never patient data)."""
    source = io.BytesIO(item.data)
    source.name = str(item.dataset.SOPInstanceUID)
    return source


def _evt(name: str):
    from pynetdicom import evt

    return getattr(evt, name)


def _transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can read (compressed ones are decoded by medzero's image path)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    return list(ALL_TRANSFER_SYNTAXES)


def _uid_or(value: Any, default: str) -> str:
    """``value`` as a UID string if it is one (digits and dots, at most 64), else ``default``."""
    text = str(value or "").strip("\x00 ")
    return text if 0 < len(text) <= 64 and _UID.fullmatch(text) else default


def _check_pixels(dataset: "Dataset", transfer_syntax) -> None:
    """Native pixel data at least as long as the header says; encapsulated data starts with an item."""
    from pydicom.uid import UID

    if "PixelData" not in dataset:
        return
    data = dataset.PixelData
    if not data:
        raise BadInputError("empty pixel data")
    if UID(str(transfer_syntax)).is_encapsulated:
        if bytes(data[:4]) != b"\xfe\xff\x00\xe0":
            raise BadInputError("encapsulated pixel data does not start with an item")
        return
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.BitsAllocated)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadInputError(f"image header incomplete ({one_line(exc, 80)})") from None
    pixels = rows * columns * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    if len(data) < expected:
        raise BadInputError(
            f"pixel data is {len(data):,} bytes; {rows}x{columns}x{samples}x{frames} at {bits} bits needs {expected:,} (truncated?)"
        )


def listen(ae_title: str = "MEDZERO", port: int = 11112, task: Any = "chest_xray_findings", **options: Any) -> None:
    """Run a :class:`Listener` until interrupted (Ctrl-C or SIGTERM from the CLI)."""
    Listener(ae_title, port, task, **options).serve_forever()
