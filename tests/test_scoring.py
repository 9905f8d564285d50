"""Scoring maths, verdicts, and the text-embedding cache, on the tiny CLAP checkpoint."""
from __future__ import annotations

import numpy as np
import pytest

from medzero.encoders import factory as encoders
from medzero.encoders.cache import TextEmbeddingCache
from medzero.tasks.schema import load_task, parse_task, task_from_labels
from medzero.tasks.scoring import build_head, class_embeddings, evaluate


@pytest.fixture()
def clap(tiny_clap_dir):
    return encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")


def _counting(monkeypatch, encoder):
    calls: list[list[str]] = []
    original = encoder.embed_text

    def embed_text(texts):
        calls.append(list(texts))
        return original(texts)

    monkeypatch.setattr(encoder, "embed_text", embed_text)
    return calls


def test_class_embedding_is_renormalised_mean_of_prompt_embeddings(clap, tmp_path):
    texts = ["a dog barking", "a dog growling", "This is a sound of a dog."]
    cache = TextEmbeddingCache(tmp_path)
    got = class_embeddings(clap, [texts], cache=cache)[0]
    e = clap.embed_text(texts)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    mean = e.mean(0)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), atol=1e-6)
    assert got.dtype == np.float32 and abs(np.linalg.norm(got) - 1) < 1e-5


def test_multiclass_and_multilabel_probabilities(clap, tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    emb = clap.embed([np.random.RandomState(0).randn(48000).astype(np.float32) * 0.1])
    multi = task_from_labels(["dog", "cat", "rain"], modality="audio", template="{}")
    head = build_head(multi, clap, cache=cache)
    p = head.scores(emb)[0]
    t = clap.embed_text(["dog", "cat", "rain"])
    logits = clap.logit_scale * emb[0].astype(np.float64) @ t.T.astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert abs(p.sum() - 1) < 1e-9

    ml = task_from_labels(["dog", "cat", "rain"], modality="audio", template="{}", multilabel=True)
    q = build_head(ml, clap, cache=cache).scores(emb)[0]
    neg = clap.embed_text(["other sounds"])[0]
    for j in range(3):
        pos_logit, neg_logit = clap.logit_scale * emb[0] @ t[j], clap.logit_scale * emb[0] @ neg
        assert q[j] == pytest.approx(1 / (1 + np.exp(neg_logit - pos_logit)), abs=1e-6)
    assert not np.isclose(q.sum(), 1.0)  # independent, not a distribution


def test_scores_twice_encode_texts_once(clap, monkeypatch, tmp_path):
    calls = _counting(monkeypatch, clap)
    task = load_task("voice_quality")
    cache = TextEmbeddingCache(tmp_path)
    first = build_head(task, clap, cache=cache)
    second = build_head(task, clap, cache=cache)
    np.testing.assert_array_equal(first.positives, second.positives)
    assert len(calls) == 1
    unique = {t for label in task.labels for t in task.positive_texts(label) + task.negative_texts(label)}
    assert sorted(calls[0]) == sorted(unique)

    # A new process finds them on disk: a fresh cache object over the same directory encodes nothing.
    build_head(task, clap, cache=TextEmbeddingCache(tmp_path))
    assert len(calls) == 1
    # Another model never shares an entry: same texts, other fingerprint, encoded again.
    monkeypatch.setattr(clap, "fingerprint", clap.fingerprint + "-other")
    build_head(task, clap, cache=TextEmbeddingCache(tmp_path))
    assert len(calls) == 2


def test_classify_twice_in_a_process_encodes_prompts_once(tiny_clap_dir, audio_clips, monkeypatch):
    import medzero

    clap = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")
    calls = _counting(monkeypatch, clap)
    from medzero.encoders import cache as cache_module

    monkeypatch.setattr(cache_module, "_default", TextEmbeddingCache(persist=False))
    monkeypatch.setattr(cache_module, "_default_dir", cache_module.cache_dir())
    medzero.classify(audio_clips["speech"], task="respiratory_sounds", audio_model=str(tiny_clap_dir), device="cpu")
    medzero.classify(audio_clips["noise"], task="respiratory_sounds", audio_model=str(tiny_clap_dir), device="cpu")
    assert len(calls) == 1


VERDICT_TASK = """
name: t
modality: audio
mode: multilabel
default_negative: quiet
verdicts: [accept, review, re-record]
labels:
  - {id: noise, name: {en: Noise, zh: 噪声}, prompts: [noise], threshold: 0.5, polarity: bad}
  - {id: speech, prompts: [speech], threshold: 0.5, polarity: good, verdict: review}
  - {id: cough, prompts: [cough], threshold: 0.1, polarity: info}
metrics:
  snr_db: {min: 10, verdict: re-record}
  clipping_ratio: {max: 0.01, verdict: review}
"""


def test_verdict_is_the_worst_triggered_with_reasons_in_both_languages():
    import yaml

    task = parse_task(yaml.safe_load(VERDICT_TASK), where="t.yaml")
    info = {"snr_db": {"en": "Signal-to-noise ratio", "zh": "信噪比", "unit": "dB"}}
    verdict, reasons = evaluate(task, {"noise": 0.2, "speech": 0.9, "cough": 0.9}, {"snr_db": 20, "clipping_ratio": 0})
    assert verdict == "accept" and reasons == []

    verdict, reasons = evaluate(task, {"noise": 0.2, "speech": 0.3, "cough": 0.9}, {"snr_db": 20})
    assert verdict == "review" and [r.id for r in reasons] == ["speech"] and reasons[0].direction == "below"

    verdict, reasons = evaluate(task, {"noise": 0.81, "speech": 0.9, "cough": 0}, {"snr_db": 6.2}, info)
    assert verdict == "re-record"
    assert [r.text("zh") for r in reasons] == ["噪声 0.81 高于阈值 0.50", "信噪比 6 dB 低于 10 dB"]
    assert reasons[1].text("en") == "Signal-to-noise ratio 6 dB below 10 dB"
