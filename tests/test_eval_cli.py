"""`medzero eval` and `medzero calibrate` end to end: real recordings and DICOM files, tiny checkpoints.

Every number in a report is recomputed here from the Results' own scores with scikit-learn.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import medzero
from medzero.evaluation import (
    CalibrationWarning,
    apply_calibration,
    calibrate_scores,
    check_model,
    fit_threshold,
    load_overlay,
    read_manifest,
)
from medzero.evaluation.calibrate import cross_validate, stratified_folds
from medzero.cli.evaluate import calibrate_command, eval_command
from site_manifests import write_voice_manifest

skm = pytest.importorskip("sklearn.metrics")

TOL = 1e-9

# What a person said about each recording (see conftest.audio_clips): background noise, speech
# present, and the verdict. telephone_48k's noise is not judged (empty cell = not known).
VOICE = {
    "speech": (0, 1, "accept"),
    "wav": (0, 1, "accept"),
    "flac": (0, 1, "accept"),
    "ogg": (0, 1, "accept"),
    "mp3": (0, 1, "accept"),
    "m4a": (0, 1, "accept"),
    "amr": (0, 1, "review"),
    "telephone": (0, 1, "review"),
    "telephone_48k": (None, 1, "review"),
    "noisy_20db": (1, 1, "review"),
    "noisy_10db": (1, 1, "re-record"),
    "noisy_0db": (1, 1, "re-record"),
    "clipped": (0, 1, "re-record"),
    "noise": (1, 0, ""),
}


@pytest.fixture()
def cli() -> click.Group:
    """The main `medzero` group, which holds `eval` and `calibrate`."""
    from medzero.cli import cli as group

    assert group.commands["eval"] is eval_command and group.commands["calibrate"] is calibrate_command
    return group


def run(cli, args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def voice_manifest(tmp_path, audio_clips) -> Path:
    rows = {key: ("" if noise is None else ("yes" if noise else "no"), speech, verdict)
            for key, (noise, speech, verdict) in VOICE.items()}
    return write_voice_manifest(tmp_path, audio_clips, rows)


@pytest.fixture()
def audio_model(tiny_clap_dir) -> str:
    return str(tiny_clap_dir)


def _scores(manifest: Path, task, **models) -> tuple[list, list]:
    rows = read_manifest(manifest, medzero.load_task(task)).rows
    results = medzero.Classifier(task=task, **models).classify_batch([str(r.file) for r in rows])
    return rows, results


def _same(ours, ref) -> None:
    """A report value (None where undefined) equals scikit-learn's (nan where undefined)."""
    if ours is None:
        assert np.isnan(ref)
    else:
        assert ours == pytest.approx(ref, abs=TOL)


def _sklearn_ci(y, s, n_boot, seed):
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) < 2:
            skipped += 1
            continue
        values.append(skm.roc_auc_score(y[idx], s[idx]))
    return np.percentile(values, [2.5, 97.5]), skipped


def test_eval_voice_quality_report_matches_sklearn_on_the_results_scores(cli, voice_manifest, audio_model, tmp_path):
    out = tmp_path / "out" / "report.json"
    res = run(cli, ["eval", voice_manifest, "--task", "voice_quality", "--audio-model", audio_model,
                    "--bootstrap", 200, "--seed", 3, "-o", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["rows"] == {"manifest": 14, "scored": 14, "failed": 0} and report["errors"] == []
    assert set(report["labels"]) == {"background_noise", "speech_present"}

    rows, results = _scores(voice_manifest, "voice_quality", audio_model=audio_model)
    assert all(r.error is None for r in results)
    for lid, column in (("background_noise", 0), ("speech_present", 1)):
        truth = [VOICE[Path(r.path).stem][column] for r in rows]
        known = [i for i, t in enumerate(truth) if t is not None]
        y = np.array([truth[i] for i in known])
        s = np.array([results[i].scores[lid] for i in known])
        b = report["labels"][lid]
        assert (b["n_pos"], b["n_neg"], b["n_unknown"]) == (int(y.sum()), int(len(y) - y.sum()), 14 - len(known))
        assert b["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=TOL)
        assert b["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=TOL)
        assert b["prevalence"] == pytest.approx(y.mean(), abs=TOL)
        assert b["brier"] == pytest.approx(skm.brier_score_loss(y, s), abs=TOL)
        (low, high), skipped = _sklearn_ci(y, s, 200, 3)
        assert (b["auroc_ci"]["low"], b["auroc_ci"]["high"]) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
        assert b["auroc_ci"]["n_skipped"] == skipped
        pred = (s >= 0.5).astype(int)  # at or above the threshold is positive
        t = b["at_threshold"]
        assert t["threshold"] == 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _same(t["sensitivity"], skm.recall_score(y, pred, zero_division=np.nan))
            _same(t["specificity"], skm.recall_score(y, pred, pos_label=0, zero_division=np.nan))
            _same(t["ppv"], skm.precision_score(y, pred, zero_division=np.nan))
        fpr, tpr, _ = skm.roc_curve(y, s)
        np.testing.assert_allclose(b["roc"]["fpr"], fpr, atol=TOL)
        np.testing.assert_allclose(b["roc"]["tpr"], tpr, atol=TOL)
        assert sum(b["reliability"]["count"]) == len(y)

    v = report["verdicts"]
    human = [VOICE[Path(r.path).stem][2] for r in rows]
    pairs = [(h, r.verdict) for h, r in zip(human, results) if h]
    order = ["accept", "review", "re-record"]
    assert v["n"] == len(pairs) == 13
    assert v["confusion"]["matrix"] == skm.confusion_matrix([h for h, _ in pairs], [m for _, m in pairs], labels=order).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = skm.cohen_kappa_score([h for h, _ in pairs], [m for _, m in pairs], labels=order)
        kappa_lin = skm.cohen_kappa_score([h for h, _ in pairs], [m for _, m in pairs], labels=order, weights="linear")
    _same(v["kappa"], kappa)
    _same(v["kappa_linear"], kappa_lin)

    repro = report["reproducibility"]
    assert repro["models"] == [results[0].model] and repro["medzero_version"] == medzero.__version__
    assert re.fullmatch(r"[0-9a-f]{64}", repro["data_sha256"]) and re.fullmatch(r"[0-9a-f]{64}", repro["task"]["sha256"])
    assert repro["manifest"]["rows"] == 14 and (repro["seed"], repro["n_boot"]) == (3, 200)
    assert report["calibration"]["status"].startswith("uncalibrated")

    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 5
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    assert "background_noise (AUROC" in page and "Cohen" in page and report["reproducibility"]["data_sha256"] in page
    assert "background_noise" in res.stdout and "verdicts (13 rows)" in res.stdout


def test_data_hash_follows_content_not_location(voice_manifest, tmp_path):
    task = medzero.load_task("voice_quality")
    first = read_manifest(voice_manifest, task).data_hash
    moved = tmp_path / "moved"
    shutil.copytree(voice_manifest.parent, moved)
    assert read_manifest(moved / "voice.csv", task).data_hash == first
    text = (moved / "voice.csv").read_text().replace("clips/clipped.wav,no,", "clips/clipped.wav,yes,")
    (moved / "voice.csv").write_text(text)
    assert read_manifest(moved / "voice.csv", task).data_hash != first


# -- images: a multiclass task, real DICOM files, a row that fails ------------------------------------

MODALITY_TASK = """\
name: modality_check
modality: image
mode: multiclass
templates: ["a medical image: {}"]
verdicts: []
labels:
  - {id: ct, prompts: [a CT slice]}
  - {id: mr, prompts: [an MR image]}
  - {id: xray, prompts: [a chest x ray]}
  - {id: ultrasound, prompts: [an ultrasound image]}
  - {id: nuclear, prompts: [a nuclear medicine scan]}
  - {id: photo, prompts: [a photograph]}
"""


@pytest.fixture()
def image_manifest(tmp_path, dicom_files, image_files) -> tuple[Path, Path]:
    from pydicom.data import get_testdata_file

    site = tmp_path / "imgs"
    site.mkdir()
    rows = []
    for name, label in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr"), ("MR_small_RLE.dcm", "mr"),
                        ("JPEG2000.dcm", "nuclear"), ("examples_rgb_color.dcm", "ultrasound")):
        shutil.copy(get_testdata_file(name), site / name)
        rows.append({"path": name, "label": label})
    for key, label in (("mono2", "xray"), ("mono1", "xray"), ("phi", "xray"), ("ct", "ct"), ("multiframe", "")):
        shutil.copy(dicom_files[key], site / f"synthetic_{key}.dcm")
        rows.append({"path": f"synthetic_{key}.dcm", "label": label or None})
    for key in ("rgb.png", "photo.jpg"):
        shutil.copy(image_files[key], site / key)
        rows.append({"path": key, "label": "photo"})
    shutil.copy(image_files["truncated.png"], site / "truncated.png")
    rows.append({"path": "truncated.png", "label": "photo"})
    manifest = site / "modality.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "modality_check.yaml"
    task.write_text(MODALITY_TASK)
    return manifest, task


def test_eval_multiclass_dicom_report_matches_sklearn(cli, image_manifest, tiny_clip_dir, tmp_path):
    manifest, task_file = image_manifest
    image_model = f"local-dir:{tiny_clip_dir}"
    out = tmp_path / "mc" / "report.json"
    res = run(cli, ["eval", manifest, "--task", task_file, "--image-model", image_model, "--bootstrap", 100, "--format", "md", "-o", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    # the truncated PNG is an error row: counted, listed with its line, not fatal
    assert report["rows"] == {"manifest": 13, "scored": 12, "failed": 1}
    assert report["errors"][0]["line"] == 13 and report["errors"][0]["path"] == "truncated.png"
    assert "medzero: warning: line 13:" in res.stderr

    rows, results = _scores(manifest, str(task_file), image_model=image_model)
    ids = [lb.id for lb in medzero.load_task(str(task_file)).labels]
    kept = [(row, r) for row, r in zip(rows, results) if r.error is None]
    known = [(ids.index(next(k for k, v in row.labels.items() if v == 1)), r) for row, r in kept if any(row.labels.values())]
    y = np.array([k for k, _ in known])
    P = np.array([[r.scores[i] for i in ids] for _, r in known])
    mc = report["multiclass"]
    assert (mc["n"], mc["n_without_class"]) == (11, 1)
    assert mc["top_1"] == pytest.approx(skm.top_k_accuracy_score(y, P, k=1, labels=range(6)), abs=TOL)
    assert mc["top_5"] == pytest.approx(skm.top_k_accuracy_score(y, P, k=5, labels=range(6)), abs=TOL)
    pred = P.argmax(axis=1)
    yt, yp = [ids[i] for i in y], [ids[i] for i in pred]
    assert mc["confusion"]["matrix"] == skm.confusion_matrix(yt, yp, labels=ids).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mc["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(yt, yp), abs=TOL)
        assert mc["macro_f1"] == pytest.approx(skm.f1_score(yt, yp, average="macro"), abs=TOL)
    # one-vs-rest per label, e.g. "mr" (2 of 11)
    s = np.array([r.scores["mr"] for _, r in known])
    assert report["labels"]["mr"]["auroc"] == pytest.approx(skm.roc_auc_score(y == 1, s), abs=TOL)
    assert report["verdicts"] is None
    md = (tmp_path / "mc" / "report.md").read_text()
    assert "data:image/svg+xml;base64," in md
    assert "http" not in re.sub(r"\(data:image/svg\+xml;base64,[A-Za-z0-9+/=]+\)", "", md)
    assert "| true ↓ / predicted →" in md


def test_eval_adhoc_labels_with_a_label_column(cli, tmp_path, audio_clips, audio_model):
    for key in ("speech", "noise", "noisy_0db", "telephone"):
        shutil.copy(audio_clips[key], tmp_path / f"{key}.wav")
    (tmp_path / "m.csv").write_text("path,label\nspeech.wav,speech\nnoise.wav,noise\nnoisy_0db.wav,speech\ntelephone.wav,\n")
    out = tmp_path / "adhoc.json"
    res = run(cli, ["eval", tmp_path / "m.csv", "--labels", "speech,noise,music", "--audio-model", audio_model, "--bootstrap", 20, "-o", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["task"] == "ad-hoc" and report["mode"] == "multiclass"
    assert report["labels"]["music"]["n_pos"] == 0 and report["labels"]["music"]["auroc"] is None
    assert report["labels"]["speech"]["n_unknown"] == 1
    mc = report["multiclass"]
    assert (mc["n"], mc["n_without_class"], mc["top_5"]) == (3, 1, None) and "3 labels" in mc["top_5_note"]
    assert sum(map(sum, mc["confusion"]["matrix"])) == 3
    assert report["reproducibility"]["task"]["sha256_of"] == "canonical-json"


# -- calibration ----------------------------------------------------------------------------------


def test_calibrate_writes_an_overlay_that_eval_applies(cli, voice_manifest, audio_model, tmp_path):
    site = tmp_path / "site.yaml"
    res = run(cli, ["calibrate", voice_manifest, "--task", "voice_quality", "--audio-model", audio_model,
                    "--method", "sensitivity", "--target-sensitivity", 0.9, "--folds", 3, "-o", site])
    assert res.exit_code == 0, res.output
    overlay = yaml.safe_load(site.read_text())
    assert overlay["overlay_for"] == "voice_quality" and overlay["method"] == "sensitivity>=0.90"
    assert overlay["medzero_version"] == medzero.__version__ and overlay["manifest"]["rows"] == 14
    rows, results = _scores(voice_manifest, "voice_quality", audio_model=audio_model)
    assert overlay["model"] == results[0].model
    noise = overlay["labels"]["background_noise"]
    manifest_sha = read_manifest(voice_manifest, medzero.load_task("voice_quality")).sha256
    assert noise["source"] == f"calibrated on 13 rows (n+ 4, n- 9) from voice.csv sha256 {manifest_sha[:12]}, sensitivity>=0.90"
    assert noise["cv"]["folds"] == 3 and noise["cv"]["n"] == 13
    # the fitted threshold meets the target on the rows it was fitted on (sklearn's recall)
    y = np.array([VOICE[Path(r.path).stem][0] for r in rows if VOICE[Path(r.path).stem][0] is not None])
    s = np.array([res_.scores["background_noise"] for r, res_ in zip(rows, results) if VOICE[Path(r.path).stem][0] is not None])
    assert skm.recall_score(y, (s >= noise["threshold"]).astype(int)) >= 0.9
    assert noise["apparent"]["sensitivity"] == pytest.approx(skm.recall_score(y, (s >= noise["threshold"]).astype(int)), abs=1e-6)
    # speech_present is a "good" label: the problem is absence, so the target is on specificity
    assert overlay["labels"]["speech_present"]["apparent"]["specificity"] >= 0.9

    task = medzero.load_task("voice_quality")
    calibrated, calibration = apply_calibration(task, site)
    thresholds = {lb.id: lb.threshold for lb in calibrated.labels}
    assert thresholds["background_noise"] == noise["threshold"] and thresholds["tv_music"] == 0.5
    assert {lb.id: lb.threshold for lb in task.labels}["background_noise"] == 0.5  # the shipped task is untouched
    assert calibration.labels["background_noise"].source == noise["source"] and calibration.method == "sensitivity>=0.90"

    out = tmp_path / "cal" / "report.json"
    res = run(cli, ["eval", voice_manifest, "--task", "voice_quality", "--audio-model", audio_model,
                    "--calibration", site, "--bootstrap", 50, "-o", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["calibration"]["status"] == "calibrated" and report["calibration"]["sha256"] == calibration.sha256
    b = report["labels"]["background_noise"]
    assert b["at_threshold"]["threshold"] == noise["threshold"] and b["threshold_source"] == noise["source"]
    assert b["at_threshold"]["sensitivity"] == pytest.approx(noise["apparent"]["sensitivity"], abs=1e-6)
    assert report["reproducibility"]["calibration"]["path"] == str(site)
    assert "calibrated: site.yaml" in res.stdout


def test_cross_validated_estimates_never_use_the_fitting_rows():
    # Positives and negatives interleave, so a threshold fitted for sensitivity 1.0 sits just under the
    # lowest positive it has seen. Scored on its own rows it always reaches 1.0; a held-out fold's
    # lowest positive falls under the threshold fitted without it. Leakage would show as 1.0.
    pos = np.arange(10, 30) / 40  # 0.25 .. 0.725
    neg = pos - 1 / 80
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    s = np.r_[pos, neg]
    fit = lambda yy, ss: fit_threshold(yy, ss, "sensitivity", target=1.0)  # noqa: E731
    threshold = fit(y, s)
    assert skm.recall_score(y, (s >= threshold).astype(int)) == 1.0
    cv = cross_validate(y, s, fit, folds=5, seed=0)
    assert cv.stats.sensitivity < 1.0
    assignment = stratified_folds(y, 5, 0)
    np.testing.assert_array_equal(cv.assignment, assignment)
    assert sorted(np.bincount(assignment[y == 1])) == [4] * 5  # stratified
    for f in range(5):
        train = assignment != f
        assert cv.thresholds[f] == fit(y[train], s[train])
        # scrambling the held-out fold's scores cannot move the threshold it is scored with
        scrambled = s.copy()
        scrambled[~train] = np.random.default_rng(f).uniform(0, 1, (~train).sum())
        assert cross_validate(y, scrambled, fit, folds=5, seed=0).thresholds[f] == cv.thresholds[f]
    # pooled counts: every row scored exactly once, by its own fold's threshold
    tp = sum(int(((s >= cv.thresholds[f]) & (y == 1) & (assignment == f)).sum()) for f in range(5))
    assert (cv.stats.tp, cv.stats.tp + cv.stats.fn + cv.stats.tn + cv.stats.fp) == (tp, 40)


def test_youden_threshold_reaches_the_best_j_sklearn_finds():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    s = np.round(np.clip(0.25 * y + rng.uniform(0, 0.75, 80), 0, 1), 2)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    t = fit_threshold(y, s, "youden")
    pred = (s >= t).astype(int)
    j = skm.recall_score(y, pred) + skm.recall_score(y, pred, pos_label=0) - 1
    assert j == pytest.approx(np.max(tpr - fpr), abs=TOL)
    assert not np.any(np.isclose(s, t, atol=0))  # halfway between scores, never on one
    fits = calibrate_scores(medzero.task_from_labels("a,b", modality="audio", multilabel=True),
                            {"a": y.tolist(), "b": [1] * 80}, {"a": s.tolist(), "b": s.tolist()})
    assert fits[0].threshold == t and fits[1].threshold is None and "positive and negative" in fits[1].skipped


def _overlay(tmp_path, **changes) -> Path:
    data = {"overlay_for": "voice_quality", "model": "tiny@sha256:abc", "method": "youden",
            "labels": {"background_noise": {"threshold": 0.3, "source": "calibrated by hand"}}}
    data.update(changes)
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_overlays_for_another_task_or_unknown_labels_are_refused(tmp_path):
    task = medzero.load_task("voice_quality")
    with pytest.raises(medzero.TaskError, match=r"^overlay.yaml is a calibration for task chest_xray_findings, not voice_quality$"):
        apply_calibration(task, _overlay(tmp_path, overlay_for="chest_xray_findings"))
    with pytest.raises(medzero.TaskError, match=r"names label\(s\) pneumonia that task voice_quality does not have"):
        apply_calibration(task, _overlay(tmp_path, labels={"pneumonia": {"threshold": 0.2}}))
    with pytest.raises(medzero.TaskError, match="threshold must be a number between 0 and 1"):
        load_overlay(_overlay(tmp_path, labels={"background_noise": {"threshold": 1.5}}))
    with pytest.raises(medzero.TaskError, match="calibration overlay not found"):
        load_overlay(tmp_path / "nope.yaml")


def test_overlay_for_another_model_or_task_version_warns(tmp_path):
    task = medzero.load_task("voice_quality")
    with pytest.warns(CalibrationWarning, match="fitted on model tiny@sha256:abc, but scores come from other@1"):
        calibrated, calibration = apply_calibration(task, _overlay(tmp_path), model="other@1")
    assert calibrated.labels[1].threshold == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_model(calibration, "tiny@sha256:abc")
    with pytest.warns(CalibrationWarning, match="different version of task voice_quality"):
        apply_calibration(task, _overlay(tmp_path, task_sha256="0" * 64))


# -- bad manifests: one line that names the row, non-zero exit ---------------------------------------


@pytest.mark.parametrize(
    "lines, message",
    [
        (["path,background_noise", "clips/speech.wav,1", "clips/missing.wav,0"], r"voice\.csv line 3: file not found: clips/missing\.wav"),
        (["path,background_noise,backgound_music", "clips/speech.wav,1,0"], r"voice\.csv line 1: unknown label column 'backgound_music'; task voice_quality has labels speech_present, background_noise"),
        (["path,background_noise,tv_music", "clips/speech.wav,1,", "clips/noise.wav,0,"], r"voice\.csv line 1: column 'tv_music' is empty"),
        (["path,background_noise", "clips/speech.wav,1", "clips/noise.wav,maybe"], r"voice\.csv line 3: column 'background_noise': bad value 'maybe'"),
        (["path,background_noise", "clips/speech.wav,-1"], r"voice\.csv line 2: column 'background_noise': bad value '-1'.*uncertain"),
        (["path,background_noise"], r"voice\.csv: no rows"),
        (["path,verdict", "clips/speech.wav,fine"], r"voice\.csv line 2: verdict 'fine' is not one of accept, review, re-record"),
        (["path,background_noise", "clips/speech.wav,1", "clips/speech.wav,0"], r"voice\.csv line 3: clips/speech\.wav is already listed on line 2"),
        (["file,background_noise", "clips/speech.wav,1"], r"voice\.csv line 1: no 'path' column"),
        (["path,background_noise", "clips/speech.wav,1,0"], r"voice\.csv line 2: 3 cells but the header has 2 columns"),
        (["path,label", "clips/speech.wav,speech"], r"voice\.csv line 1: a 'label' column names one class per row, but task voice_quality is multilabel"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_bad_manifests_give_one_line_naming_the_row(cli, tmp_path, audio_clips, lines, message, command):
    (tmp_path / "clips").mkdir()
    shutil.copy(audio_clips["speech"], tmp_path / "clips" / "speech.wav")
    shutil.copy(audio_clips["noise"], tmp_path / "clips" / "noise.wav")
    manifest = tmp_path / "voice.csv"
    manifest.write_text("\n".join(lines) + "\n")
    extra = ["-o", tmp_path / "site.yaml"] if command == "calibrate" else []
    res = run(cli, [command, manifest, "--task", "voice_quality", "--audio-model", "never-loaded", *extra])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medzero: error: ") and re.search(message, err[0]), err
    assert not (tmp_path / "site.yaml").exists()


def test_jsonl_manifest_values_and_bad_lines(tmp_path, audio_clips):
    shutil.copy(audio_clips["speech"], tmp_path / "a.wav")
    shutil.copy(audio_clips["noise"], tmp_path / "b.wav")
    task = medzero.load_task("voice_quality")
    good = tmp_path / "m.jsonl"
    good.write_text('{"path": "a.wav", "background_noise": false, "speech_present": "Yes"}\n\n'
                    '{"path": "b.wav", "background_noise": 1, "speech_present": null, "verdict": "re-record"}\n')
    m = read_manifest(good, task)
    assert [r.labels for r in m.rows] == [{"speech_present": 1, "background_noise": 0}, {"speech_present": None, "background_noise": 1}]
    assert [r.line for r in m.rows] == [1, 3] and [r.verdict for r in m.rows] == [None, "re-record"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.wav", "background_noise": 0}\n{"path": "b.wav", "background_noise": 0.5}\n')
    with pytest.raises(medzero.BadInputError, match=r"^.*bad\.jsonl line 2: column 'background_noise': bad value '0\.5'"):
        read_manifest(bad, task)
    bad.write_text('{"path": "a.wav", "background_noise": 0}\n["b.wav", 1]\n')
    with pytest.raises(medzero.BadInputError, match=r"bad\.jsonl line 2: each line must be a JSON object"):
        read_manifest(bad, task)


def test_usage_errors_exit_2(cli, voice_manifest):
    res = run(cli, ["eval", voice_manifest, "--task", "voice_quality", "--labels", "a,b"])
    assert res.exit_code == 2 and res.stderr.strip() == "medzero: error: give one of --task and --labels"
    res = run(cli, ["calibrate", voice_manifest, "--task", "voice_quality", "-o", "x.yaml", "--method", "youden", "--target-sensitivity", 0.8])
    assert res.exit_code == 2 and "--target-sensitivity goes with --method sensitivity" in res.stderr
    res = run(cli, ["eval", voice_manifest, "--task", "nope"])
    assert res.exit_code == 1 and res.stderr.startswith("medzero: error: unknown task 'nope'")
