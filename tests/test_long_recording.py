"""Long recordings (issue 24): the timeline's coarse pass and refinement, windows without speech
skipped where the task allows it, and the windows' features cut from the whole recording's mel.

Real recordings made with espeak-ng and sox (one bad stretch of loud white noise; a stretch of
digital silence), the tiny random CLAP through the public path, Silero VAD from its wheel.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio_samples
import medzero
from medzero.core.errors import BadInputError, TaskError
from medzero.encoders import factory
from medzero.audio.io import load_audio
from medzero.audio.timeline import MIN_REFINE_WINDOWS, window_starts

SECONDS = 90.0
BAD = (45.0, 55.0)  # the bad stretch: one odd window of the 5 s grid, half in each coarse window around it
SILENT = (20.0, 45.0)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    missing = audio_samples.missing_tools()
    if missing:
        pytest.fail(f"making test audio needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("long")
    speech = audio_samples.speech_wav(out, seconds=SECONDS, name="speech")
    noise = audio_samples.noise_only(out, BAD[1] - BAD[0], rate=22050, level=0.6, color="whitenoise")
    audio_samples.sox(noise, out / "noise_at.wav", "pad", f"{BAD[0]:g}", f"{SECONDS - BAD[1]:g}")
    audio_samples.sox("-m", speech, out / "noise_at.wav", "-b", "16", out / "bad_stretch.wav")
    x, rate = sf.read(speech, dtype="float32")
    x = x.copy()
    x[int(SILENT[0] * rate) : int(SILENT[1] * rate)] = 0.0
    sf.write(out / "gap.wav", x, rate, subtype="PCM_16")
    return {"speech": speech, "bad_stretch": out / "bad_stretch.wav", "gap": out / "gap.wav"}


@pytest.fixture()
def classify(tiny_clap_dir, monkeypatch):
    """classify(path, mode=None, task="voice_quality") with the tiny CLAP; ``mode`` sets MEDZERO_TIMELINE."""

    def run(path, mode=None, task="voice_quality"):
        if mode is None:
            monkeypatch.delenv("MEDZERO_TIMELINE", raising=False)
        else:
            monkeypatch.setenv("MEDZERO_TIMELINE", mode)
        return medzero.classify(path, task=task, audio_model=str(tiny_clap_dir), device="cpu")

    return run


def _top(result) -> dict[str, tuple[float, float]]:
    """Each label's first (best) segment: (start, score)."""
    found: dict[str, tuple[float, float]] = {}
    for s in result.segments:
        found.setdefault(s.label, (s.start, s.score))
    return found


def _no_skip_task(tmp_path: Path) -> Path:
    """voice_quality without its ``timeline`` block: a task where silence matters."""
    text = Path(medzero.__file__).parent.parent.joinpath("prompts", "voice_quality.yaml").read_text(encoding="utf-8")
    assert "skip_without_speech: true" in text
    path = tmp_path / "voice_no_skip.yaml"
    path.write_text(text.replace("skip_without_speech: true", "skip_without_speech: false"), encoding="utf-8")
    return path


def test_refine_finds_the_full_pass_top_segments_with_fewer_windows(recordings, classify):
    full = classify(recordings["bad_stretch"], "full")
    fast = classify(recordings["bad_stretch"])
    grid = len(window_starts(int(SECONDS * 48000), 48000, 10.0, 5.0))
    assert grid >= MIN_REFINE_WINDOWS and len(full.timeline["start"]) == grid and full.timeline["mode"] == "full"
    assert fast.timeline["mode"] == "refine" and len(fast.timeline["start"]) < grid
    # the verdict comes from the whole recording: identical
    assert fast.verdict == full.verdict and fast.scores == full.scores and fast.reasons == full.reasons
    # every label's best window is the full pass's, with the same score
    assert _top(fast) == _top(full)
    # labels that the bad stretch raises put their best window on it, the odd window the coarse pass straddles
    on_stretch = [label for label, (start, _) in _top(full).items() if start == BAD[0]]
    assert on_stretch, "the white-noise stretch should be some label's best window"
    assert fast.timeline["start"][fast.timeline["refined"][0]] % 10 == 5.0  # refined windows are off the coarse grid
    # a window scored by both passes has the same score
    full_at = {s: k for k, s in enumerate(full.timeline["start"])}
    for label, values in fast.timeline["scores"].items():
        for k, start in enumerate(fast.timeline["start"]):
            assert values[k] == pytest.approx(full.timeline["scores"][label][full_at[start]], abs=1e-6)


def test_the_coarse_pass_covers_the_whole_recording(recordings, classify):
    tl = classify(recordings["speech"]).timeline
    assert tl["mode"] == "refine" and tl["coarse_hop_s"] == 10.0
    covered = 0.0
    for start, end in sorted(zip(tl["start"], tl["end"])):
        assert start <= covered + 1e-6, f"a gap before {start} s"
        covered = max(covered, end)
    assert covered == pytest.approx(SECONDS, abs=0.01)
    assert tl["start"] == sorted(tl["start"])
    for values in tl["scores"].values():  # every window it lists is scored (no speech is missing here)
        assert len(values) == len(tl["start"]) and all(isinstance(v, float) for v in values)
    json.dumps(tl)


def test_windows_without_speech_are_skipped_and_marked(recordings, classify):
    result = classify(recordings["gap"])
    tl = result.timeline
    skipped = tl["skipped"]
    assert skipped, "windows inside 25 s of digital silence should be skipped"
    for k in skipped:
        # a skipped window lies in the silence (the VAD pads its segments by 30 ms)
        assert SILENT[0] - 0.1 <= tl["start"][k] and tl["end"][k] <= SILENT[1] + 0.1
        assert all(values[k] is None for values in tl["scores"].values())
    for k in set(range(len(tl["start"]))) - set(skipped):
        assert all(values[k] is not None for values in tl["scores"].values())
    # no segment on a skipped window
    assert not {s.start for s in result.segments} & {tl["start"][k] for k in skipped}
    assert json.loads(json.dumps(result.to_dict()))["timeline"]["scores"]["hum"][skipped[0]] is None
    # the full pass skips the same windows
    assert classify(recordings["gap"], "full").timeline["skipped"] != []


def test_windows_are_skipped_only_when_the_task_allows_it(recordings, classify, tmp_path):
    result = classify(recordings["gap"], "full", task=str(_no_skip_task(tmp_path)))
    tl = result.timeline
    assert tl["skipped"] == []
    assert len(tl["start"]) == len(window_starts(int(SECONDS * 48000), 48000, 10.0, 5.0))
    assert all(v is not None for values in tl["scores"].values() for v in values)
    # the same windows are scored alike with and without the option
    skipping = classify(recordings["gap"], "full").timeline
    at = {s: k for k, s in enumerate(tl["start"])}
    for k, start in enumerate(skipping["start"]):
        if skipping["scores"]["hum"][k] is not None:
            assert skipping["scores"]["hum"][k] == pytest.approx(tl["scores"]["hum"][at[start]], abs=1e-6)


def test_verdicts_equal_the_full_pass_on_real_recordings(recordings, classify):
    for name in ("speech", "bad_stretch", "gap"):
        full, fast = classify(recordings[name], "full"), classify(recordings[name])
        assert (fast.verdict, fast.scores, fast.metrics) == (full.verdict, full.scores, full.metrics), name


def test_window_features_cut_from_the_whole_mel_equal_each_window_computed_alone(recordings, tiny_clap_dir):
    encoder = factory.create(str(tiny_clap_dir), modality="audio", device="cpu")
    samples = load_audio(recordings["bad_stretch"], sample_rate=encoder.sample_rate).samples[: 48000 * 37 + 123]
    whole = encoder.prepare_input(samples)
    assert whole.mel is not None and whole.mel.shape[0] == 1 + len(samples) // 480
    starts = window_starts(len(samples), encoder.sample_rate, 10.0, 5.0)
    assert starts[-1] % 480, "the window flush with the end starts off the mel frames: computed whole"
    cut = encoder.window_inputs(samples, starts, encoder.max_samples, whole)
    for start, got in zip(starts, cut):
        alone = encoder.prepare_input(samples[start : start + encoder.max_samples]).features
        # one float32 unit of a dB value (a few 1e-6) at most: the same float64 arithmetic per frame
        np.testing.assert_allclose(got.features, alone, rtol=0, atol=1e-4)


def test_timeline_settings_are_checked_in_the_task_file(tmp_path):
    text = _no_skip_task(tmp_path).read_text(encoding="utf-8")
    for bad, word in (("skip_without_speech: false", "skip_without_speech: maybe"),
                      ("skip_without_speech: false", "skip_silence: true")):
        path = tmp_path / "bad.yaml"
        path.write_text(text.replace(bad, word), encoding="utf-8")
        with pytest.raises(TaskError) as info:
            medzero.load_task(str(path))
        assert "timeline" in str(info.value) and "\n" not in str(info.value)
    # a task without the block keeps its canonical form (the hash overlays record)
    plain = medzero.load_task("voice_quality").model_copy(update={"timeline": None})
    assert "timeline" not in plain.model_dump()


def test_an_unknown_timeline_mode_is_a_one_line_error(recordings, classify):
    with pytest.raises(BadInputError) as info:
        classify(recordings["speech"], "fastest")
    assert "MEDZERO_TIMELINE" in str(info.value) and "\n" not in str(info.value)


def test_the_app_timeline_says_what_was_scored_and_draws_only_scored_windows(recordings, classify):
    """The voice page's timeline heading counts the windows scored and skipped (it said "every 5 s"
    while only the coarse grid and the refined windows had scores), and the chart draws no point
    for a window without a score."""
    from medzero.app import common
    from medzero.app.voice import timeline_heading

    result = classify(recordings["gap"])
    tl = result.timeline
    scored = [k for k in range(len(tl["start"])) if next(iter(tl["scores"].values()))[k] is not None]
    heading = timeline_heading(tl)
    assert f"{len(scored)} of {len(tl['start'])} scored" in heading
    assert f"{len(tl['skipped'])} skipped without speech" in heading
    rows = common.timeline_chart(result).data
    assert rows["score"].notna().all()
    assert len(rows) == len(scored) * len(tl["scores"])
