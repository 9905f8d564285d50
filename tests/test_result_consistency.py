"""Results that do not contradict themselves, through the CLI as a user runs it (``main([...])``) and
the JSON that REST returns (``Result.to_dict()``):

- an input the task does not judge (``not_applicable``) lists no findings: its scores are kept raw,
  but nothing is positive or negative and no threshold was applied;
- a reason's printed numbers make its sentence true ("9.6 dB below 10.0 dB", never "10 dB below 10 dB");
- ``medzero eval`` counts medzero's abstentions (``not_applicable``) apart from its verdicts;
- a text search over audio and image cases ranks within each modality, never by comparing the
  cosines of two models.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.data import get_testdata_file

import audio_samples
import medzero
from medzero.cli import main

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


@pytest.fixture(scope="module")
def image_model(tiny_hf_clip_dir) -> str:
    return f"local-dir:{tiny_hf_clip_dir}"


# -- 1. not_applicable: scores kept, nothing judged -----------------------------------------------


def test_a_ct_slice_lists_no_findings_in_the_table_and_no_thresholds_in_json(image_model, capsys):
    ct = get_testdata_file("CT_small.dcm")
    assert main(["classify", ct, "--task", "chest_xray_findings", "--image-model", image_model, "--device", "cpu"]) == 0
    table = " ".join(capsys.readouterr().out.split())
    task = medzero.load_task("chest_xray_findings")
    assert "Not applicable" in table and "not judged" in table
    for label in task.labels:  # no finding is listed with a score, as if it were one
        assert not re.search(rf"{re.escape(label.display('en'))} \d", table), label.id

    assert main(["classify", ct, "--task", "chest_xray_findings", "--image-model", image_model, "--device", "cpu", "--lang", "zh"]) == 0
    assert "未判读" in capsys.readouterr().out

    assert main(["classify", ct, "--task", "chest_xray_findings", "--image-model", image_model, "--device", "cpu", "--format", "json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["verdict"] == "not_applicable" and record["applicable"] is False
    assert set(record["scores"]) == set(task.label_ids())  # the raw scores stay available
    assert record["thresholds"] == {}  # but none was applied: no label is positive or negative
    assert [r["kind"] for r in record["reasons"]] == ["applicability"]

    result = medzero.Classifier("chest_xray_findings", image_model=image_model, device="cpu").classify(ct)
    assert result.scores == pytest.approx(record["scores"])
    assert not result.judged and all(result.positive(lid) is None for lid in task.label_ids())


def test_a_chest_radiograph_is_still_judged(image_model, dicom_files):
    result = medzero.Classifier("chest_xray_findings", image_model=image_model, device="cpu").classify(dicom_files["phi"])
    assert result.judged and result.verdict in ("routine", "review", "urgent")
    record = result.to_dict()
    assert record["thresholds"] == result.thresholds and set(record["thresholds"]) == set(result.scores)
    for lid, score in result.scores.items():
        assert result.positive(lid) == (score >= result.thresholds[lid])


# -- 2. reasons that are true as printed -------------------------------------------------------------

_NUMBER = r"(-?[\d,]+(?:\.\d+)?)"
_WORDS = {"below": "<", "低于": "<", "above the threshold": ">", "高于阈值": ">", "at the threshold": "=", "等于阈值": "="}


def _printed_comparison(text: str) -> tuple[float, str, float]:
    """``(value, relation, limit)`` as a reader of the reason's sentence sees them."""
    words = "|".join(re.escape(w) for w in sorted(_WORDS, key=len, reverse=True))
    match = re.search(rf"{_NUMBER}\s*(?:%|dB|dBFS|Hz|s)?\s+({words})\s+{_NUMBER}", text)
    assert match, text
    value, word, limit = match.groups()
    return float(value.replace(",", "")), _WORDS[word], float(limit.replace(",", ""))


def _assert_true_as_printed(text: str) -> None:
    value, relation, limit = _printed_comparison(text)
    assert {"<": value < limit, ">": value > limit, "=": value == limit}[relation], text


@pytest.mark.parametrize(
    "value,limit,direction,unit,expected_en",
    [
        (9.58, 10.0, "below", "dB", "Signal-to-noise ratio 9.6 dB below 10.0 dB"),
        (0.5004, 0.5, "above", "", "Signal-to-noise ratio 0.5004 above the threshold 0.5000"),
        (0.0496, 0.05, "below", "%", "Signal-to-noise ratio 4.96% below 5.00%"),
        (3799.6, 3800.0, "below", "Hz", "Signal-to-noise ratio 3,799.6 Hz below 3,800.0 Hz"),
        (0.5, 0.5, "above", "", "Signal-to-noise ratio 0.50 at the threshold 0.50"),
        (6.0, 10.0, "below", "dB", "Signal-to-noise ratio 6 dB below 10 dB"),  # apart already: as short as before
    ],
)
def test_reason_text_prints_enough_digits(value, limit, direction, unit, expected_en):
    reason = medzero.Reason("metric", "snr_db", {"en": "Signal-to-noise ratio", "zh": "信噪比"}, value, limit, direction, "re-record", unit=unit)
    assert reason.text("en") == expected_en
    for lang in ("en", "zh"):
        _assert_true_as_printed(reason.text(lang))
    assert reason.to_dict()["text"]["zh"].startswith("信噪比 ")


def test_random_values_and_limits_always_print_true():
    rng = np.random.default_rng(7)
    for unit in ("", "dB", "Hz", "%", "s"):
        for _ in range(300):
            limit = float(rng.choice([0.5, 10.0, 3800.0, 0.05, 2.0, 0.01]))
            value = limit + float(rng.choice([-1, 1])) * float(rng.choice([1e-9, 1e-5, 1e-3, 0.02, 0.4])) * max(1.0, limit)
            direction = "below" if value < limit else "above"
            reason = medzero.Reason("metric", "m", {"en": "M", "zh": "M"}, value, limit, direction, "review", unit=unit)
            for lang in ("en", "zh"):
                _assert_true_as_printed(reason.text(lang))


def _voice_json(capsys, clip, *args) -> dict:
    assert main(["classify", str(clip), "--format", "json", "--device", "cpu", *map(str, args)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    return record


def test_snr_just_under_its_limit_reads_true_in_the_cli(tiny_clap_dir, audio_clips, tmp_path, capsys):
    clip = audio_clips["noisy_10db"]
    snr = _voice_json(capsys, clip, "--task", "voice_quality", "--audio-model", tiny_clap_dir)["metrics"]["snr_db"]
    # A limit above the measured SNR that the old one-digit-less print showed as the same number.
    limit = snr + (round(snr) + 0.5 - snr) / 2
    assert f"{limit:.0f}" == f"{snr:.0f}" and snr < limit
    task = yaml.safe_load((PROMPTS / "voice_quality.yaml").read_text())
    task["metrics"]["snr_db"]["min"] = limit
    path = tmp_path / "voice_quality_site.yaml"
    path.write_text(yaml.safe_dump(task, allow_unicode=True))

    record = _voice_json(capsys, clip, "--task", path, "--audio-model", tiny_clap_dir)
    (reason,) = [r for r in record["reasons"] if r["id"] == "snr_db"]
    for lang in ("en", "zh"):
        _assert_true_as_printed(reason["text"][lang])
        assert reason["text"][lang] in record["summary"][lang]
    assert main(["classify", str(clip), "--task", str(path), "--audio-model", str(tiny_clap_dir), "--device", "cpu"]) == 0
    table = " ".join(capsys.readouterr().out.split())
    assert f"{snr:.1f} dB" in table and f"{limit:.1f} dB" in table


def test_a_speech_ratio_just_under_its_limit_reads_true(tiny_clap_dir, audio_clips, tmp_path, capsys):
    clip = audio_clips["noise"]
    ratio = _voice_json(capsys, clip, "--task", "voice_quality", "--audio-model", tiny_clap_dir)["metrics"]["speech_ratio"]
    limit = ratio + 1e-4  # the old one-decimal percentage printed both as the same number
    assert f"{limit * 100:.1f}" == f"{ratio * 100:.1f}"
    task = yaml.safe_load((PROMPTS / "voice_quality.yaml").read_text())
    task["applies_to"]["speech"]["min_speech_ratio"] = limit
    path = tmp_path / "voice_quality_site.yaml"
    path.write_text(yaml.safe_dump(task, allow_unicode=True))
    record = _voice_json(capsys, clip, "--task", path, "--audio-model", tiny_clap_dir)
    assert record["verdict"] == "not_applicable"
    (reason,) = [r for r in record["reasons"] if r["id"] == "speech"]
    for lang in ("en", "zh"):
        _assert_true_as_printed(reason["text"][lang])


def test_a_label_just_past_a_site_threshold_reads_true_in_the_cli(tiny_clap_dir, audio_clips, tmp_path, capsys):
    clip = audio_clips["speech"]
    record = _voice_json(capsys, clip, "--task", "voice_quality", "--audio-model", tiny_clap_dir)
    task = medzero.load_task("voice_quality")
    label = next(lb for lb in task.labels if lb.polarity == "bad")
    score = record["scores"][label.id]
    # a threshold under the score that the old two-decimal print showed as the same number
    threshold = (float(f"{score:.2f}") - 0.005 + score) / 2
    assert f"{threshold:.2f}" == f"{score:.2f}" and threshold < score
    overlay = tmp_path / "site.yaml"
    overlay.write_text(yaml.safe_dump({"overlay_for": "voice_quality", "method": "youden",
                                       "labels": {label.id: {"threshold": threshold, "source": "test"}}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = _voice_json(capsys, clip, "--task", "voice_quality", "--audio-model", tiny_clap_dir, "--calibration", overlay)
    (reason,) = [r for r in record["reasons"] if r["id"] == label.id]
    for lang in ("en", "zh"):
        value, relation, limit = _printed_comparison(reason["text"][lang])
        assert relation == ">" and value > limit, reason["text"][lang]


# -- 3. eval: abstentions counted apart --------------------------------------------------------------



def test_eval_reports_abstentions_as_their_own_column_and_count(tiny_clap_dir, audio_clips, tmp_path, capsys):
    skm = pytest.importorskip("sklearn.metrics")
    rows = [("speech", "accept"), ("flac", "accept"), ("telephone", "review"), ("noisy_0db", "re-record"),
            ("clipped", "re-record"), ("noise", "re-record")]
    files = [(audio_clips[key], verdict) for key, verdict in rows] + [(audio_samples.silent_wav(tmp_path / "silence.wav"), "re-record")]
    manifest = tmp_path / "site.csv"
    manifest.write_text("path,verdict\n" + "".join(f"{path},{verdict}\n" for path, verdict in files))
    out = tmp_path / "out" / "report.json"
    assert main(["eval", str(manifest), "--task", "voice_quality", "--audio-model", str(tiny_clap_dir), "--device", "cpu",
                 "--bootstrap", "20", "--format", "md", "-o", str(out)]) == 0
    printed = capsys.readouterr().out

    results = medzero.Classifier("voice_quality", audio_model=str(tiny_clap_dir), device="cpu").classify_batch([str(p) for p, _ in files])
    human = [v for _, v in files]
    model = [r.verdict for r in results]
    abstained = [h for h, m in zip(human, model) if m == "not_applicable"]
    assert len(abstained) >= 2  # pink noise and silence: no speech, so not judged
    judged = [(h, m) for h, m in zip(human, model) if m != "not_applicable"]
    order = ["accept", "review", "re-record"]

    v = json.loads(out.read_text())["verdicts"]
    assert (v["n"], v["n_judged"], v["n_abstained"]) == (len(files), len(judged), len(abstained))
    assert v["abstention_rate"] == pytest.approx(len(abstained) / len(files))
    assert v["confusion"]["abstained"] == [abstained.count(o) for o in order]
    assert v["confusion"]["matrix"] == skm.confusion_matrix([h for h, _ in judged], [m for _, m in judged], labels=order).tolist()
    assert sum(map(sum, v["confusion"]["matrix"])) + sum(v["confusion"]["abstained"]) == v["n"]  # every row counted once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = skm.cohen_kappa_score([h for h, _ in judged], [m for _, m in judged], labels=order)
    assert v["kappa"] == pytest.approx(kappa, abs=1e-9) if not np.isnan(kappa) else v["kappa"] is None
    assert v["agreement"] == pytest.approx(sum(h == m for h, m in judged) / len(judged))

    rate = f"{len(abstained) / len(files) * 100:.1f}% abstained"
    summary = " ".join(printed.split())
    assert f"verdicts ({len(files)} rows): {len(judged)} judged, {len(abstained)} not_applicable ({rate})" in summary
    assert f"over the {len(judged)} judged rows" in summary
    assert re.search(r"human \\ medzero .*accept .*review .*re-record .*not_applicable", summary)
    page = out.with_suffix(".md").read_text()
    assert "| human ↓ / medzero → | accept | review | re-record | not_applicable |" in page and rate in page


# -- 6. search: ranked within each modality ---------------------------------------------------------


def test_text_search_over_both_modalities_never_compares_their_scores(tmp_path, tiny_clap_dir, tiny_hf_clip_dir):
    audio_model, image_model = str(tiny_clap_dir), f"local-dir:{tiny_hf_clip_dir}"
    index = medzero.CaseIndex(tmp_path / "cases", audio_model=audio_model, image_model=image_model)
    query = "a person speaking"
    rng = np.random.default_rng(0)
    spaces = {}
    for modality in ("audio", "image"):
        encoder = index.encoder(modality)
        q = encoder.embed_text([query])[0]
        q = q / np.linalg.norm(q)
        noise = rng.standard_normal((4, q.size)).astype(np.float32)
        noise -= np.outer(noise @ q, q)  # orthogonal to the query
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        # the image cases all score above every audio case: a merge by score would put images first
        cosines = [0.9, 0.8, 0.7, 0.6] if modality == "image" else [0.5, 0.4, 0.3, 0.2]
        vectors = np.stack([c * q + np.sqrt(1 - c * c) * n for c, n in zip(cosines, noise)])
        index.add_vectors(vectors, [{"path": f"{modality}-{i}"} for i in range(4)], modality=modality, fingerprint=encoder.fingerprint)
        spaces[modality] = cosines
    hits = index.search_text(query, k=6)
    assert [h.modality for h in hits] == ["audio", "image"] * 3  # rank 1 of each, then rank 2, ...
    for modality, cosines in spaces.items():
        mine = [h.score for h in hits if h.modality == modality]
        assert mine == pytest.approx(cosines[:3], abs=1e-4)  # raw cosines, best first within the modality
    assert "within their modality" in medzero.CaseIndex.search_text.__doc__
    index.close()
