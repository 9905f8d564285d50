"""medzero results as a DICOM Structured Report, and sending it to a PACS.

:func:`build_sr` makes one Comprehensive 3D SR per study (highdicom), a TID 1500 Measurement
Report:

- observer: the device ``medzero`` (model fingerprint as its model name, shortened to fit);
- per source image and label, a TID 1501 measurement group: finding type (the label, in the
  private coding scheme ``99MEDZERO``), the probability (DCM 122157 "Probability", unit UCUM
  ``1``), the decision threshold (same unit), DCM 121052 "Presence of property" = ``Present`` /
  ``Absent`` (score at or above the threshold), the algorithm (``medzero zero-shot <task>``,
  medzero's version, the model fingerprint) and the source image (SOP class and instance UID);
- per source image, a group with the triage level (SCT 260870009 "Priority" = the verdict);
- TEXT comments: ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS ...`` and each image's one-line summary.

An image the task does not apply to (``Result.applicable`` false) gets only its comment (why):
no findings, no triage level.

The SR is PRELIMINARY and UNVERIFIED, its series description says research use, and it belongs to
the source study: highdicom copies the patient and study modules from the source datasets so the
PACS files it with the images. That is PHI going back to the PACS it came from; it is never logged.

:func:`send_sr` sends it by C-STORE (``HOST:PORT:AET`` or ``AET@HOST:PORT``) or STOW-RS (a
``dicomweb[s]://`` or ``http(s)://`` service URL).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..core.errors import BadInputError, MedzeroError, one_line
from . import require_pacs

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from ..core.results import Result
    from .dicomweb import Credentials

__all__ = ["build_sr", "send_sr", "NotApplicableError", "Destination", "parse_destination", "DISCLAIMER", "CODING_SCHEME", "SERIES_DESCRIPTION"]

_logger = logging.getLogger(__name__)

#: private coding scheme of medzero's labels and verdicts (PS3.16 8.2: designators starting "99")
CODING_SCHEME = "99MEDZERO"
DISCLAIMER = (
    "RESEARCH USE ONLY - NOT FOR DIAGNOSIS. Automated zero-shot result of medzero, not reviewed by a "
    "clinician; thresholds are uncalibrated. Do not use it to make or delay clinical decisions."
)
SERIES_DESCRIPTION = "medzero triage - RESEARCH USE ONLY"
#: medzero's device observer UID root is made from this name (stable across runs)
_DEVICE_NAME = "medzero"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medzero")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        import medzero

        return getattr(medzero, "__version__", "0")


def _lo(text: str, limit: int = 64) -> str:
    """A value shortened to fit a VR of ``limit`` characters (LO: 64)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_sr(
    items: "Sequence[tuple[Result, Dataset]]",
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    manufacturer: str = "medzero",
    institution_name: str | None = None,
) -> "Dataset":
    """One SR for ``items``: ``(result, source dataset)`` pairs of images of one study.

    Failed results are left out; a result the task does not apply to (``applicable`` false: a CT
    slice sent to a chest X-ray task) gets a comment with the reason, but no findings, no triage
    level and no evidence reference. A source dataset's pixel data is not needed (pass it without).
    Raises :class:`NotApplicableError` when no image is left to report, :class:`BadInputError`
    when the sources are of several studies.
    """
    require_pacs("highdicom")
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    classified = [(r, ds) for r, ds in items if r.error is None]
    studies = {str(ds.StudyInstanceUID) for _, ds in classified}
    if len(studies) > 1:
        raise BadInputError(f"one SR per study: these images belong to {len(studies)} studies")
    # An image outside what the task judges (the task's applies_to rules) gets no findings and no
    # triage level: only a comment saying why.
    items = [(r, ds) for r, ds in classified if getattr(r, "applicable", True)]
    outside = [(r, ds) for r, ds in classified if not getattr(r, "applicable", True)]
    if not items:
        raise NotApplicableError(
            "no image the task applies to" if outside else "no classified image to report"
        )
    first = items[0][0]
    tasks = {r.task for r, _ in items}
    models = {r.model for r, _ in items}
    version = _version()

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[_DEVICE_NAME, first.model]),
        name=_DEVICE_NAME,
        manufacturer_name=manufacturer,
        model_name=_lo(first.model),
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    unit = codes.UCUM.NoUnits
    threshold_name = CodedConcept("threshold", CODING_SCHEME, "Decision threshold")
    groups = []
    summaries = []
    for result, ds in items:
        algorithm = hd.sr.AlgorithmIdentification(
            name=f"medzero zero-shot {result.task}", version=version, parameters=[f"model={result.model}", f"task={result.task}"]
        )
        source = [hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID))]
        for label, score in result.scores.items():
            name = (result.label_names.get(label) or {}).get("en") or label
            threshold = result.thresholds.get(label)
            measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(score), unit=unit)]
            evaluations = []
            if threshold is not None:
                measurements.append(hd.sr.Measurement(name=threshold_name, value=float(threshold), unit=unit))
                present = codes.DCM.Present if score >= threshold else codes.DCM.Absent
                evaluations.append(hd.sr.QualitativeEvaluation(name=codes.DCM.PresenceOfProperty, value=present))
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=_lo(f"{label} {ds.SOPInstanceUID}")),
                    finding_type=CodedConcept(label, CODING_SCHEME, _lo(name)),
                    algorithm_id=algorithm,
                    measurements=measurements,
                    qualitative_evaluations=evaluations or None,
                    source_images=source,
                )
            )
        if result.verdict is not None:
            verdict_name = (result.verdict_name or {}).get("en") or result.verdict
            groups.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=_lo(f"triage {ds.SOPInstanceUID}")),
                    finding_type=CodedConcept("triage", CODING_SCHEME, "Triage level"),
                    algorithm_id=algorithm,
                    qualitative_evaluations=[
                        hd.sr.QualitativeEvaluation(
                            name=codes.SCT.Priority, value=CodedConcept(result.verdict, CODING_SCHEME, _lo(verdict_name))
                        )
                    ],
                    source_images=source,
                )
            )
        summaries.append(f"{ds.SOPInstanceUID}: {result.summary('en')}")

    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=groups,
    )
    # TEXT comments in the root container: the disclaimer first, then one summary per image.
    root = report[0]
    header = f"{DISCLAIMER} Task: {', '.join(sorted(tasks))}. Model: {', '.join(sorted(models))}. medzero {version}."
    summaries += [f"{ds.SOPInstanceUID}: {result.summary('en')}" for result, ds in outside]
    for text in [header, *summaries]:
        root.ContentSequence.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        )
    sources = [ds for _, ds in items]
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        institution_name=institution_name,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
    )
    return sr


class NotApplicableError(BadInputError):
    """Nothing to report: no image classified, or none is of what the task judges."""


# -- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where SRs go: a DICOM node (C-STORE) or a DICOMweb service (STOW-RS)."""

    kind: str  # "dimse" or "stow"
    host: str = ""
    port: int = 0
    ae_title: str = ""
    url: str = ""  # STOW: the dicomweb:// service URL (no credentials)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" if self.kind == "dimse" else self.url


def parse_destination(text: str) -> Destination:
    """``HOST:PORT:AET``, ``AET@HOST:PORT``, or a ``dicomweb[s]://`` / ``http(s)://`` service URL."""
    from .dicomweb import parse_dicomweb_url

    text = text.strip()
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):
        text = ("dicomwebs" if lowered.startswith("https") else "dicomweb") + text[text.index("://") :]
        lowered = text.lower()
    if lowered.startswith(("dicomweb://", "dicomwebs://")):
        parsed = parse_dicomweb_url(text)
        return Destination("stow", url=parsed.url())
    if "@" in text:
        ae, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
    else:
        host, port, ae = (text.rsplit(":", 2) + ["", "", ""])[:3] if text.count(":") >= 2 else ("", "", "")
    if not host or not port.isdigit() or not ae or len(ae) > 16:
        raise BadInputError(f"--send-to {text!r}: expected HOST:PORT:AET (C-STORE) or a dicomweb://HOST/PATH service URL (STOW-RS)")
    return Destination("dimse", host=host, port=int(port), ae_title=ae)


def send_sr(
    sr: "Dataset",
    destination: "Destination | str",
    *,
    ae_title: str = "MEDZERO",
    credentials: "str | os.PathLike | Credentials | None" = None,
    timeout: float = 30.0,
    what: str = "SR",
) -> None:
    """Send ``sr`` (or any instance: a Secondary Capture, ``what="Secondary Capture"``) by C-STORE
    or STOW-RS; a failure raises a one-line :class:`MedzeroError` that calls it ``what``."""
    target = parse_destination(destination) if isinstance(destination, str) else destination
    if target.kind == "stow":
        from .dicomweb import http_error, make_client, parse_dicomweb_url

        parsed = parse_dicomweb_url(target.url)
        client = make_client(parsed, credentials, timeout=timeout)
        try:
            client.store_instances([sr])
        except Exception as exc:  # noqa: BLE001 - any failure is one line
            raise http_error(exc, f"storing the {what} (STOW-RS)", parsed.base_url) from None
        return
    require_pacs("pynetdicom")
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sr.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    except Exception as exc:  # noqa: BLE001
        raise MedzeroError(f"cannot send the {what} to {target}: {one_line(exc, 120)}") from None
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "cannot be reached" if not assoc.is_aborted else "aborted the association"
        raise MedzeroError(f"cannot send the {what}: {target} {why}")
    try:
        status = assoc.send_c_store(sr)
    except Exception as exc:  # noqa: BLE001
        raise MedzeroError(f"cannot send the {what} to {target}: {one_line(exc, 120)}") from None
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise MedzeroError(f"cannot send the {what} to {target}: no response (timeout or aborted association)")
    if code not in (0x0000, 0xB000, 0xB006, 0xB007):
        raise MedzeroError(f"{target} refused the {what}: C-STORE status 0x{code:04X}")

