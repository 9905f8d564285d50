"""Heatmap Secondary Captures for PACS viewers that cannot show an SR, against a real Orthanc:
built from a real explanation, read back by pydicom, accepted by Orthanc over C-STORE and STOW-RS,
and sent by ``Listener(explain=True)`` wherever the SR goes."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medzero

pytest.importorskip("highdicom", reason="the pacs extra is not installed: pip install 'medzero[pacs]'")

from test_pacs import CR_PHI, LISTENER_AET, c_store, chest_cr, orthanc, poll  # noqa: E402,F401 - orthanc: the fixture

from medzero.pacs.sc import SC_SERIES_DESCRIPTION, WARNING_BAND, build_sc  # noqa: E402
from medzero.pacs.sr import send_sr  # noqa: E402

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def captures(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """The Secondary Capture instances of a study in Orthanc, parsed."""
    found = orthanc.post("/tools/lookup", study_uid.encode())
    if not found:
        return []
    out = []
    for series in orthanc.get(f"/studies/{found[0]['ID']}/series"):
        for instance in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance}/file")))
            if ds.SOPClassUID == SC_STORAGE:
                out.append(ds)
    return out


def test_a_secondary_capture_of_a_ct_heatmap_reads_back_and_orthanc_takes_it(orthanc, tiny_clip_dir, tmp_path):  # noqa: F811
    source_path = get_testdata_file("CT_small.dcm")
    classifier = medzero.Classifier(labels=["pneumonia", "normal"], image_model=f"local-dir:{tiny_clip_dir}", backend="torch")
    result = classifier.classify(source_path, explain=True)
    pictures = medzero.explanation_overlays(result, source_path)
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    sc = build_sc(pictures["pneumonia"], source, label="pneumonia", method="occlusion", model=result.model)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "sc.dcm")
    assert back.SOPClassUID == SC_STORAGE and back.Modality == "OT"
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.PatientID == source.PatientID  # filed with the study
    assert back.SeriesInstanceUID != source.SeriesInstanceUID and back.SeriesDescription == SC_SERIES_DESCRIPTION
    assert back.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in back.ImageComments
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = back.pixel_array
    assert back.PhotometricInterpretation == "RGB" and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.shape[1] == source.Columns and pixels.shape[0] > source.Rows  # the picture, its caption and the warning
    assert np.ptp(pixels[..., 0].astype(int) - pixels[..., 2].astype(int)) > 0  # colour: the map is there
    assert WARNING_BAND.startswith("RESEARCH USE ONLY")

    send_sr(back, f"127.0.0.1:{orthanc.dicom_port}:ORTHANC", what="Secondary Capture")  # C-STORE
    stored = poll(lambda: [d for d in captures(orthanc, source.StudyInstanceUID) if d.SOPInstanceUID == back.SOPInstanceUID])
    assert stored and stored[0].Rows == back.Rows
    again = build_sc(pictures["normal"], source, label="normal", method="occlusion", model=result.model,
                     series_instance_uid=back.SeriesInstanceUID, instance_number=2)
    from test_pacs import USER, PASSWORD  # STOW-RS, with the same credentials file form the SR uses

    credentials = tmp_path / "pacs.credentials"
    credentials.write_text(f"{USER}:{PASSWORD}\n")
    credentials.chmod(0o600)
    send_sr(again, orthanc.dicomweb, credentials=str(credentials), what="Secondary Capture")
    assert {d.SOPInstanceUID for d in poll(lambda: captures(orthanc, source.StudyInstanceUID) if
                                           len(captures(orthanc, source.StudyInstanceUID)) >= 2 else None)} >= {
        back.SOPInstanceUID, again.SOPInstanceUID}


def test_a_secondary_capture_without_a_study_is_a_one_line_error(tiny_clip_dir):
    source = pydicom.Dataset()
    source.SOPClassUID, source.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4"
    with pytest.raises(medzero.BadInputError, match="no StudyInstanceUID"):
        build_sc(b"", source, label="x", method="occlusion", model="m")


def test_the_listener_sends_heatmap_captures_where_it_sends_the_sr(orthanc, tiny_clip_dir, tmp_path, caplog):  # noqa: F811
    import logging

    from medzero.pacs.scp import Listener

    caplog.set_level(logging.DEBUG)

    cr_path = chest_cr(tmp_path / "chest.dcm")
    cr = pydicom.dcmread(cr_path, stop_before_pixels=True)
    listener = Listener(
        LISTENER_AET, 0, "chest_xray_findings", host="127.0.0.1", image_model=f"local-dir:{tiny_clip_dir}", device="cpu",
        send_to=f"127.0.0.1:{orthanc.dicom_port}:ORTHANC", results_db=tmp_path / "results.sqlite", study_idle_s=1,
        explain=True,
    )
    with listener:
        assert c_store(listener.port, str(cr_path)) == 0
        assert listener.wait_idle(180)
    pictures = poll(lambda: (lambda found: found if len(found) >= 3 else None)(captures(orthanc, cr.StudyInstanceUID)), timeout=60)
    assert len(pictures) == 3 and len({p.SeriesInstanceUID for p in pictures}) == 1
    assert all(p.StudyInstanceUID == cr.StudyInstanceUID and p.BurnedInAnnotation == "YES" for p in pictures)
    local = medzero.Classifier(task="chest_xray_findings", image_model=f"local-dir:{tiny_clip_dir}", device="cpu").classify(str(cr_path))
    top3 = [label for label, _ in local.top(3)]
    described = sorted(str(p.DerivationDescription) for p in pictures)
    assert all(any(f"'{label}'" in text for text in described) for label in top3), described
    assert "heatmap Secondary Capture(s) sent" in caplog.text
    for value in CR_PHI.values():  # the captures carry the patient module back to the PACS; the log does not
        assert value not in caplog.text
