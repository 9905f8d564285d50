"""`medzero calibrate` fits metric limits from people's verdicts: real espeak-ng recordings, the real CLI.

No CLAP weights here: the classify runs signal-only, which is how an offline site without the model
calibrates its metric rules. The overlay's ``metrics`` block is then applied by
``--calibration`` and changes the verdict a user sees.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import medzero
from medzero.cli import cli as medzero_cli
from medzero.evaluation.calibrate import calibrate_metrics
from medzero.tasks.overlay import apply_calibration, load_overlay

import audio_samples

#: clip -> (how it is made, the verdict a strict site gives it). The site re-records 18 dB, above the shipped limit.
SITE = {
    "clean": ("clean", "accept"),
    "pink_30db": (("pinknoise", 30), "accept"),
    "white_30db": (("whitenoise", 30), "accept"),
    "pink_18db": (("pinknoise", 18), "re-record"),
    "white_18db": (("whitenoise", 18), "re-record"),
    "pink_5db": (("pinknoise", 5), "re-record"),
    "clipped": ("clipped", "re-record"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder of real recordings and a manifest with only a verdict column."""
    missing = audio_samples.missing_tools()
    if missing:
        pytest.fail(f"making test audio needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("site")
    speech = audio_samples.speech_wav(out, seconds=6.0)
    with open(out / "site.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "verdict"])
        for name, (how, verdict) in SITE.items():
            if how == "clean":
                made = speech
            elif how == "clipped":
                made = audio_samples.clipped(speech, out)
            else:
                made = audio_samples.mix_noise(speech, out, how[1], color=how[0])
            shutil.copy(made, out / f"{name}.wav")
            writer.writerow([f"{name}.wav", verdict])
    return out


def run(args):
    return CliRunner().invoke(medzero_cli, [str(a) for a in args], catch_exceptions=False)


def _signal_only_results(site: Path) -> dict[str, medzero.Result]:
    results = medzero.Classifier("voice_quality").classify_batch([str(site / f"{n}.wav") for n in SITE])
    assert all(r.signal_only and r.error is None for r in results), [r.error for r in results]
    return dict(zip(SITE, results))


def test_calibrate_fits_snr_limit_from_verdicts_and_classify_applies_it(site, tmp_path):
    before = _signal_only_results(site)
    snr = {n: r.metrics["snr_db"] for n, r in before.items()}
    shipped = medzero.load_task("voice_quality").metrics["snr_db"].min
    assert before["pink_18db"].verdict != "re-record"  # the shipped limit lets the site's re-record through

    overlay_path = tmp_path / "site.yaml"
    res = run(["calibrate", site / "site.csv", "--task", "voice_quality", "--folds", 3, "-o", overlay_path])
    assert res.exit_code == 0, res.output
    assert "metric limits from the verdict column" in res.stdout and "snr_db min" in res.stdout
    overlay = yaml.safe_load(overlay_path.read_text())
    assert overlay["labels"] == {} and overlay["model"] is None  # signal-only: no scores, no model
    fitted = overlay["metrics"]["snr_db"]["min"]
    assert fitted["previous_limit"] == shipped and fitted["verdict"] == "re-record"
    # the limit sits between the noisiest accepted clip and the re-records no other rule flags
    accepted = [snr[n] for n, (_, v) in SITE.items() if v == "accept"]
    caught_otherwise = {n for n in SITE if any(x.verdict == "re-record" and x.id != "snr_db" for x in before[n].reasons)}
    assert "clipped" in caught_otherwise
    missed = [snr[n] for n, (_, v) in SITE.items() if v == "re-record" and n not in caught_otherwise]
    assert missed and max(missed) < fitted["limit"] <= min(accepted)
    assert fitted["apparent"] == {"sensitivity": 1.0, "specificity": 1.0, "ppv": 1.0}
    assert fitted["cv"]["n"] == len(accepted) + len(missed) and fitted["cv"]["folds"] >= 1
    assert re.fullmatch(rf"calibrated on {len(accepted) + len(missed)} rows \(re-record not flagged otherwise {len(missed)}, "
                        rf"better {len(accepted)}\) from site\.csv sha256 [0-9a-f]{{12}}, youden", fitted["source"])
    # a rule that does not separate the verdicts keeps its limit and says why
    assert "duration_s" not in overlay.get("metrics", {})
    assert re.search(r"duration_s min .*(better than chance|no re-record row left)", res.stdout)

    res = run(["classify", site / "pink_18db.wav", "--task", "voice_quality", "--format", "json", "--calibration", overlay_path])
    assert res.exit_code == 0, res.output
    after = json.loads(res.stdout)[0]
    assert after["verdict"] == "re-record"
    reason = next(r for r in after["reasons"] if r["id"] == "snr_db")
    assert reason["limit"] == fitted["limit"]
    value, limit = re.fullmatch(r"Signal-to-noise ratio (-?[\d.]+) dB below (-?[\d.]+) dB", reason["text"]["en"]).groups()
    assert float(value) < float(limit)  # the sentence is true as printed
    assert re.fullmatch(r"信噪比 -?[\d.]+ dB 低于 -?[\d.]+ dB", reason["text"]["zh"])
    assert after["calibration"]["metric_sources"]["snr_db.min"] == fitted["source"]
    assert "1 metric limits" in after["calibration"]["summary"] or "metric limits" in after["calibration"]["summary"]

    # the accepted clips stay accepted under the fitted limit
    site_classifier = medzero.Classifier("voice_quality", calibration=overlay_path)
    for name, (_, verdict) in SITE.items():
        if verdict == "accept":
            assert site_classifier.classify(str(site / f"{name}.wav")).verdict != "re-record", name


def test_old_overlays_without_metrics_still_load_and_metric_overlays_are_checked(tmp_path):
    task = medzero.load_task("voice_quality")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"overlay_for": "voice_quality", "method": "youden",
                                   "labels": {"background_noise": {"threshold": 0.3, "source": "by hand"}}}))
    calibrated, calibration = apply_calibration(task, old)
    assert calibration.metrics == {} and calibrated.metrics == task.metrics
    assert "metric limits" not in calibration.summary()

    def overlay(metrics) -> Path:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"overlay_for": "voice_quality", "method": "youden", "metrics": metrics}))
        return path

    calibrated, calibration = apply_calibration(task, overlay({"snr_db": {"min": {"limit": 14.5, "previous_limit": 10.0, "source": "s"}}}))
    assert calibrated.metrics["snr_db"].min == 14.5 and task.metrics["snr_db"].min == medzero.load_task("voice_quality").metrics["snr_db"].min != 14.5
    assert calibrated.metrics["snr_db"].advice == task.metrics["snr_db"].advice
    assert calibration.labels == {} and "1 metric limits" in calibration.summary()
    with pytest.raises(medzero.TaskError, match=r"^m\.yaml sets a limit on metric loudness_lufs that task voice_quality has no rule for"):
        apply_calibration(task, overlay({"loudness_lufs": {"min": {"limit": -30}}}))
    with pytest.raises(medzero.TaskError, match=r"^m\.yaml sets the max of metric snr_db, but task voice_quality's rule has no max$"):
        apply_calibration(task, overlay({"snr_db": {"max": {"limit": 90}}}))
    with pytest.raises(medzero.TaskError, match=r"m\.yaml: metric 'snr_db': min: limit must be a finite number$"):
        load_overlay(overlay({"snr_db": {"min": {"limit": ".nan"}}}))
    with pytest.raises(medzero.TaskError, match=r"m\.yaml: metric 'snr_db': give min and/or max"):
        load_overlay(overlay({"snr_db": {"lower": {"limit": 3}}}))


def test_each_rule_is_fitted_on_what_the_others_miss():
    """Clipping explains the clipped re-records and SNR the noisy ones: neither limit is dragged
    to catch the other's rows, and a metric that does not separate keeps the task's limit."""
    task = medzero.load_task("voice_quality")
    base = {"duration_s": 6.0, "rms_dbfs": -20.0, "silence_ratio": 0.1, "bandwidth_hz": 8000.0, "dc_offset": 0.0}
    rows = (
        [("accept", {**base, "snr_db": v, "clipping_ratio": 0.0}) for v in (25, 30, 35, 40, 22)]
        + [("re-record", {**base, "snr_db": v, "clipping_ratio": 0.0}) for v in (3, 6, 12, 14)]
        + [("re-record", {**base, "snr_db": 35.0, "clipping_ratio": c}) for c in (0.004, 0.02, 0.05)]
    )
    fits = {(f.metric, f.side): f for f in calibrate_metrics(task, [v for v, _ in rows], [m for _, m in rows], folds=3)}
    snr, clip = fits[("snr_db", "min")], fits[("clipping_ratio", "max")]
    assert 14 < snr.limit < 22 and snr.n_pos == 4 and snr.n_neg == 5  # the clipped rows are clipping's, not snr's
    assert 0 < clip.limit < 0.004 and clip.n_pos == 3
    assert fits[("duration_s", "min")].limit is None and fits[("rms_dbfs", "min")].limit is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(snr.cv.stats.sensitivity)


def test_eval_report_names_the_fitted_metric_limits(site, tmp_path):
    overlay_path = tmp_path / "site.yaml"
    assert run(["calibrate", site / "site.csv", "--task", "voice_quality", "--folds", 3, "-o", overlay_path]).exit_code == 0
    limit = yaml.safe_load(overlay_path.read_text())["metrics"]["snr_db"]["min"]["limit"]
    from medzero.evaluation.report import render_markdown

    calibration = load_overlay(overlay_path)
    data = {"calibration": {"status": "calibrated", **calibration.to_dict()}}
    from medzero.evaluation import report as R

    rows = dict(R._repro_rows({**data, "reproducibility": {
        "task": {"name": "voice_quality", "source": "builtin", "sha256": "0", "sha256_of": "file"},
        "manifest": {"path": "site.csv", "rows": 7, "sha256": "0"}, "data_sha256": "0", "data_hash_of": "x",
        "n_boot": 0, "seed": 0}}))
    shipped = medzero.load_task("voice_quality").metrics["snr_db"].min
    assert rows["metric limits"].startswith(f"snr_db min {limit:.6g} (was {shipped:g})")
    assert "metric limits" in rows["thresholds"]
    assert callable(render_markdown)
