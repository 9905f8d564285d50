"""The exported backends (ONNX Runtime, OpenVINO): same scores as torch, an export cache keyed by the
model, a clean error without the runtime, and int8 only when asked for. Tiny random checkpoints in
the real formats."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import medzero
from medzero.audio.io import load_audio
from medzero.encoders import backends as backends
from medzero.encoders import factory as encoders
from medzero.core.errors import ModelUnavailableError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

#: How far an exported tower's embeddings may be from torch's. ONNX Runtime and OpenVINO run the
#: same float32 arithmetic as torch in another order (fused and reordered operators, other matrix
#: kernels), so they differ by rounding, not bit for bit (measured 1e-7 to 1e-6 per element on the
#: tiny models). An export is accepted only when every element is within this of torch's on a probe
#: batch, so this is the library's own promise (medzero.encoders.backends.TOLERANCE).
TOL = backends.TOLERANCE
HAS_OPENVINO = __import__("importlib.util").util.find_spec("openvino") is not None
RUNTIMES = ["onnx", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed"))]


def _hide_runtimes(monkeypatch, *names: str) -> None:
    """Make ``names`` look uninstalled (importlib.util.find_spec returns None for them)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


@pytest.fixture
def fresh_cache(isolated_cache):
    """An empty medzero cache (so the ONNX export cache starts empty) and no loaded encoders."""
    return isolated_cache


def _exports(cache: Path) -> list[Path]:
    root = cache / "onnx"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def _embeddings(clf: "medzero.Classifier", sources) -> np.ndarray:
    """The embeddings ``clf.classify_batch(sources)`` scores, through its own pipeline."""
    vectors = []
    for batch in clf.pipeline.batches(sources):
        vectors += clf.pipeline.embed(batch)
    return np.stack(vectors).astype(np.float64)


def score_tolerance(modality: str, sources, **kwargs) -> float:
    """How far the onnx backend's scores of ``sources`` may be from torch's, given how far apart
    the two backends' embeddings of them (``e``) and of the labels (``t``) are.

    A score is ``softmax(s * cos)`` over the labels (``s``: the logit scale). With unit vectors,
    ``|cos' - cos| = |(e' - e).t + e'.(t' - t)| <= |e' - e| + |t' - t|``; a softmax output moves by
    ``p(1 - p)`` times the spread of its inputs' moves (along the whole path, by the mean value
    theorem), at most a quarter of the spread, so at most half the largest move. The float32 norms
    are 1 to within 1e-6, and float64 scoring adds rounding of order 1e-16: the factor and the
    constant cover both. The embeddings themselves are held to ``TOL`` by the tower tests.
    """
    onnx = medzero.Classifier(**kwargs, backend="onnx")
    torch_ = medzero.Classifier(**kwargs, backend="torch")
    moved_e = np.linalg.norm(_embeddings(onnx, sources) - _embeddings(torch_, sources), axis=1).max()
    heads = onnx.head(modality), torch_.head(modality)
    moved_t = max(
        np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1).max()
        for a, b in ((heads[0].positives, heads[1].positives), (heads[0].negatives, heads[1].negatives)) if a is not None
    )
    assert heads[0].logit_scale == pytest.approx(heads[1].logit_scale, rel=1e-7)
    return 0.5 * heads[0].logit_scale * (moved_e + moved_t) * (1 + 1e-5) + 1e-12


def _waves(rate: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(int(rate * 4)) / rate
    return [
        (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32),  # short: repeat-padded to 10 s
        (0.1 * rng.standard_normal(rate * 10)).astype(np.float32),  # exactly the model input
        (0.05 * rng.standard_normal(rate * 23)).astype(np.float32),  # long: fused crops and shrink
    ]


# -- CLAP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", RUNTIMES)
def test_clap_towers_equal_torch(backend, tiny_clap_dir, fresh_cache):
    torch_enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="torch")
    onnx_enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend=backend)
    assert type(onnx_enc).__name__ == "ClapOnnxEncoder"
    assert onnx_enc.fingerprint == torch_enc.fingerprint  # the same model: caches and index spaces carry over
    assert onnx_enc.logit_scale == pytest.approx(torch_enc.logit_scale)
    waves = _waves(torch_enc.sample_rate)
    np.testing.assert_allclose(onnx_enc.embed(waves), torch_enc.embed(waves), atol=TOL)
    texts = ["a person speaking", "music", "wind noise and traffic " * 40]  # the last is truncated
    np.testing.assert_allclose(onnx_enc.embed_text(texts), torch_enc.embed_text(texts), atol=TOL)


def test_clap_classify_scores_equal_torch(tiny_clap_dir, audio_clips, fresh_cache):
    """End to end, long clips included (their whole-clip shrink is numpy on onnx, torch on torch):
    scores differ by no more than the embeddings' float32 differences account for."""
    long_clip = (_waves(48000)[2], 48000)  # 23 s: fused crops and the shrink
    paths = [audio_clips[k] for k in ("speech", "noisy_0db", "telephone", "mp3")] + [long_clip]
    kwargs = dict(labels="speech,noise,music,silence", audio_model=str(tiny_clap_dir), device="cpu", batch_size=3)
    expected = medzero.Classifier(**kwargs, backend="torch").classify_batch(paths)
    got = medzero.Classifier(**kwargs, backend="onnx").classify_batch(paths)
    tolerance = score_tolerance("audio", paths, **kwargs)
    assert tolerance < 1e-3  # the embeddings are close: the bound says something
    for a, b in zip(got, expected):
        assert a.error is None and a.verdict == b.verdict
        assert a.model == b.model
        for label in b.scores:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=tolerance)


def test_clap_export_is_reused_without_torch(tiny_clap_dir, audio_clips, fresh_cache):
    """A second process finds the export by the model's fingerprint and never imports torch."""
    medzero.Classifier(labels="speech,noise", audio_model=str(tiny_clap_dir), device="cpu", backend="onnx").classify(audio_clips["speech"])
    assert len(_exports(fresh_cache)) == 1
    code = (
        "import json, sys, medzero\n"
        f"r = medzero.classify({str(audio_clips['speech'])!r}, labels='speech,noise', audio_model={str(tiny_clap_dir)!r}, "
        "device='cpu', backend='onnx')\n"
        "print(json.dumps({'scores': r.scores, 'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n"
    )
    env = {**os.environ, "MEDZERO_CACHE_DIR": str(fresh_cache), "HF_HUB_OFFLINE": "1"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout)
    assert out["torch"] is False and out["transformers"] is False
    here = medzero.classify(audio_clips["speech"], labels="speech,noise", audio_model=str(tiny_clap_dir), device="cpu", backend="torch")
    tolerance = score_tolerance("audio", [audio_clips["speech"]], labels="speech,noise", audio_model=str(tiny_clap_dir), device="cpu")
    assert out["scores"] == pytest.approx(here.scores, abs=tolerance)
    assert len(_exports(fresh_cache)) == 1


def test_export_is_keyed_by_the_weights(tmp_path, fresh_cache):
    """New weights in the same folder get their own export, and their own scores."""
    from fixtures_clap import build_tiny_clap

    folder = build_tiny_clap(tmp_path / "clap", seed=0)
    wave = _waves(48000)[:2]
    first = encoders.create(str(folder), modality="audio", device="cpu", backend="onnx").embed(wave)
    encoders.clear_loaded()
    build_tiny_clap(folder, seed=1)
    onnx_enc = encoders.create(str(folder), modality="audio", device="cpu", backend="onnx")
    torch_enc = encoders.create(str(folder), modality="audio", device="cpu", backend="torch")
    assert len(_exports(fresh_cache)) == 2
    second = onnx_enc.embed(wave)
    np.testing.assert_allclose(second, torch_enc.embed(wave), atol=TOL)
    assert np.abs(second - first).max() > 1e-3


def test_a_killed_export_leaves_no_half_model(tiny_clap_dir, fresh_cache, monkeypatch):
    from medzero.audio import clap_onnx

    real = clap_onnx.export

    def dies_half_way(encoder, directory, **kwargs):
        (directory / "audio.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt  # what a killed export looks like from inside

    monkeypatch.setattr(clap_onnx, "export", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert _exports(fresh_cache) == []
    assert list((fresh_cache / "onnx").iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(clap_onnx, "export", real)
    enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert enc.embed(_waves(48000)[:1]).shape == (1, enc.dim)


def test_a_folder_without_its_metadata_is_exported_again(tiny_clap_dir, fresh_cache):
    enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    expected = enc.embed(_waves(48000)[:1])
    (enc.export_dir / "meta.json").unlink()
    (enc.export_dir / "audio.onnx").write_bytes(b"damaged")
    encoders.clear_loaded()
    again = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    assert again.export_dir == enc.export_dir
    np.testing.assert_allclose(again.embed(_waves(48000)[:1]), expected, atol=1e-6)


def test_int8_only_behind_its_flag(tiny_clap_dir, fresh_cache):
    waves = _waves(48000)
    float_enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    float_enc.embed(waves)
    assert not list(float_enc.export_dir.glob("*int8*")) and not float_enc.fingerprint.endswith("+int8")
    int8_enc = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx-int8")
    assert int8_enc.fingerprint == float_enc.fingerprint + "+int8"  # never shares a cache entry or index space
    assert (int8_enc.export_dir / "audio.int8.onnx").is_file()
    a, b = float_enc.embed(waves), int8_enc.embed(waves)
    assert 0 < np.abs(a - b).max() < 0.1  # quantised, and close
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    texts = ["speech", "noise"]
    np.testing.assert_allclose(int8_enc.embed_text(texts), float_enc.embed_text(texts), atol=1e-6)  # text tower stays float


# -- open_clip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", RUNTIMES)
@pytest.mark.parametrize("which", ["tiny_clip_dir", "tiny_hf_clip_dir"])
def test_open_clip_towers_equal_torch(which, backend, request, image_files, dicom_files, fresh_cache):
    folder = request.getfixturevalue(which)
    ref = f"local-dir:{folder}"
    torch_enc = encoders.create(ref, modality="image", device="cpu", backend="torch")
    onnx_enc = encoders.create(ref, modality="image", device="cpu", backend=backend)
    assert type(onnx_enc).__name__ == "OnnxClipEncoder" and onnx_enc.fingerprint == torch_enc.fingerprint
    images = [image_files["rgb.png"], image_files["gray16.png"], image_files["photo.jpg"], dicom_files["mono2"], dicom_files["rgb"]]
    np.testing.assert_allclose(onnx_enc.embed(images), torch_enc.embed(images), atol=TOL)
    texts = ["a chest x ray showing a pleural effusion", "normal", "skin lesion " * 40]
    np.testing.assert_allclose(onnx_enc.embed_text(texts), torch_enc.embed_text(texts), atol=TOL)


def test_open_clip_classify_and_reuse(tiny_hf_clip_dir, image_files, dicom_files, fresh_cache, monkeypatch):
    from medzero.image import clip_onnx

    paths = [image_files["rgb.png"], dicom_files["mono2"], dicom_files["ct"]]
    kwargs = dict(labels="normal,pleural effusion,pneumonia", image_model=f"local-dir:{tiny_hf_clip_dir}", device="cpu")
    expected = medzero.Classifier(**kwargs, backend="torch").classify_batch(paths)
    medzero.Classifier(**kwargs, backend="onnx").classify_batch(paths[:1])
    encoders.clear_loaded()

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the torch model was loaded although the export is cached")

    monkeypatch.setattr(clip_onnx, "load_open_clip", no_torch_model)
    got = medzero.Classifier(**kwargs, backend="onnx").classify_batch(paths)
    assert len(_exports(fresh_cache)) == 1
    monkeypatch.undo()
    tolerance = score_tolerance("image", paths, **kwargs)
    for a, b in zip(got, expected):
        assert a.error is None and a.verdict == b.verdict
        for label in b.scores:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=tolerance)


# -- what a user meets -----------------------------------------------------------------------------


def test_missing_onnxruntime_is_one_line(tiny_clap_dir, audio_clips, fresh_cache, monkeypatch, capsys):
    _hide_runtimes(monkeypatch, "onnxruntime")
    with pytest.raises(ModelUnavailableError) as caught:
        medzero.Classifier(labels="a,b", audio_model=str(tiny_clap_dir), backend="onnx")
    message = str(caught.value)
    assert "\n" not in message and "onnxruntime" in message and "medzero[onnx]" in message
    from medzero.cli import main

    capsys.readouterr()
    code = main(["classify", "--labels", "a,b", "--audio-model", str(tiny_clap_dir), "--backend", "onnx", str(audio_clips["speech"])])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "medzero: error: the onnx backend needs onnxruntime" in err


def test_unknown_backend_and_gpu_are_refused(tiny_clap_dir):
    with pytest.raises(ModelUnavailableError, match="unknown backend 'tensorrt'"):
        medzero.Classifier(labels="a,b", backend="tensorrt")
    with pytest.raises(ModelUnavailableError, match="runs on the CPU"):
        medzero.Classifier(labels="a,b", backend="onnx", device="cuda")


def test_cli_backend_option(tiny_clap_dir, audio_clips, fresh_cache, capsys):
    from medzero.cli import main

    def scores(*extra):
        assert main(["classify", "--labels", "speech,noise,music", "--audio-model", str(tiny_clap_dir), "--device", "cpu",
                     "--format", "json", *extra, str(audio_clips["speech"])]) == 0
        return json.loads(capsys.readouterr().out)[0]["scores"]

    assert main(["classify", "--help"]) == 0
    assert "--backend [auto|torch|onnx|openvino|onnx-int8]" in capsys.readouterr().out
    torch_scores = scores("--backend", "torch")
    assert not _exports(fresh_cache)
    onnx_scores = scores("--backend", "onnx")
    tolerance = score_tolerance("audio", [audio_clips["speech"]], labels="speech,noise,music", audio_model=str(tiny_clap_dir), device="cpu")
    assert onnx_scores == pytest.approx(torch_scores, abs=tolerance)
    assert len(_exports(fresh_cache)) == 1
    assert backends.resolve() == "auto"  # the option lasts as long as the command


def test_case_index_takes_the_backend(tiny_clap_dir, audio_clips, tmp_path, fresh_cache):
    from medzero import CaseIndex

    files = [audio_clips[k] for k in ("speech", "noise", "telephone")]
    with CaseIndex(tmp_path / "idx", audio_model=str(tiny_clap_dir), device="cpu", backend="onnx") as idx:
        idx.add(files)
        hits = idx.search_example(audio_clips["speech"], k=1)
    assert Path(hits[0].path).name == Path(audio_clips["speech"]).name
    with CaseIndex(tmp_path / "idx", audio_model=str(tiny_clap_dir), device="cpu", backend="torch") as idx:
        assert Path(idx.search_example(audio_clips["speech"], k=1)[0].path).name == Path(audio_clips["speech"]).name
    with pytest.raises(medzero.CaseIndexError):  # int8 vectors are another model's
        with CaseIndex(tmp_path / "idx", audio_model=str(tiny_clap_dir), device="cpu", backend="onnx-int8") as idx:
            idx.add([audio_clips["clipped"]])
            idx.encoder("audio")


# -- auto: the default ------------------------------------------------------------------------------


def test_auto_runs_clap_on_openvino_or_onnx_and_open_clip_on_torch_on_the_cpu(tiny_clap_dir, tiny_hf_clip_dir, audio_clips, fresh_cache):
    """The default backend is the one measured best per model family on the CPU (bench/): for CLAP
    openvino where medzero[openvino] is installed, else onnx."""
    from medzero.audio.clap_onnx import ClapOnnxEncoder

    assert backends.resolve() == "auto"
    clf = medzero.Classifier(labels="speech,noise", audio_model=str(tiny_clap_dir), image_model=f"local-dir:{tiny_hf_clip_dir}", device="cpu")
    audio = clf.encoder("audio")
    assert isinstance(audio, ClapOnnxEncoder) and audio.backend == ("openvino" if HAS_OPENVINO else "onnx")
    assert type(clf.encoder("image")).__name__ == "OpenClipEncoder"
    reference = medzero.Classifier(labels="speech,noise", audio_model=str(tiny_clap_dir), device="cpu", backend="torch")
    tolerance = score_tolerance("audio", [audio_clips["speech"]], labels="speech,noise", audio_model=str(tiny_clap_dir), device="cpu")
    assert clf.classify(audio_clips["speech"]).scores == pytest.approx(reference.classify(audio_clips["speech"]).scores, abs=tolerance)
    assert backends.choose("auto", "clap", "cuda") == "torch"  # GPUs run torch
    assert backends.choose("auto", "clap", "cpu") == ("openvino" if HAS_OPENVINO else "onnx")
    assert backends.choose("auto", "open_clip", "cpu") == "torch"


def test_auto_on_a_machine_without_a_gpu_never_imports_torch(tiny_clap_dir, audio_clips, fresh_cache):
    """The default (backend auto, device auto) on a CPU-only machine: the exported model runs and
    torch is never imported, not even to ask whether CUDA is there (1-1.5 s and 300 MB a start)."""
    if not encoders.no_gpu_driver():
        pytest.skip("this machine has a GPU driver: auto asks torch, as it should")
    medzero.Classifier(labels="speech,noise", audio_model=str(tiny_clap_dir)).classify(audio_clips["speech"])  # the export
    code = (
        "import json, sys, medzero\n"
        f"r = medzero.classify({str(audio_clips['speech'])!r}, labels='speech,noise', audio_model={str(tiny_clap_dir)!r})\n"
        "print(json.dumps({'error': r.error, 'torch': 'torch' in sys.modules}))\n"
    )
    env = {**os.environ, "MEDZERO_CACHE_DIR": str(fresh_cache), "HF_HUB_OFFLINE": "1"}
    env.pop("MEDZERO_BACKEND", None)
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                                    cwd=fresh_cache).stdout)
    assert out == {"error": None, "torch": False}


def test_a_gpu_driver_or_hidden_devices_decide_whether_torch_is_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert encoders.no_gpu_driver()  # every device hidden: no GPU, whatever is installed
    assert encoders.resolve_device("auto") == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    driver = tmp_path / "nvidiactl"
    driver.write_text("")
    monkeypatch.setattr(encoders, "_GPU_DRIVER_FILES", (str(driver),))
    assert not encoders.no_gpu_driver()  # a driver is there: torch is asked


def test_auto_without_openvino_is_onnx(tiny_clap_dir, fresh_cache, monkeypatch):
    _hide_runtimes(monkeypatch, "openvino")
    assert backends.candidates("auto", "clap", "cpu") == ("onnx", "torch")
    assert encoders.create(str(tiny_clap_dir), modality="audio", device="cpu").backend == "onnx"


def test_auto_without_either_runtime_is_torch(tiny_clap_dir, fresh_cache, monkeypatch):
    _hide_runtimes(monkeypatch, "openvino", "onnxruntime")
    assert type(encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")).__name__ == "ClapEncoder"
    assert not _exports(fresh_cache)


def test_auto_goes_on_to_onnx_when_openvino_fails(tiny_clap_dir, audio_clips, fresh_cache, monkeypatch, caplog):
    """A failure of the runtime alone (here OpenVINO's loader raising) moves auto to the next
    backend it prefers, with one warning naming both; the export stays, used by onnx."""
    if not HAS_OPENVINO:
        pytest.skip("openvino is not installed")
    real = encoders._load

    def openvino_broken(target, backend, device, offline_because):
        if backend == "openvino":
            raise backends.BackendError("openvino cannot load audio.onnx (RuntimeError)")
        return real(target, backend, device, offline_because)

    monkeypatch.setattr(encoders, "_load", openvino_broken)
    with caplog.at_level("WARNING", logger="medzero.encoders.factory"):
        encoder = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")
    assert encoder.backend == "onnx"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "the openvino backend cannot load" in warnings[0] and warnings[0].endswith("; using onnx")


def test_auto_falls_back_to_torch_when_the_export_is_refused(tiny_clap_dir, audio_clips, fresh_cache, monkeypatch, caplog):
    """An export that differs from torch is refused; asked for by name that is the error, under auto
    it is one warning and the torch model, with torch's scores."""

    def refuse(what, got, expected, tolerance=backends.TOLERANCE):
        raise backends.BackendError(f"the ONNX export of {what} differs from torch by 1.00e-02 (more than {tolerance:g})")

    monkeypatch.setattr(backends, "check_close", refuse)
    with pytest.raises(ModelUnavailableError, match="differs from torch"):
        encoders.create(str(tiny_clap_dir), modality="audio", device="cpu", backend="onnx")
    encoders.clear_loaded()
    with caplog.at_level("WARNING", logger="medzero.encoders.factory"):
        encoder = encoders.create(str(tiny_clap_dir), modality="audio", device="cpu")
    assert type(encoder).__name__ == "ClapEncoder"
    # one warning: the export failed every exported backend alike, so onnx was not tried after openvino
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].endswith("; using torch"), caplog.text
    assert not _exports(fresh_cache) and not list((fresh_cache / "onnx").glob(".*.tmp"))
    assert len(list((fresh_cache / "onnx").glob("*.refused.json"))) == 1  # auto did not try again (tests/test_backend_faults.py)


def test_auto_does_not_hide_a_missing_model(tmp_path, fresh_cache, caplog):
    with caplog.at_level("WARNING", logger="medzero.encoders.factory"):
        with pytest.raises(ModelUnavailableError) as caught:
            encoders.create(str(tmp_path / "no-such-model"), modality="audio", device="cpu")
    assert "no-such-model" in str(caught.value) and "using torch" not in caplog.text


# -- the features the ONNX path computes without torch or transformers ---------------------------------
#
# Neither is bit-identical to its reference on every CPU, so each test bounds the difference by
# what float32 rounding can make of it (derived next to each), rather than by a guess.


def test_mel_features_equal_the_extractor_to_float32_rounding(audio_clips):
    from transformers import ClapFeatureExtractor

    from medzero.audio.clap_features import MelFeatures

    extractor = ClapFeatureExtractor()
    mel = MelFeatures.of(extractor)
    x = load_audio(audio_clips["noisy_10db"], sample_rate=48000).samples.astype(np.float64)
    for waveform in (x, np.tile(x, 4)[:1_300_000], x[:5000]):
        for theirs, ours in ((extractor.mel_filters, mel.mel_filters), (extractor.mel_filters_slaney, mel.mel_filters_slaney)):
            got = mel._np_extract_fbank_features(waveform, ours)
            expected = extractor._np_extract_fbank_features(waveform, theirs)
            # The same float64 arithmetic, but the filter-bank product runs through BLAS in other
            # shapes, so a float64 value may differ in its last bits. Where that crosses a rounding
            # boundary of the complex64 spectrum, each component moves by 2^-24 relative, the power
            # by 2^-23, the mel energy (a positive sum) by 2^-23, and 10*log10 of it by
            # 10/ln(10) * 2^-23 = 5.2e-7 dB; the float32 result then rounds to one unit either way.
            bound = 10 / np.log(10) * 2.0**-23 + np.spacing(np.abs(expected))
            assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
            assert np.all(np.abs(got - expected) <= bound), np.abs(got - expected).max()


def _bilinear_bound(mel: np.ndarray, rows: int) -> np.ndarray:
    """How far two float32 bilinear shrinks of ``mel`` to ``rows`` frames may be apart.

    Both compute the source position ``p = scale * (i + 0.5) - 0.5`` in float32 (``scale`` rounded
    alike), rounding once (a fused multiply-add) or twice, so each is within one float32 unit of
    ``scale * (i + 0.5)`` of the exact position, and the two within 2 * spacing(frames). The
    interpolated value is continuous and piecewise linear in ``p``, with the slope
    ``mel[j + 1] - mel[j]`` of the rows around it. The combination ``(1 - w) * a + w * b`` rounds
    the weight and three operations: at most 2 units of max(|a|, |b|) each side.
    """
    frames = mel.shape[0]
    position = np.maximum(np.float32(frames) / np.float32(rows) * (np.arange(rows) + 0.5) - 0.5, 0)
    lower = np.minimum(position.astype(np.int64), frames - 1)
    steps = np.abs(np.diff(mel.astype(np.float64), axis=0, append=mel[-1:].astype(np.float64)))
    around = [np.clip(lower + k, 0, frames - 1) for k in (-1, 0, 1, 2)]
    slope = np.max([steps[j] for j in around[:3]], axis=0)
    magnitude = np.max([np.abs(mel[j]) for j in around], axis=0)
    return 2 * np.spacing(np.float32(frames)) * slope + 4 * np.spacing(magnitude)


_FRAMES = [1001, 1002, 1500, 2503, 60001]
#: torch's CPU kernels as built for each instruction set (``ATEN_CPU_CAPABILITY``): the generic one
#: rounds the source position twice, the vectorised ones once. This machine runs the ones it has.
_CAPABILITIES = ["default", "avx2", "avx512"]


def _torch_shrinks(capability: str) -> dict[int, np.ndarray] | None:
    """torch's bilinear shrink of each test mel, by torch's kernels for ``capability`` (in a
    subprocess: the capability is read when torch is imported); ``None`` if this CPU lacks it."""
    code = (
        "import sys, numpy as np, torch\n"
        "if torch.backends.cpu.get_cpu_capability().lower() != sys.argv[1]: sys.exit(3)\n"
        "out = {}\n"
        f"for frames in {_FRAMES!r}:\n"
        "    mel = np.random.default_rng(frames).normal(-40, 20, (frames, 64)).astype(np.float32)\n"
        "    out[str(frames)] = torch.nn.functional.interpolate(torch.tensor(mel[None, None]), size=[1001, 64], "
        "mode='bilinear', align_corners=False)[0, 0].numpy()\n"
        "np.savez(sys.argv[2], **out)\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "shrinks.npz"
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        run = subprocess.run([sys.executable, "-c", code, capability, str(target)], env=env, capture_output=True, text=True, timeout=300)
        if run.returncode == 3:
            return None
        assert run.returncode == 0, run.stderr
        with np.load(target) as shrinks:
            return {int(k): shrinks[k] for k in shrinks.files}


@pytest.mark.parametrize("capability", _CAPABILITIES)
def test_shrink_rows_is_torch_bilinear_to_float32_rounding(capability):
    """The numpy shrink against torch's own kernels for each instruction set this CPU has: on an
    AVX2 or AVX-512 CPU torch's default kernel and its generic one round positions differently."""
    from medzero.audio.clap_features import shrink_rows

    expected = _torch_shrinks(capability)
    if expected is None:
        pytest.skip(f"this CPU has no {capability} kernels")
    for frames in _FRAMES:
        mel = np.random.default_rng(frames).normal(-40, 20, (frames, 64)).astype(np.float32)
        got = shrink_rows(mel, 1001)
        assert got.dtype == np.float32 and got.shape == (1001, 64)
        difference = np.abs(got.astype(np.float64) - expected[frames])
        assert np.all(difference <= _bilinear_bound(mel, 1001)), (frames, difference.max())


def test_shrink_rows_of_an_unchanged_length_is_the_input():
    from medzero.audio.clap_features import shrink_rows

    mel = np.random.default_rng(0).normal(-40, 20, (1001, 64)).astype(np.float32)
    np.testing.assert_array_equal(shrink_rows(mel, 1001), mel)  # scale 1: every weight is exactly 0


def test_serve_runs_its_workers_on_the_backend_it_was_given(tiny_clap_dir, audio_clips, fresh_cache, tmp_path):
    """`medzero serve --backend onnx-int8 --workers 2`: both worker processes load the int8 model
    (its fingerprint says so) and score as the library does on that backend; a GPU is refused in one line."""
    httpx = pytest.importorskip("httpx")
    from test_service import start_server, stop_server

    env = dict(os.environ, MEDZERO_AUDIO_MODEL=str(tiny_clap_dir), MEDZERO_CACHE_DIR=str(fresh_cache), HF_HUB_OFFLINE="1")
    env.pop("MEDZERO_BACKEND", None)
    refused = subprocess.run(
        [sys.executable, "-m", "medzero.service.cli", "--insecure-no-auth", "--backend", "onnx", "--device", "cuda"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert refused.returncode == 2 and "the onnx backend runs on the CPU, not cuda" in refused.stderr
    server = start_server(tmp_path / "srv", ["--insecure-no-auth", "--workers", "2", "--preload", "audio", "--backend", "onnx-int8"], env, ready=False)
    try:
        deadline = time.monotonic() + 120
        while True:  # the workers start after the "running on" line
            try:
                if httpx.get(server.base + "/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.3)
        expected = medzero.Classifier(labels=["speech", "noise"], audio_model=str(tiny_clap_dir), backend="onnx-int8").classify(audio_clips["speech"])
        seen = set()
        for _ in range(8):  # requests land on either worker
            models = httpx.get(server.base + "/v1/models", timeout=30).json()["served"]
            seen.update(m["fingerprint"] for m in models if m["modality"] == "audio" and m["fingerprint"])
            served = httpx.post(server.base + "/v1/classify", params={"labels": "speech,noise"},
                                content=audio_clips["speech"].read_bytes(), timeout=60).json()["result"]["scores"]
            assert served == pytest.approx(expected.scores, abs=1e-6)
        assert seen and all(f.endswith("+int8") for f in seen), seen
    finally:
        stop_server(server)
