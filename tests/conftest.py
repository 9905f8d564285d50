"""Shared fixtures: real recordings made once per session (see ``audio_samples.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest

import audio_samples


@pytest.fixture(scope="session")
def audio_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """espeak-ng speech and variants of it, keyed by what they are.

    ``speech`` (22050 Hz WAV), ``noisy_0db`` / ``noisy_10db`` / ``noisy_20db`` (pink noise mixed
    in at that SNR), ``telephone`` (300-3400 Hz, 8 kHz) and ``telephone_48k`` (the same saved at
    48 kHz), ``clipped`` (+24 dB, hard-clipped), ``noise`` (3 s of pink noise), and the speech
    encoded as ``wav``, ``flac``, ``ogg`` (Opus), ``mp3``, ``m4a`` (AAC) and ``amr`` (AMR-NB).
    """
    missing = audio_samples.missing_tools()
    if missing:
        pytest.fail(f"making test audio needs {', '.join(missing)} (make test installs them with apt)")
    out = tmp_path_factory.mktemp("audio")
    speech = audio_samples.speech_wav(out)
    clips = {
        "speech": speech,
        "noisy_0db": audio_samples.mix_noise(speech, out, 0),
        "noisy_10db": audio_samples.mix_noise(speech, out, 10),
        "noisy_20db": audio_samples.mix_noise(speech, out, 20),
        "telephone": audio_samples.telephone(speech, out),
        "telephone_48k": audio_samples.telephone(speech, out, rate=48000),
        "clipped": audio_samples.clipped(speech, out),
        "noise": audio_samples.noise_only(out, 3),
    }
    for fmt in ("wav", "flac", "ogg", "mp3", "m4a", "amr"):
        clips[fmt] = audio_samples.convert(speech, out, fmt)
    return clips


# -- models and environment ------------------------------------------------------------------------
import os  # noqa: E402

from fixtures_clap import build_tiny_clap, tiny_clap_dir  # noqa: E402,F401
from fixtures_pg import pg_server, pg_url  # noqa: E402,F401

try:  # the image fixtures arrive with the image path
    from fixtures_image import *  # noqa: E402,F401,F403
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test session gets its own medzero cache directory; nothing reads ~/.cache."""
    path = tmp_path_factory.mktemp("medzero-cache")
    old = os.environ.get("MEDZERO_CACHE_DIR")
    os.environ["MEDZERO_CACHE_DIR"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield path
    if old is None:
        os.environ.pop("MEDZERO_CACHE_DIR", None)
    else:
        os.environ["MEDZERO_CACHE_DIR"] = old


#: What a site without model weights looks like: no model named, and the default models in neither
#: the Hugging Face cache nor medzero's model packs.
def default_models_missing_env(tmp: Path) -> dict[str, str | None]:
    """Environment changes (``None``: unset) that leave the default models unavailable offline."""
    return {
        "MEDZERO_AUDIO_MODEL": None,
        "MEDZERO_IMAGE_MODEL": None,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp / "empty-hf-cache"),
        "MEDZERO_MODELS_DIR": str(tmp / "no-model-packs"),
    }


@pytest.fixture
def default_models_missing(monkeypatch, tmp_path):
    """This test runs as a site without model weights (see :func:`default_models_missing_env`)."""
    from medzero.encoders import factory as encoder

    for key, value in default_models_missing_env(tmp_path).items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    encoder.clear_loaded()
    yield tmp_path
    encoder.clear_loaded()


@pytest.fixture
def app_env(monkeypatch, tiny_clap_dir, tiny_hf_clip_dir, tmp_path):
    """The app's environment: the tiny models named as the app is told of them, a private cache."""
    monkeypatch.setenv("MEDZERO_AUDIO_MODEL", str(tiny_clap_dir))
    monkeypatch.setenv("MEDZERO_IMAGE_MODEL", f"local-dir:{tiny_hf_clip_dir}")
    monkeypatch.setenv("MEDZERO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path
