"""Calibrated probabilities: Platt and isotonic maps checked against scikit-learn, temperature scaling
against the log-loss it must lower, overlays (format 2) that refuse bad tables, and the whole path
on real recordings scored by the tiny real CLAP checkpoint: calibrate -> overlay -> classify -> eval."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import medzero
from site_manifests import run_cli, write_voice_manifest
from medzero.evaluation.probability import (
    PLATT_C,
    calibrate_probabilities,
    fit_isotonic,
    fit_joint_temperature,
    fit_platt,
    fit_temperature,
    log_loss,
)
from medzero.evaluation import read_manifest
from medzero.evaluation.calibrate import stratified_folds
from medzero.tasks.overlay import apply_calibration, load_overlay

sklm = pytest.importorskip("sklearn.linear_model")
skiso = pytest.importorskip("sklearn.isotonic")
skm = pytest.importorskip("sklearn.metrics")

#: What a person said about each recording: background noise, speech present, verdict.
VOICE = {
    "speech": (0, 1, "accept"), "wav": (0, 1, "accept"), "flac": (0, 1, "accept"), "ogg": (0, 1, "accept"),
    "mp3": (0, 1, "accept"), "m4a": (0, 1, "accept"), "amr": (0, 1, "review"), "telephone": (0, 1, "review"),
    "telephone_48k": (0, 1, "review"), "noisy_20db": (1, 1, "review"), "noisy_10db": (1, 1, "re-record"),
    "noisy_0db": (1, 1, "re-record"), "clipped": (0, 1, "re-record"), "noise": (1, 0, ""),
}


def _data(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1), 2)  # rounded: ties, as real scores have
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_platt_equals_sklearn_logistic_regression(seed):
    y, s = _data(seed)
    ours = fit_platt(y, s)
    ref = sklm.LogisticRegression(C=PLATT_C, tol=1e-14, max_iter=100_000).fit(s[:, None], y)
    held = np.r_[np.linspace(-0.2, 1.2, 57), s]
    np.testing.assert_allclose(ours(held), ref.predict_proba(held[:, None])[:, 1], atol=1e-6)
    assert ours.params["a"] == pytest.approx(ref.coef_[0, 0], rel=1e-5)


def test_platt_stays_finite_when_scores_separate_the_classes():
    s = np.r_[np.linspace(0.1, 0.4, 10), np.linspace(0.6, 0.9, 10)]
    y = np.r_[np.zeros(10), np.ones(10)]
    m = fit_platt(y, s)
    assert np.isfinite([m.params["a"], m.params["b"]]).all()
    assert m(0.2) < 0.01 and m(0.8) > 0.99


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_isotonic_equals_sklearn_isotonic_regression(seed):
    y, s = _data(seed, 200)
    ours = fit_isotonic(y, s)
    ref = skiso.IsotonicRegression(out_of_bounds="clip").fit(s, y)
    held = np.r_[np.linspace(-0.5, 1.5, 101), s, (s[:-1] + s[1:]) / 2]
    np.testing.assert_allclose(ours(held), ref.predict(held), atol=1e-6)
    assert len(ours.params["x"]) < np.unique(s).size  # only the points where the fitted value changes are kept
    assert all(b >= a for a, b in zip(ours.params["y"], ours.params["y"][1:]))


def test_temperature_lowers_the_log_loss_of_overconfident_scores():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    s = 1 / (1 + np.exp(-3 * z))  # three times too sure
    fit, held = slice(0, 2000), slice(2000, None)
    m = fit_temperature(y[fit], s[fit])
    assert m.params["temperature"] == pytest.approx(3.0, rel=0.15)
    assert log_loss(y[held], m(s[held])) < log_loss(y[held], s[held]) - 0.05
    assert skm.log_loss(y[held], m(s[held])) == pytest.approx(log_loss(y[held], m(s[held])), abs=1e-9)
    # the order of the scores is unchanged: temperature moves probabilities, not the ranking
    assert skm.roc_auc_score(y, m(s)) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_joint_temperature_on_a_multiclass_softmax():
    rng = np.random.default_rng(8)
    Z = rng.normal(0, 1.2, (3000, 4))
    P = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    classes = np.array([rng.choice(4, p=p) for p in P])
    S = np.exp(2.5 * Z) / np.exp(2.5 * Z).sum(axis=1, keepdims=True)  # logit scale 2.5 times too large
    m = fit_joint_temperature(classes[:1500], S[:1500])
    assert m.params["temperature"] == pytest.approx(2.5, rel=0.15)
    T = m.params["temperature"]
    Q = np.exp(np.log(S) / T)
    Q /= Q.sum(axis=1, keepdims=True)
    assert skm.log_loss(classes[1500:], Q[1500:], labels=range(4)) < skm.log_loss(classes[1500:], S[1500:], labels=range(4)) - 0.05


def test_cross_validated_figures_come_from_maps_fitted_without_the_held_rows():
    y, s = _data(11, 120)
    task = medzero.task_from_labels("a,b", modality="audio", multilabel=True)
    fits = calibrate_probabilities(task, {"a": y.tolist()}, {"a": s.tolist(), "b": s.tolist()}, method="isotonic",
                                   assign=lambda yy, k: stratified_folds(yy, k, 0), folds=4)
    (fit,) = fits
    assignment = stratified_folds(y, 4, 0)
    held = np.empty_like(s)
    for f in range(4):
        ref = skiso.IsotonicRegression(out_of_bounds="clip").fit(s[assignment != f], y[assignment != f])
        held[assignment == f] = ref.predict(s[assignment == f])
    assert fit.cv["brier"] == pytest.approx(skm.brier_score_loss(y, held), abs=1e-9)
    assert fit.cv["brier_raw"] == pytest.approx(skm.brier_score_loss(y, s), abs=1e-9)
    assert fit.apparent["brier"] <= fit.cv["brier"]  # fitted and scored on the same rows: optimistic


# -- overlays ---------------------------------------------------------------------------------------


def _overlay(tmp_path, **changes) -> Path:
    data = {"format": 2, "overlay_for": "voice_quality", "model": "tiny@sha256:abc", "method": "youden",
            "labels": {"background_noise": {"threshold": 0.3}},
            "probability": {"method": "isotonic", "labels": {"background_noise": {"map": {"x": [0.1, 0.5, 0.9], "y": [0.0, 0.4, 1.0]}}}},
            "conformal": {"alpha": 0.1, "labels": {"background_noise": {"qhat": 0.7, "n": 40}}}}
    data.update(changes)
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_overlay_without_a_format_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"overlay_for": "voice_quality", "method": "youden",
                                    "labels": {"background_noise": {"threshold": 0.25, "source": "by hand"}}}))
    cal = load_overlay(path)
    assert cal.format == 1 and cal.probability is None and cal.conformal is None
    task, _ = apply_calibration(medzero.load_task("voice_quality"), cal)
    assert {lb.id: lb.threshold for lb in task.labels}["background_noise"] == 0.25
    new = load_overlay(_overlay(tmp_path))
    assert new.format == 2 and new.probability.apply({"background_noise": 0.3, "speech_present": 0.9}) == {"background_noise": pytest.approx(0.2)}
    assert "isotonic probabilities, conformal alpha 0.1" in new.summary()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": 3}, r"overlay format 3 is not one this medzero reads \(1 to 2\)"),
        ({"probability": {"method": "isotonic", "labels": {"background_noise": {"map": {"x": [0.1, float("nan")], "y": [0.1, 0.2]}}}}},
         r"label 'background_noise': isotonic table values must be finite numbers"),
        ({"probability": {"method": "isotonic", "labels": {"background_noise": {"map": {"x": [0.1, 0.5], "y": [-0.2, 0.2]}}}}},
         r"isotonic table y must be non-decreasing probabilities in \[0, 1\]"),
        ({"probability": {"method": "isotonic", "labels": {"background_noise": {"map": {"x": [0.5, 0.1], "y": [0.1, 0.2]}}}}},
         r"isotonic table x must be strictly increasing"),
        ({"probability": {"method": "isotonic", "labels": {"background_noise": {"map": {"x": [0.1, 0.5], "y": [0.6, 0.2]}}}}},
         r"isotonic table y must be non-decreasing"),
        ({"probability": {"method": "platt", "labels": {"background_noise": {"map": {"a": "steep", "b": 0}}}}},
         r"a platt map needs finite numbers a and b"),
        ({"probability": {"method": "temperature", "labels": {"background_noise": {"map": {"temperature": -1}}}}},
         r"temperature must be a positive finite number"),
        ({"probability": {"method": "sigmoid", "labels": {}}}, r"probability needs a method \(platt, isotonic, temperature\)"),
        ({"conformal": {"alpha": 1.5, "labels": {}}}, r"conformal needs alpha in \(0, 1\)"),
        ({"conformal": {"alpha": 0.1, "labels": {"background_noise": {"qhat": 2}}}}, r"conformal qhat must be a number between 0 and 1"),
    ],
)
def test_bad_probability_and_conformal_blocks_are_one_line_errors(tmp_path, changes, message):
    with pytest.raises(medzero.TaskError, match=message) as info:
        load_overlay(_overlay(tmp_path, **changes))
    assert "\n" not in str(info.value) and str(info.value).startswith(str(tmp_path / "overlay.yaml"))


def test_maps_for_unknown_labels_or_another_model_are_refused(tmp_path):
    task = medzero.load_task("voice_quality")
    bad = _overlay(tmp_path, probability={"method": "platt", "labels": {"pneumonia": {"map": {"a": 1, "b": 0}}}})
    with pytest.raises(medzero.TaskError, match=r"^overlay.yaml names label\(s\) pneumonia that task voice_quality does not have"):
        apply_calibration(task, bad)
    bad = _overlay(tmp_path, conformal={"alpha": 0.1, "labels": {"wheeze": {"qhat": 0.5}}})
    with pytest.raises(medzero.TaskError, match=r"names label\(s\) wheeze"):
        apply_calibration(task, bad)
    with pytest.raises(medzero.TaskError, match=r"^overlay.yaml: its probability maps and conformal rule were fitted on model "
                                                r"tiny@sha256:abc, but scores come from other@1; recalibrate on this model$"):
        apply_calibration(task, _overlay(tmp_path), model="other@1")
    joint = _overlay(tmp_path, probability={"method": "temperature", "joint": "softmax",
                                            "labels": {"background_noise": {"map": {"temperature": 2.0}}}})
    with pytest.raises(medzero.TaskError, match="joint \\(softmax\\) temperature, but task voice_quality is multilabel"):
        apply_calibration(task, joint)


# -- end to end: real recordings, the tiny real CLAP checkpoint ---------------------------------------


@pytest.fixture()
def voice_manifest(tmp_path, audio_clips) -> Path:
    return write_voice_manifest(tmp_path, audio_clips, VOICE)


_cli = run_cli


def test_calibrate_platt_then_classify_and_eval_show_probabilities(voice_manifest, tiny_clap_dir, tmp_path):
    model = str(tiny_clap_dir)
    site = tmp_path / "site.yaml"
    res = _cli(["calibrate", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--method", "platt",
                "--folds", 3, "-o", site])
    assert res.exit_code == 0, res.output
    assert "platt probabilities" in res.stdout and "ECE (CV)" in res.stdout
    overlay = yaml.safe_load(site.read_text())
    assert overlay["format"] == 2 and overlay["method"] == "youden"  # the thresholds are fitted as before
    block = overlay["probability"]
    assert block["method"] == "platt" and set(block["labels"]) == {"background_noise", "speech_present"}
    noise = block["labels"]["background_noise"]
    assert noise["cv"]["folds"] == 3 and noise["cv"]["n"] == 14 and "ece_raw" in noise["cv"]

    # the map is scikit-learn's logistic regression on the raw scores of the same rows
    rows = read_manifest(voice_manifest, medzero.load_task("voice_quality")).rows
    plain = medzero.Classifier("voice_quality", audio_model=model, device="cpu").classify_batch([str(r.file) for r in rows])
    y = np.array([r.labels["background_noise"] for r in rows])
    s = np.array([r.scores["background_noise"] for r in plain])
    ref = sklm.LogisticRegression(C=PLATT_C, tol=1e-14, max_iter=100_000).fit(s[:, None], y)
    a, b = noise["map"]["a"], noise["map"]["b"]
    np.testing.assert_allclose(1 / (1 + np.exp(-(a * s + b))), ref.predict_proba(s[:, None])[:, 1], atol=1e-6)

    res = _cli(["classify", str(rows[0].file), "--task", "voice_quality", "--audio-model", model, "--device", "cpu",
                "--calibration", site, "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)[0]
    assert out["scores"]["background_noise"] == pytest.approx(s[0], abs=1e-6)  # raw scores stay raw
    assert out["probabilities"]["background_noise"] == pytest.approx(ref.predict_proba(s[:1, None])[0, 1], abs=1e-6)
    assert set(out["probabilities"]) == {"background_noise", "speech_present"}
    assert out["uncertain"] == [] and out["conformal"] is None
    res = _cli(["classify", str(rows[0].file), "--task", "voice_quality", "--audio-model", model, "--device", "cpu",
                "--calibration", site, "--format", "csv"])
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(io.StringIO(res.stdout)))  # the CSV carries the probability beside the raw score
    assert float(row["p.background_noise"]) == pytest.approx(out["probabilities"]["background_noise"], abs=1e-6)
    assert float(row["background_noise"]) == pytest.approx(s[0], abs=1e-6) and "uncertain" not in row
    # the table: the top labels' raw scores, each with its calibrated probability (a map for every label here)
    every = yaml.safe_load(site.read_text())
    every["probability"]["labels"] = {lb.id: {"map": {"a": 1.0, "b": 0.0}} for lb in medzero.load_task("voice_quality").labels}
    site_all = tmp_path / "site_all.yaml"
    site_all.write_text(yaml.safe_dump(every))
    res = _cli(["classify", str(rows[0].file), "--task", "voice_quality", "--audio-model", model, "--device", "cpu",
                "--calibration", site_all])
    top = plain[0].top(1)[0][1]
    assert res.exit_code == 0 and f"{top:.2f} (p {1 / (1 + np.exp(-top)):.2f})" in res.stdout and "platt probabilities" in res.stdout

    report_path = tmp_path / "eval" / "report.json"
    res = _cli(["eval", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--calibration", site,
                "--bootstrap", 20, "-o", report_path])
    assert res.exit_code == 0, res.output
    assert "calibrated probabilities" in res.stdout
    report = json.loads(report_path.read_text())
    p = report["labels"]["background_noise"]["probability"]
    calibrated = ref.predict_proba(s[:, None])[:, 1]
    assert p["before"]["brier"] == pytest.approx(skm.brier_score_loss(y, s), abs=1e-9)
    assert p["after"]["brier"] == pytest.approx(skm.brier_score_loss(y, calibrated), abs=1e-6)
    assert p["after"]["log_loss"] == pytest.approx(skm.log_loss(y, calibrated), abs=1e-6)
    # ECE over 10 equal-width bins, from scikit-learn's calibration_curve bins
    from sklearn.calibration import calibration_curve

    frac, mean = calibration_curve(y, calibrated, n_bins=10, strategy="uniform")
    counts = np.array([c for c in p["reliability"]["count"] if c])
    assert p["after"]["ece"] == pytest.approx(np.sum(counts / counts.sum() * np.abs(frac - mean)), abs=1e-6)
    html = report_path.with_suffix(".html").read_text()
    assert "Calibrated probabilities" in html and "ECE calibrated" in html


def test_temperature_for_a_multiclass_task_is_one_softmax(tmp_path, image_files, tiny_clip_dir):
    task_file = tmp_path / "kind.yaml"
    task_file.write_text(
        "name: kind\nmodality: image\nmode: multiclass\nlabels:\n"
        "  - {id: photo, prompts: [a photograph]}\n  - {id: drawing, prompts: [a drawing]}\n  - {id: xray, prompts: [an x-ray]}\n"
    )
    site = tmp_path / "imgs"
    site.mkdir()
    rows = []
    for i, (key, label) in enumerate([("rgb.png", "drawing"), ("photo.jpg", "photo"), ("gray8.png", "xray"), ("rgba.png", "drawing"),
                                       ("gray16.png", "xray"), ("rgb.tiff", "photo")]):
        name = f"{i}_{key}"
        shutil.copy(image_files[key], site / name)
        rows.append({"path": name, "label": label})
    manifest = site / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clf = medzero.Classifier(str(task_file), image_model=f"local-dir:{tiny_clip_dir}", device="cpu")
    result = medzero.calibrate(manifest, str(task_file), probability="temperature", classifier=clf, folds=2)
    block = result.overlay["probability"]
    assert block["joint"] == "softmax" and len({v["map"]["temperature"] for v in block["labels"].values()}) == 1
    path = tmp_path / "kind_site.yaml"
    result.write(path)
    site_clf = medzero.Classifier(str(task_file), image_model=f"local-dir:{tiny_clip_dir}", device="cpu", calibration=path)
    r = site_clf.classify(str(site / rows[0]["path"]))
    T = next(iter(block["labels"].values()))["map"]["temperature"]
    z = np.log([r.scores[k] for k in ("photo", "drawing", "xray")]) / T
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose([r.probabilities[k] for k in ("photo", "drawing", "xray")], expected, atol=1e-9)
    assert sum(r.probabilities.values()) == pytest.approx(1.0)


def test_a_map_fitted_on_another_model_is_a_one_line_error_everywhere(tmp_path, voice_manifest, tiny_clap_dir):
    """Probability maps are functions of one model's scores: classify fails each file in one line and
    exits non-zero, eval stops in one line; an overlay of thresholds alone still only warns."""
    model = str(tiny_clap_dir)
    site = _overlay(tmp_path)  # fitted on tiny@sha256:abc, not on this checkpoint
    clip = next((voice_manifest.parent / "clips").glob("speech.*"))
    res = _cli(["classify", clip, "--task", "voice_quality", "--audio-model", model, "--device", "cpu", "--calibration", site,
                "--format", "json"])
    assert res.exit_code == 1
    (out,) = json.loads(res.stdout)
    assert "its probability maps and conformal rule were fitted on model tiny@sha256:abc" in out["error"]
    assert "Traceback" not in res.output
    res = _cli(["eval", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--calibration", site,
                "--bootstrap", 10])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("medzero: error: ") and "recalibrate on this model" in err[-1] and "Traceback" not in res.output
