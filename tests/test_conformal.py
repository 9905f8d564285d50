"""Conformal abstention: the split-conformal quantile, its coverage on many exchangeable splits, the
"uncertain" verdict on real recordings scored by the tiny real CLAP checkpoint (distinct from
not_applicable), and `medzero calibrate --conformal-alpha` -> `medzero eval` coverage."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import medzero
from site_manifests import run_cli, write_voice_manifest
from medzero.core.modality import get_modality
from medzero.evaluation import read_manifest
from medzero.evaluation.calibrate import stratified_folds
from medzero.evaluation.probability import calibrate_conformal, coverage_figures, coverage_interval, fit_conformal, nonconformity
from medzero.tasks.probability import conformal_quantile, decide

stats = pytest.importorskip("scipy.stats")


def test_quantile_is_the_finite_sample_corrected_order_statistic():
    values = np.arange(1, 20) / 20  # n = 19
    # ceil((19 + 1) * 0.9) = 18th smallest, exactly (no float round-up to the 19th)
    assert conformal_quantile(values, 0.1) == pytest.approx(18 / 20)
    assert conformal_quantile(values[:8], 0.1) == 1.0  # ceil(9 * 0.9) = 9 > 8: the set is always both values
    assert conformal_quantile([0.3], 0.5) == 0.3


def test_sets_decide_a_label_only_when_they_hold_one_value():
    assert decide(0.9, 0.3) == "positive" and decide(0.1, 0.3) == "negative"
    assert decide(0.5, 0.3) == "uncertain"  # neither value conforms: the empty set is not a decision either
    assert decide(0.5, 0.7) == "uncertain" and decide(0.75, 0.7) == "positive" and decide(0.25, 0.7) == "negative"
    np.testing.assert_allclose(nonconformity([1, 0], [0.8, 0.8]), [0.2, 0.8])


def test_coverage_holds_on_many_exchangeable_splits():
    rng = np.random.default_rng(0)
    alpha, n_cal, n_test, splits = 0.1, 100, 100, 600
    coverages, met = [], 0
    for _ in range(splits):
        y = (rng.uniform(size=n_cal + n_test) < 0.3).astype(int)
        s = np.clip(0.25 * y + rng.beta(2, 3, y.size), 0, 1)  # continuous, overlapping scores
        order = rng.permutation(y.size)
        cal, test = order[:n_cal], order[n_cal:]
        q = fit_conformal(y[cal], s[cal], alpha)
        figures = coverage_figures(y[test], s[test], q, alpha)
        coverages.append(figures["coverage"])
        met += figures["met"]
    coverages = np.asarray(coverages)
    se = coverages.std(ddof=1) / np.sqrt(splits)
    # split conformal: 1 - alpha <= E[coverage] <= 1 - alpha + 1 / (n + 1) for scores without ties
    assert coverages.mean() >= 1 - alpha - 4 * se
    assert coverages.mean() <= 1 - alpha + 1 / (n_cal + 1) + 4 * se
    assert met / splits >= 0.85  # the per-split test (Wilson interval reaches 1 - alpha) rarely fails when it holds


def test_wilson_interval_equals_scipy():
    for k, n in [(45, 50), (50, 50), (0, 7), (93, 120)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert coverage_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_cross_validated_coverage_uses_the_other_folds_qhat():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 90)
    s = np.clip(0.3 * y + rng.uniform(0, 0.7, 90), 0, 1)
    task = medzero.task_from_labels("a,b", modality="audio", multilabel=True)
    (fit,) = calibrate_conformal(task, {"a": y.tolist()}, {"a": s.tolist(), "b": s.tolist()}, alpha=0.2,
                                 assign=lambda yy, k: stratified_folds(yy, k, 0), folds=3)
    assignment = stratified_folds(y, 3, 0)
    covered = sum(int(np.sum(nonconformity(y[assignment == f], s[assignment == f])
                             <= fit_conformal(y[assignment != f], s[assignment != f], 0.2))) for f in range(3))
    assert fit.cv["covered"] == covered and fit.cv["n"] == 90 and fit.qhat == fit_conformal(y, s, 0.2)


# -- on real recordings ------------------------------------------------------------------------------


def _overlay(tmp_path, qhat: float) -> Path:
    """Thresholds out of reach for every bad label but background_noise, which a conformal rule decides."""
    task = medzero.load_task("voice_quality")
    labels = {lb.id: {"threshold": 1.0} for lb in task.labels if lb.polarity == "bad" and lb.id != "background_noise"}
    labels["speech_present"] = {"threshold": 0.0}
    path = tmp_path / f"site_{qhat}.yaml"
    path.write_text(yaml.safe_dump({"format": 2, "overlay_for": "voice_quality", "method": "by hand", "labels": labels,
                                    "conformal": {"alpha": 0.1, "labels": {"background_noise": {"qhat": qhat, "n": 40}}}}))
    return path


def test_uncertain_label_makes_the_verdict_abstain_only_when_it_could_change_it(tmp_path, audio_clips, tiny_clap_dir):
    model = str(tiny_clap_dir)
    plain = medzero.Classifier("voice_quality", audio_model=model, device="cpu", calibration=_overlay(tmp_path, 0.5))
    unsure = medzero.Classifier("voice_quality", audio_model=model, device="cpu", calibration=_overlay(tmp_path, 1.0))
    keys = ["speech", "amr", "clipped", "noise"]
    sure = dict(zip(keys, plain.classify_batch([audio_clips[k] for k in keys])))
    not_sure = dict(zip(keys, unsure.classify_batch([audio_clips[k] for k in keys])))

    # q = 0.5: every score but 0.5 itself is decided, on the side of 0.5 it falls
    r = sure["speech"]
    assert r.conformal["decisions"]["background_noise"] == ("positive" if r.scores["background_noise"] > 0.5 else "negative")
    assert r.uncertain == [] and r.verdict in ("accept", "re-record")

    # q = 1: both values always conform, so background_noise is never decided
    speech = not_sure["speech"]
    assert speech.scores == sure["speech"].scores  # raw scores stay raw
    assert speech.uncertain == ["background_noise"] and speech.conformal["decisions"]["background_noise"] == "uncertain"
    assert sure["speech"].verdict == "accept"  # decided: nothing wrong with it
    assert speech.verdict == "uncertain" and speech.verdict_name == {"en": "Uncertain", "zh": "不确定"}
    assert speech.applicable and speech.reasons[0].kind == "uncertain" and "not sure at the 90% level" in speech.summary()
    assert speech.to_dict()["uncertain"] == ["background_noise"] and speech.to_dict()["verdict"] == "uncertain"
    before = speech.to_dict()  # applying the overlay again (eval does, on a calibrated classifier's results) changes nothing
    unsure.calibration.annotate(speech, unsure.task_for("audio"), get_modality("audio").metric_info)
    assert speech.to_dict() == before
    # review (narrow band) could become re-record if the noise were there: abstains too
    assert sure["amr"].verdict == "review" and not_sure["amr"].verdict == "uncertain"
    # clipping already makes it re-record: the uncertain label cannot change that, so it does not abstain
    clipped = not_sure["clipped"]
    assert clipped.verdict == "re-record" and clipped.uncertain == ["background_noise"]
    assert {r.id for r in clipped.reasons if r.kind == "metric"} >= {"clipping_ratio"}
    # out of scope stays out of scope: not_applicable, never uncertain
    noise = not_sure["noise"]
    assert noise.verdict == "not_applicable" and not noise.applicable and noise.uncertain == [] and noise.conformal is None


VOICE = {
    "speech": (0, 1, "accept"), "wav": (0, 1, "accept"), "flac": (0, 1, "accept"), "ogg": (0, 1, "accept"),
    "mp3": (0, 1, "accept"), "m4a": (0, 1, "accept"), "amr": (0, 1, "review"), "telephone": (0, 1, "review"),
    "telephone_48k": (0, 1, "review"), "noisy_20db": (1, 1, "review"), "noisy_10db": (1, 1, "re-record"),
    "noisy_0db": (1, 1, "re-record"), "clipped": (0, 1, "re-record"), "noise": (1, 0, "re-record"),
}


@pytest.fixture()
def voice_manifest(tmp_path, audio_clips) -> Path:
    return write_voice_manifest(tmp_path, audio_clips, VOICE)


_cli = run_cli


def test_positive_and_csv_follow_the_conformal_decision_not_the_threshold(tmp_path, audio_clips, tiny_clap_dir):
    """Where a conformal rule covers a label, Result.positive() gives its decision (None when not
    sure), as the verdict does; thresholds of 0 and 1 each disagree with every decided score on
    one side of 0.5. The CSV lists the uncertain labels."""
    model = str(tiny_clap_dir)
    keys = ["speech", "noisy_0db", "clipped"]
    for threshold in (0.0, 1.0):
        path = _overlay(tmp_path, 0.5)
        data = yaml.safe_load(path.read_text())
        data["labels"]["background_noise"] = {"threshold": threshold}
        path.write_text(yaml.safe_dump(data))
        clf = medzero.Classifier("voice_quality", audio_model=model, device="cpu", calibration=path)
        for r in clf.classify_batch([audio_clips[k] for k in keys]):
            decision = r.conformal["decisions"]["background_noise"]
            assert r.positive("background_noise") == (None if decision == "uncertain" else decision == "positive")
            assert ("background_noise" in {x.id for x in r.reasons}) == (decision == "positive")
    unsure = medzero.Classifier("voice_quality", audio_model=model, device="cpu", calibration=_overlay(tmp_path, 1.0))
    assert unsure.classify(audio_clips["speech"]).positive("background_noise") is None
    res = _cli(["classify", audio_clips["speech"], "--task", "voice_quality", "--audio-model", model, "--device", "cpu",
                "--calibration", _overlay(tmp_path, 1.0), "--format", "csv"])
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert row["uncertain"] == "background_noise"


def test_calibrate_conformal_then_eval_reports_coverage(voice_manifest, tiny_clap_dir, tmp_path):
    model = str(tiny_clap_dir)
    site = tmp_path / "site.yaml"
    res = _cli(["calibrate", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--method", "isotonic",
                "--conformal-alpha", 0.2, "--folds", 3, "-o", site])
    assert res.exit_code == 0, res.output
    assert "conformal rule at alpha 0.2" in res.stdout and "coverage (CV)" in res.stdout
    overlay = yaml.safe_load(site.read_text())
    rule = overlay["conformal"]
    assert rule["alpha"] == 0.2 and set(rule["labels"]) == {"background_noise", "speech_present"}

    rows = read_manifest(voice_manifest, medzero.load_task("voice_quality")).rows
    results = medzero.Classifier("voice_quality", audio_model=model, device="cpu").classify_batch([str(r.file) for r in rows])
    y = np.array([r.labels["background_noise"] for r in rows])
    s = np.array([r.scores["background_noise"] for r in results])
    nc = np.where(y == 1, 1 - s, s)
    k = int(np.ceil((len(y) + 1) * 0.8))
    assert rule["labels"]["background_noise"]["qhat"] == pytest.approx(np.sort(nc)[k - 1], abs=1e-12)

    out = tmp_path / "eval" / "report.json"
    res = _cli(["eval", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--calibration", site,
                "--bootstrap", 20, "--format", "md", "-o", out])
    assert res.exit_code == 0, res.output
    assert "conformal coverage" in res.stdout
    report = json.loads(out.read_text())
    c = report["labels"]["background_noise"]["conformal"]
    q = rule["labels"]["background_noise"]["qhat"]
    covered = int(np.sum(nc <= q))
    ref = stats.binomtest(covered, len(y)).proportion_ci(method="wilson")
    assert (c["n"], c["covered"], c["target"]) == (14, covered, pytest.approx(0.8))
    assert c["interval"] == pytest.approx([ref.low, ref.high], abs=1e-9)
    assert c["met"] == (ref.high >= 0.8) and c["met"]  # fitted on these very rows: it covers them
    decided = [decide(v, q) for v in s]
    assert c["uncertain_rate"] == pytest.approx(decided.count("uncertain") / 14)
    md = out.with_suffix(".md").read_text()
    assert "## Conformal abstention" in md and "## Calibrated probabilities" in md
    # evaluated on the very rows it was fitted on: said, in the JSON, the text and the report
    assert c["rows"] == "the overlay's own fitting rows (apparent, optimistic)"
    assert "the calibrated figures and the coverage are apparent (optimistic)" in md
    assert "note: These are the rows the overlay was fitted on" in res.stdout



def test_eval_counts_uncertain_apart_from_not_applicable(voice_manifest, tiny_clap_dir, tmp_path):
    model, site = str(tiny_clap_dir), _overlay(tmp_path, 1.0)
    out = tmp_path / "eval" / "report.json"
    res = _cli(["eval", voice_manifest, "--task", "voice_quality", "--audio-model", model, "--calibration", site,
                "--bootstrap", 20, "-o", out])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    v = report["verdicts"]
    assert report["labels"]["background_noise"]["conformal"]["rows"] == "held out from the overlay's fit"
    rows = read_manifest(voice_manifest, medzero.load_task("voice_quality")).rows
    clf = medzero.Classifier("voice_quality", audio_model=model, device="cpu", calibration=site)
    predicted = [r.verdict for r in clf.classify_batch([str(r.file) for r in rows])]
    # the noise row is out of scope (not_applicable); the rows the rule is not sure about are uncertain, counted apart
    assert v["n_abstained"] == predicted.count("not_applicable") == 1
    assert v["n_uncertain"] == predicted.count("uncertain") >= 8
    assert v["n_judged"] == 14 - v["n_abstained"] - v["n_uncertain"]
    human = [r.verdict for r in rows]
    assert v["confusion"]["uncertain"] == [sum(1 for h, p in zip(human, predicted) if h == level and p == "uncertain")
                                           for level in v["labels"]]
    assert "uncertain (" in res.stdout and "in scope, not sure" in res.stdout
    html = out.with_suffix(".html").read_text()
    assert ">uncertain</th>" in html and "in scope, not sure, unlike not_applicable: out of scope" in html


def test_conformal_alpha_must_be_a_rate(voice_manifest, tiny_clap_dir, tmp_path):
    res = _cli(["calibrate", voice_manifest, "--task", "voice_quality", "--conformal-alpha", 1.5, "-o", tmp_path / "x.yaml"])
    assert res.exit_code == 2 and "--conformal-alpha" in res.output
    res = _cli(["calibrate", voice_manifest, "--task", "voice_quality", "--method", "platt", "--method", "isotonic",
                "-o", tmp_path / "x.yaml"])
    assert res.exit_code == 2 and "at most one threshold rule" in res.output


def test_rest_results_carry_probabilities_and_uncertain_labels(tmp_path, audio_clips, tiny_clap_dir, tiny_hf_clip_dir):
    """A real `medzero serve` on loopback with an overlay in its calibration directory: the response
    model keeps (and types) the probabilities, the uncertain labels and the conformal rule."""
    from test_service import TOKEN, start_server, stop_server

    folder = tmp_path / "calibrations"
    folder.mkdir()
    overlay = yaml.safe_load(_overlay(tmp_path, 1.0).read_text())
    overlay["probability"] = {"method": "platt", "labels": {"background_noise": {"map": {"a": 2.0, "b": -1.0}}}}
    (folder / "ward-3.yaml").write_text(yaml.safe_dump(overlay))
    (tmp_path / "keys.txt").write_text(TOKEN + "\n")
    env = dict(os.environ, MEDZERO_AUDIO_MODEL=str(tiny_clap_dir), MEDZERO_IMAGE_MODEL=f"local-dir:{tiny_hf_clip_dir}",
               MEDZERO_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("MEDZERO_API_KEYS", None)
    server = start_server(tmp_path / "srv", ["--api-key-file", str(tmp_path / "keys.txt"), "--calibration-dir", str(folder)], env)
    try:
        with server.client() as client:
            reply = client.post("/v1/classify", params={"task": "voice_quality", "calibration": "ward-3"},
                                content=Path(audio_clips["speech"]).read_bytes())
        assert reply.status_code == 200, reply.text
        result = reply.json()["result"]
    finally:
        stop_server(server)
    s = result["scores"]["background_noise"]
    assert result["probabilities"] == {"background_noise": pytest.approx(1 / (1 + np.exp(-(2 * s - 1))), abs=1e-9)}
    assert result["uncertain"] == ["background_noise"] and result["verdict"] == "uncertain"
    assert result["conformal"] == {"alpha": 0.1, "coverage": 0.9, "decisions": {"background_noise": "uncertain"}}
    assert result["reasons"][0]["kind"] == "uncertain"


def test_too_few_rows_for_alpha_is_said_not_hidden(voice_manifest, tiny_clap_dir, tmp_path):
    """14 rows cannot support alpha 0.01 (it needs ceil(15 * 0.99) = 15 rows): qhat is 1, every set holds
    both values, and calibrate says so instead of writing a rule that silently never decides."""
    site = tmp_path / "site.yaml"
    res = _cli(["calibrate", voice_manifest, "--task", "voice_quality", "--audio-model", str(tiny_clap_dir),
                "--conformal-alpha", 0.01, "--folds", 3, "-o", site])
    assert res.exit_code == 0, res.output
    assert "too few rows for this alpha: every label stays uncertain" in " ".join(res.stdout.split())
    assert yaml.safe_load(site.read_text())["conformal"]["labels"]["background_noise"]["qhat"] == 1.0


def test_the_app_shows_probabilities_and_not_sure_and_no_triage_colour_for_uncertain(tmp_path, audio_clips, tiny_clap_dir):
    """The app's label table and verdict colour for a real result under an overlay with probability
    maps and a conformal rule that is not sure: a Probability column beside the raw score, "not
    sure" (not "not judged", which means out of scope) for the undecided label, and violet for the
    verdict `uncertain` (it read as the worst triage level, red, before)."""
    from medzero.app import common

    path = _overlay(tmp_path, 1.0)
    data = yaml.safe_load(path.read_text())
    data["probability"] = {"method": "platt", "labels": {"background_noise": {"map": {"a": 4.0, "b": -2.0}},
                                                         "speech_present": {"map": {"a": 2.0, "b": 0.0}}}}
    path.write_text(yaml.safe_dump(data))
    clf = medzero.Classifier("voice_quality", audio_model=str(tiny_clap_dir), device="cpu", calibration=path)
    task = clf.task_for("audio")
    result = clf.classify(audio_clips["speech"])
    assert result.verdict == "uncertain" and result.uncertain == ["background_noise"]

    frame = common.label_frame(result, task)
    table = common.score_table(frame).data
    row = table.set_index(table.columns[0]).loc[result.label_names["background_noise"]["en"]]
    assert row["Positive"] == "not sure"
    p = 1 / (1 + np.exp(-(4.0 * result.scores["background_noise"] - 2.0)))
    assert row["Probability"] == f"{p:.2f}" and row["Score"] == f"{result.scores['background_noise']:.3f}"
    others = table[table[table.columns[0]] != result.label_names["background_noise"]["en"]]
    assert set(others["Positive"]) <= {"yes", "no"}  # decided by threshold: yes or no, never "not sure"
    assert (others["Probability"] == "–").sum() == len(others) - 1  # only the two labels with a map have one

    assert common.verdict_colour(task, result.verdict, applicable=result.applicable) == "violet"
    assert common.verdict_colour(task, "re-record") == "red"  # the worst level keeps its colour
    chart = common.score_chart(frame).to_dict()
    assert "not sure" in chart["layer"][0]["encoding"]["color"]["scale"]["domain"]
