"""The verdicts issue 21 demands, on a small slice of bench/bench_voice_skill.py's held-out set.

The clips are built by the bench's own code (espeak-ng voices of the HELD-OUT split, which the
limits in prompts/voice_quality.yaml were not chosen on) and classified signal-only, through the
real Silero VAD and DNSMOS models from their wheels: fine recordings are not sent back, the ones
that must be re-recorded are.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import medzero

import audio_samples

_BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_voice_skill.py"
FINE = ["clean", "telephone", "pink_20", "babble_30", "hum_20"]
RE_RECORD = ["white_5", "pink_5", "babble_5", "babble_0", "clip_heavy", "loss_35"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_voice_skill", _BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    missing = audio_samples.missing_tools()
    if missing:
        pytest.fail(f"making test audio needs {', '.join(missing)}")
    bench = _bench()
    clips = bench.build(tmp_path_factory.mktemp("skill"), splits=("held_out",), voices=2, texts=1, conditions=FINE + RE_RECORD)
    assert [bench.truth_of(c) for c in FINE] == ["fine"] * len(FINE)
    assert [bench.truth_of(c) for c in RE_RECORD] == ["re-record"] * len(RE_RECORD)
    return clips, bench.classify(clips)


def test_fine_recordings_are_not_sent_back(judged):
    clips, results = judged
    wrong = [(c.condition, r.verdict, [x.text("en") for x in r.reasons]) for c, r in zip(clips, results)
             if c.truth == "fine" and r.verdict not in ("accept", "review")]
    assert not wrong


def test_bad_recordings_are_re_recorded_with_reasons_that_say_why(judged):
    clips, results = judged
    assert all(r.signal_only for r in results)  # no CLAP weights: the measurements alone
    missed = [(c.condition, r.verdict, [x.text("en") for x in r.reasons]) for c, r in zip(clips, results)
              if c.truth == "re-record" and r.verdict != "re-record"]
    assert not missed
    by_condition = {c.condition: r for c, r in zip(clips, results)}
    loss = next(x for x in by_condition["loss_35"].reasons if x.id == "dropout_ratio")  # lost packets are named
    assert loss.verdict == "re-record" and loss.value > loss.limit
    for lang in ("en", "zh"):  # every reason names its value and its limit, and reads true
        assert all(x.text(lang) for x in by_condition["loss_35"].reasons)
    assert "above the threshold" in loss.text("en") and "高于阈值" in loss.text("zh")
