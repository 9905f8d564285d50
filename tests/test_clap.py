"""The CLAP path end to end on a tiny random checkpoint: equivalence with transformers, determinism,
long recordings, and the errors a user meets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import medzero
from medzero.audio.io import load_audio
from medzero.encoders import factory as encoders
from medzero.encoders.registry import list_models
from medzero.core.errors import BadInputError, ModelUnavailableError, TaskError


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory, audio_clips):
    """25 s of real speech with pink noise under it (sox), at 22.05 kHz."""
    out = tmp_path_factory.mktemp("long") / "long.wav"
    subprocess.run(["sox", str(audio_clips["noisy_10db"]), str(out), "repeat", "6", "trim", "0", "25"], check=True)
    return out


@pytest.mark.parametrize("clip", ["speech", "noisy_0db", "telephone", "mp3"])
def test_scores_equal_transformers_clap_for_short_clips(tiny_clap_dir, audio_clips, clip):
    from transformers import ClapModel, ClapProcessor

    labels = ["a", "b", "c"]
    result = medzero.classify(audio_clips[clip], labels=",".join(labels), template="{}", audio_model=str(tiny_clap_dir), device="cpu",
                              backend="torch")  # the exported backends: test_onnx_backend, to their tolerance
    x = load_audio(audio_clips[clip], sample_rate=48000).samples
    assert len(x) <= 480000
    model = ClapModel.from_pretrained(tiny_clap_dir).eval()
    processor = ClapProcessor.from_pretrained(tiny_clap_dir)
    inputs = processor(text=labels, audio=[x], sampling_rate=48000, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_audio.softmax(-1)[0].numpy()
    got = np.array([result.scores[label] for label in labels])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert result.verdict == labels[int(np.argmax(expected))]


def test_batch_scores_do_not_depend_on_batch_neighbours(tiny_clap_dir, audio_clips):
    """transformers marks a random clip of a short-clip batch as 'longer'; medzero does not."""
    paths = [audio_clips[k] for k in ("speech", "noise", "clipped", "telephone")]
    clf = medzero.Classifier(labels="speech,noise,music", audio_model=str(tiny_clap_dir), device="cpu", batch_size=4)
    together = clf.classify_batch(paths)
    alone = [clf.classify(p) for p in paths]
    for a, b in zip(together, alone):
        assert a.scores == pytest.approx(b.scores, abs=1e-6)


def _score_in_subprocess(model_dir, path) -> str:
    code = (
        "import json, medzero; r = medzero.classify(%r, labels='speech,noise,music', template='{}', "
        "audio_model=%r, device='cpu'); print(json.dumps(r.scores))" % (str(path), str(model_dir))
    )
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_long_clip_scores_are_identical_across_processes(tiny_clap_dir, long_clip):
    first = _score_in_subprocess(tiny_clap_dir, long_clip)
    second = _score_in_subprocess(tiny_clap_dir, long_clip)
    assert first == second  # bit-identical floats, printed in full
    here = medzero.classify(long_clip, labels="speech,noise,music", template="{}", audio_model=str(tiny_clap_dir), device="cpu")
    assert json.loads(first) == here.scores


def test_long_clip_fusion_uses_fixed_centre_crops(tiny_clap_dir, long_clip):
    enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")
    x = load_audio(long_clip, sample_rate=48000).samples.astype(np.float64)
    fe = enc.feature_extractor
    mel = fe._np_extract_fbank_features(x, fe.mel_filters)
    feats = enc.features(x)
    chunk = 480000 // fe.hop_length + 1
    ranges = np.array_split(np.arange(mel.shape[0] - chunk + 1), 3)
    for channel, r in zip(feats[1:], ranges):
        start = r[len(r) // 2]
        np.testing.assert_array_equal(channel, mel[start : start + chunk])
    assert feats.shape == (4, chunk, 64)


def test_long_recording_gets_a_timeline_and_top_segments(tiny_clap_dir, long_clip):
    result = medzero.classify(long_clip, task="voice_quality", audio_model=str(tiny_clap_dir), device="cpu", window_s=10, hop_s=5)
    timeline = result.timeline
    assert timeline["start"] == [0.0, 5.0, 10.0, 15.0]  # 25 s in 10 s windows every 5 s: the last ends at 25
    assert timeline["end"][-1] == pytest.approx(25.0, abs=0.01)
    labels = medzero.load_task("voice_quality").label_ids()
    assert set(timeline["scores"]) == set(labels)
    for label in labels:
        segs = [s for s in result.segments if s.label == label]
        assert 1 <= len(segs) <= 3
        scores = timeline["scores"][label]
        assert segs[0].score == pytest.approx(max(scores))
        assert all(0 <= s.start < s.end <= 25.01 for s in segs)
    json.dumps(result.to_dict())  # plain JSON


def test_short_recording_has_no_timeline(tiny_clap_dir, audio_clips):
    result = medzero.classify(audio_clips["speech"], audio_model=str(tiny_clap_dir), device="cpu")
    assert result.timeline is None and result.segments == []
    assert result.task == "voice_quality" and result.verdict in {"accept", "review", "re-record"}
    assert set(result.metrics) >= {"snr_db", "clipping_ratio", "silence_ratio", "bandwidth_hz", "rms_dbfs", "dc_offset"}
    assert result.model.startswith("clap@sha256:")


def test_voice_quality_verdict_names_waveform_problems(tiny_clap_dir, audio_clips):
    """Clipping and narrow-band audio are caught by the measured metrics, whatever the model says."""
    clipped = medzero.classify(audio_clips["clipped"], audio_model=str(tiny_clap_dir), device="cpu")
    assert clipped.verdict == "re-record"
    assert any(r.id == "clipping_ratio" and r.direction == "above" for r in clipped.reasons)
    assert "削波比例" in clipped.summary("zh") and clipped.summary("zh").startswith("建议复录：")
    phone = medzero.classify(audio_clips["telephone"], audio_model=str(tiny_clap_dir), device="cpu")
    assert any(r.id == "bandwidth_hz" and r.direction == "below" for r in phone.reasons)


def test_arrays_are_resampled_to_the_model_rate(tiny_clap_dir):
    rate = 16000
    t = np.arange(rate * 3) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    a = medzero.classify((x, rate), labels="tone,speech", audio_model=str(tiny_clap_dir), device="cpu")
    b = medzero.classify((load_audio((x, rate), sample_rate=48000).samples, 48000), labels="tone,speech", audio_model=str(tiny_clap_dir), device="cpu")
    assert a.scores == pytest.approx(b.scores, abs=1e-7)
    assert a.metadata["sample_rate"] == rate


def test_bad_inputs_raise_one_line_errors(tiny_clap_dir, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    with pytest.raises(BadInputError, match="notes.wav is neither audio nor an image"):
        medzero.classify(text, audio_model=str(tiny_clap_dir))
    with pytest.raises(BadInputError, match="file not found"):
        medzero.classify(tmp_path / "missing.wav", audio_model=str(tiny_clap_dir))
    with pytest.raises(TaskError, match="at least two labels"):
        medzero.classify(text, labels="one", audio_model=str(tiny_clap_dir))


def test_model_not_available_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as info:
        encoders.create("laion/clap-htsat-fused-not-cached", modality="audio", device="cpu")
    message = str(info.value)
    assert "laion/clap-htsat-fused-not-cached" in message and "--audio-model" in message and "\n" not in message
    with pytest.raises(ModelUnavailableError, match="directory not found"):
        encoders.create("local-dir:/nonexistent/clap", modality="audio", device="cpu")


@pytest.mark.parametrize("cfg", [m for m in list_models("audio")], ids=lambda m: m.name)
def test_every_registered_audio_model_fails_cleanly_offline(cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDZERO_AUDIO_MODEL", raising=False)
    with pytest.raises(ModelUnavailableError, match=cfg.hub_id):
        encoders.create(cfg.name, modality="audio", device="cpu")


def test_fingerprint_follows_the_weights(tmp_path):
    from fixtures_clap import build_tiny_clap

    a = encoders.create(str(build_tiny_clap(tmp_path / "a", seed=1)), modality="audio", device="cpu")
    b = encoders.create(str(build_tiny_clap(tmp_path / "b", seed=2)), modality="audio", device="cpu")
    c = encoders.create(str(build_tiny_clap(tmp_path / "c", seed=1)), modality="audio", device="cpu")
    assert a.fingerprint.split("@")[1] != b.fingerprint.split("@")[1]
    assert a.fingerprint.split("@")[1] == c.fingerprint.split("@")[1]
    e = a.embed([np.zeros(48000, dtype=np.float32) + 0.01])
    assert e.shape == (1, a.dim) and e.dtype == np.float32 and abs(np.linalg.norm(e) - 1) < 1e-5


def test_a_bare_array_needs_its_sample_rate(tiny_clap_dir):
    with pytest.raises(BadInputError, match="needs its sample rate"):
        medzero.classify(np.zeros(48000, dtype=np.float32), labels="a,b", audio_model=str(tiny_clap_dir))
