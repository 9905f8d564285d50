"""What a task can judge (``applies_to``): DICOM tags, the zero-shot gate and voice activity turn an
input outside the task into ``not_applicable``; and without the audio model, a voice task still gets
a signal-only verdict from its waveform-metric rules."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import audio_samples
import medzero
from conftest import default_models_missing_env
from fixtures_image import write_dicom
from medzero.cli.classify import render
from medzero.encoders import factory as encoders
from medzero.core.errors import TaskError
from medzero.tasks.schema import load_task
from medzero.tasks.scoring import class_embeddings
from medzero.image import read_image

CHEST_TASKS = ("chest_xray_findings", "chest_xray_quality", "chest_xray_covid")
TRIAGE = {"chest_xray_findings": {"routine", "review", "urgent"}, "chest_xray_quality": {"acceptable", "check", "repeat"}}


@pytest.fixture(scope="module")
def image_model(tiny_hf_clip_dir) -> str:
    return f"local-dir:{tiny_hf_clip_dir}"


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """Synthetic radiographs written with pydicom: a frontal CR chest, a lateral one, one with no view."""
    root = tmp_path_factory.mktemp("chest")
    y, x = np.mgrid[0:64, 0:64]
    pixels = ((x * 37 + y * 11) % 4096).astype(np.uint16)
    common = dict(bits_stored=12, modality="CR", BodyPartExamined="CHEST")
    files = {
        "pa": write_dicom(root / "pa.dcm", pixels, ViewPosition="PA", **common),
        "lateral": write_dicom(root / "lateral.dcm", pixels, ViewPosition="LL", **common),
    }
    with warnings.catch_warnings():  # lower case is not valid for a CS value, but is met in the wild
        warnings.simplefilter("ignore", UserWarning)
        files["no_view"] = write_dicom(root / "no_view.dcm", pixels, bits_stored=12, modality="dx", BodyPartExamined="chest")
    return files


def _plain_json(result: medzero.Result) -> dict:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False, ensure_ascii=False))


# -- images: DICOM tags ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", CHEST_TASKS)
def test_pydicom_ct_and_mr_are_not_triaged_by_a_chest_xray_task(task, image_model):
    files = {"CT": get_testdata_file("CT_small.dcm"), "MR": get_testdata_file("MR_small.dcm")}
    results = medzero.Classifier(task, image_model=image_model, device="cpu").classify_batch(list(files.values()))
    for (modality, _), result in zip(files.items(), results):
        assert result.error is None
        assert result.verdict == "not_applicable" and result.applicable is False
        assert result.verdict_name == {"en": "Not applicable", "zh": "不适用"}
        assert [r.kind for r in result.reasons] == ["applicability"]  # no label reasons, no triage level
        (reason,) = result.reasons
        assert reason.id == "Modality" and reason.verdict == "not_applicable"
        assert reason.text("en") == f"Modality {modality} is not a frontal chest radiograph (expected CR or DX)"
        assert reason.text("zh") == f"成像类型 {modality}：不是胸部正位X光片（应为 CR 或 DX）"
        assert result.applicability["checks"] == {"dicom": "fail"}
        assert result.applicability["gate"]["decides"] is False  # the tags settled it
        record = _plain_json(result)
        assert record["applicable"] is False and record["verdict"] == "not_applicable"
        assert record["reasons"][0]["text"]["zh"] == reason.text("zh") and record["reasons"][0]["value"] is None
        assert record["summary"]["en"].startswith(f"Not applicable: Modality {modality} is not")


def test_a_frontal_cr_chest_gets_a_triage_level(chest, image_model, dicom_files):
    clf = medzero.Classifier("chest_xray_findings", image_model=image_model, device="cpu")
    for path in (chest["pa"], dicom_files["phi"]):
        result = clf.classify(path)
        assert result.applicable is True and result.verdict in TRIAGE["chest_xray_findings"]
        assert all(r.kind == "label" for r in result.reasons)
        assert result.applicability["checks"] == {"dicom": "pass"}
        gate = result.applicability["gate"]
        assert gate["decides"] is False and 0.0 <= gate["score"] <= 1.0 and gate["min_score"] == 0.5
        assert _plain_json(result)["applicable"] is True


def test_a_lateral_view_is_flagged(chest, image_model):
    result = medzero.classify(chest["lateral"], task="chest_xray_findings", image_model=image_model, device="cpu")
    assert result.verdict == "not_applicable" and not result.applicable
    (reason,) = result.reasons
    assert reason.id == "ViewPosition"
    assert reason.text("en") == "View position LL (left lateral view) is not a frontal chest radiograph (expected PA or AP)"
    assert "左侧位" in reason.text("zh") and "应为 PA 或 AP" in reason.text("zh")


def _gate_score(image_model: str, path, task_name: str = "chest_xray_findings") -> float:
    """The gate's score computed here from open_clip's embeddings: a softmax over the gate's classes."""
    enc = encoders.create(image_model, modality="image", device="cpu")
    gate = load_task(task_name).applies_to.gate
    classes = class_embeddings(enc, gate.groups())
    e = enc.embed([read_image(path)])[0].astype(np.float64)
    logits = enc.logit_scale * classes.astype(np.float64) @ e
    p = np.exp(logits - logits.max())
    return float(p[0] / p.sum())


@pytest.mark.parametrize("name", ["gray8.png", "rgb.png", "photo.jpg"])
def test_files_without_tags_go_through_the_gate(name, image_files, image_model):
    result = medzero.classify(image_files[name], task="chest_xray_findings", image_model=image_model, device="cpu")
    assert result.applicability["checks"] == {"dicom": "unknown"}  # no tags: the gate decides
    gate = result.applicability["gate"]
    assert gate["decides"] is True
    assert gate["score"] == pytest.approx(_gate_score(image_model, image_files[name]), abs=1e-5)
    # With tiny random models the score is arbitrary; the decision must follow it.
    assert result.applicable is (gate["score"] >= gate["min_score"])
    if result.applicable:
        assert result.verdict in TRIAGE["chest_xray_findings"]
    else:
        assert result.verdict == "not_applicable" and [r.id for r in result.reasons] == ["gate"]
        assert result.reasons[0].value == gate["score"] and result.reasons[0].limit == 0.5


def test_a_dicom_missing_a_tag_goes_through_the_gate(chest, image_model):
    """DX / chest (any case) but no ViewPosition: the present tags pass, the gate decides the rest."""
    result = medzero.classify(chest["no_view"], task="chest_xray_findings", image_model=image_model, device="cpu")
    assert result.applicability["checks"] == {"dicom": "unknown"} and result.applicability["gate"]["decides"]
    assert result.applicable is (result.applicability["gate"]["score"] >= 0.5)


def _gate_only_task(tmp_path, min_score: float):
    path = tmp_path / f"gate_{min_score}.yaml"
    path.write_text(
        "name: gated\nmodality: image\nmode: multiclass\nverdicts: []\n"
        "labels:\n  - {id: normal, prompts: [normal lung]}\n  - {id: pneumonia, prompts: [pneumonia]}\n"
        "applies_to:\n"
        "  what: {en: a chest radiograph, zh: 胸片}\n"
        f"  gate: {{prompts: [a chest radiograph], others: [a photo of skin, an image], min_score: {min_score}}}\n"
    )
    return path


def test_the_gate_decides_both_ways(tmp_path, image_files, image_model):
    png = image_files["rgb.png"]
    passed = medzero.classify(png, task=_gate_only_task(tmp_path, 0.0), image_model=image_model, device="cpu")
    assert passed.applicable and passed.verdict in {"normal", "pneumonia"}
    failed = medzero.classify(png, task=_gate_only_task(tmp_path, 1.0), image_model=image_model, device="cpu")
    assert not failed.applicable and failed.verdict == "not_applicable"
    score = failed.applicability["gate"]["score"]
    assert score == passed.applicability["gate"]["score"] < 1.0
    (reason,) = failed.reasons
    assert reason.text("en") == f"Zero-shot check {medzero.format_value(score)} below 1: does not look like a chest radiograph"
    assert reason.text("zh").endswith("：不像胸片")
    assert failed.scores == passed.scores  # scores are still reported


def test_the_cli_renders_not_applicable_without_changes(image_model):
    results = medzero.Classifier("chest_xray_findings", image_model=image_model, device="cpu").classify_batch(
        [get_testdata_file("CT_small.dcm")]
    )
    table = render(results, "table", "zh")
    assert "不适用" in table and "成像类型 CT" in table
    assert "not_applicable" in render(results, "csv", "en")


# -- audio: voice activity ---------------------------------------------------------------------------



def test_voice_quality_needs_speech(tiny_clap_dir, audio_clips, tmp_path):
    clf = medzero.Classifier("voice_quality", audio_model=str(tiny_clap_dir), device="cpu")
    speech_like = ["speech", "noisy_0db", "telephone", "clipped", "amr"]
    results = clf.classify_batch([audio_clips[k] for k in speech_like] + [audio_clips["noise"], audio_samples.silent_wav(tmp_path / "silence.wav")])
    for key, result in zip(speech_like, results):
        assert result.applicable, key
        assert result.verdict in {"accept", "review", "re-record"}, key
        assert result.applicability["checks"] == {"speech": "pass"}
        assert result.metrics["speech_ratio"] > 0.2, key
    for result in results[len(speech_like):]:
        assert result.verdict == "not_applicable" and not result.applicable
        (reason,) = result.reasons
        assert reason.id == "speech" and reason.value < 0.02 and reason.limit == 0.05
        assert reason.text("en").endswith("no speech heard, not a recording of a person speaking")
        assert "未检测到人声" in reason.text("zh")
        assert result.timeline is None
        _plain_json(result)


# -- the schema ----------------------------------------------------------------------------------------

GOOD_IMAGE_TASK = """name: t
modality: image
labels:
  - {id: a, prompts: [a]}
  - {id: b, prompts: [b]}
"""


@pytest.mark.parametrize(
    "block,field",
    [
        ("applies_to: {dicom: {PatientName: [X]}}", "field 'applies_to.dicom.PatientName'"),
        ("applies_to: {dicom: {Modality: []}}", "field 'applies_to.dicom.Modality'"),
        ("applies_to: {dicom: {Modality: [CR, 3]}}", "field 'applies_to.dicom.Modality'"),
        ("applies_to: {gate: {prompts: [a chest x-ray], others: []}}", "field 'applies_to.gate.others'"),
        ("applies_to: {gate: {prompts: [a], others: [b], min_score: 2}}", "field 'applies_to.gate.min_score'"),
        ("applies_to: {gate: {prompts: [a], others: [b], templates: [x]}}", "field 'applies_to.gate.templates'"),
        ("applies_to: {speech: {min_speech_ratio: 0.1}}", "field 'applies_to.speech': not a check of image tasks (known: what, gate, dicom)"),
        ("applies_to: {what: {zh: 胸片}}", "field 'applies_to.what.en'"),
        ("verdicts: [ok, not_applicable]", "verdict 'not_applicable' is reserved"),
    ],
)
def test_a_malformed_applies_to_is_a_one_line_error_naming_the_field(tmp_path, block, field):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_IMAGE_TASK + block + "\n")
    with pytest.raises(TaskError) as info:
        load_task(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and field in message


def test_speech_check_schema_on_an_audio_task(tmp_path):
    path = tmp_path / "voice.yaml"
    path.write_text(GOOD_IMAGE_TASK.replace("image", "audio") + "applies_to: {speech: {min_speech_ratio: -1}}\n")
    with pytest.raises(TaskError, match=r"field 'applies_to.speech.min_speech_ratio'"):
        load_task(path)
    path.write_text(GOOD_IMAGE_TASK.replace("image", "audio") + "applies_to: {speech: {}}\n")
    assert load_task(path).applies_to.checks["speech"].min_speech_ratio == 0.05
    # A task dumped and validated again keeps its checks.
    task = load_task("chest_xray_findings")
    again = type(task).model_validate(task.model_dump())
    assert again.applies_to == task.applies_to


# -- without the audio model: signal-only verdicts ---------------------------------------------------------


@pytest.fixture(scope="module")
def no_model_results(audio_clips, tmp_path_factory):
    """A site without the default audio model (no model named, none cached, no pack)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in default_models_missing_env(tmp_path_factory.mktemp("no-models")).items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        clf = medzero.Classifier("voice_quality", device="cpu")
        keys = ["clipped", "speech", "noise"]
        return dict(zip(keys, clf.classify_batch([audio_clips[k] for k in keys])))


def test_clipped_clip_is_re_record_by_the_clipping_rule_without_the_model(no_model_results):
    result = no_model_results["clipped"]
    assert result.error is None and result.signal_only is True
    assert result.verdict == "re-record" and result.scores == {} and result.model == ""
    assert any(r.kind == "metric" and r.id == "clipping_ratio" for r in result.reasons)
    assert not any(r.kind == "label" for r in result.reasons)
    note = result.reasons[-1]
    assert note.kind == "note" and note.id == "signal_only"
    assert note.text("en").startswith("signal-only verdict: the audio model is not available (")
    assert note.text("zh").startswith("仅依据信号指标得出结论：audio 模型不可用（")
    assert "\n" not in note.text("en")
    record = _plain_json(result)
    assert record["signal_only"] is True and record["scores"] == {} and record["error"] is None
    assert record["summary"]["en"].startswith("Re-record: ")


def test_good_clip_gets_a_signal_only_verdict(no_model_results):
    result = no_model_results["speech"]
    assert result.signal_only and result.applicable and result.verdict in {"accept", "review"}
    assert result.metrics["snr_db"] > 10 and result.reasons[-1].id == "signal_only"
    assert result.summary("en").startswith(result.verdict_name["en"] + ": ")


def test_noise_is_not_applicable_without_the_model_too(no_model_results):
    result = no_model_results["noise"]
    assert result.signal_only and result.verdict == "not_applicable"
    assert [r.kind for r in result.reasons] == ["applicability", "note"]


def test_without_the_model_adhoc_labels_and_tasks_without_metric_rules_still_fail(audio_clips, tiny_hf_clip_dir, default_models_missing):
    for options in ({"labels": "speech,music"}, {"task": "respiratory_sounds"}):
        (result,) = medzero.Classifier(device="cpu", **options).classify_batch([audio_clips["speech"]])
        assert result.error is not None and "laion/clap-htsat-fused" in result.error and not result.signal_only
    # The default tasks of a mixed batch: the recording gets a signal-only verdict, the image is scored.
    clf = medzero.Classifier(image_model=f"local-dir:{tiny_hf_clip_dir}", device="cpu")
    voice, image = clf.classify_batch([audio_clips["clipped"], get_testdata_file("CT_small.dcm")])
    assert voice.signal_only and voice.verdict == "re-record"
    assert not image.signal_only and image.verdict == "not_applicable" and image.scores


def test_a_named_model_that_cannot_be_found_is_an_error_never_a_signal_only_verdict(audio_clips, monkeypatch, tiny_clap_dir):
    """A mistyped path (argument or MEDZERO_AUDIO_MODEL) must not pass as an 'accept'."""
    (result,) = medzero.Classifier("voice_quality", audio_model="/nonexistent/dir", device="cpu").classify_batch([audio_clips["speech"]])
    assert not result.signal_only and result.verdict is None
    assert result.error == "audio model directory not found: /nonexistent/dir (it does not exist); check the path given with --audio-model or MEDZERO_AUDIO_MODEL"
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", "/nonexistent/env-dir")
    (result,) = medzero.Classifier("voice_quality", device="cpu").classify_batch([audio_clips["speech"]])
    assert not result.signal_only and "/nonexistent/env-dir" in result.error
