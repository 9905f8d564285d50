"""CLAP's two towers on ONNX Runtime: ``backend="onnx"`` (and ``"onnx-int8"``).

The first load of a model builds the torch model once, exports both towers
(:mod:`medzero.encoders.backends`: checked against torch, cached per fingerprint) and keeps beside the
graphs everything inference needs: the feature extractor's settings and filter banks
(:class:`~medzero.audio.clap_features.MelFeatures`), the tokenizer as a ``tokenizers`` JSON, the
logit scale, the embedding size and the preprocessing a model pack records. Every later load
reads only those files: no torch, no transformers modelling code, no weights. Sessions are made on
first use, so a run whose label texts are all in the text cache never loads the text tower.

The audio graph takes log-mel features and marks every clip ``is_longer`` inside the graph, as
:class:`~medzero.audio.clap.ClapEncoder` does; both graphs end with the model's L2 normalisation.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..encoders import backends as backends
from ..encoders import hub
from ..encoders.factory import local_dir, weights_fingerprint
from ..encoders.registry import ModelCfg
from .clap import PROBE_TEXT, ClapEncoder, load_clap
from .clap_features import MelFeatures, shrink_rows

__all__ = ["ClapOnnxEncoder", "load", "export"]

_logger = logging.getLogger(__name__)

FAMILY = "clap"
#: Texts the export is checked on: different lengths (so padding is in the graph), and one longer
#: than any tokenizer limit (so truncation is checked too).
PROBE_TEXTS = [
    PROBE_TEXT,
    "music",
    "speech with loud background noise, a fan running and a door closing",
    " ".join(["a dog barking at a passing car"] * 120),
]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _versions() -> dict[str, str]:
    return backends.package_versions("torch", "transformers")


def _identity(source: str, revision: str | None) -> tuple[str | None, str]:
    """The fingerprint :func:`~medzero.audio.clap.load_clap` would give, without loading the model:
    a local folder's weights hash, or a hub snapshot's commit when it is certain which snapshot
    would load (offline, or a pinned commit). ``None`` when only loading can tell."""
    local = local_dir(source, modality="audio")
    if local is not None:
        return f"{local.resolve().name}@sha256:{weights_fingerprint(local)}", str(local.resolve())
    if not (hub.forced_offline() or (revision and _COMMIT.match(revision))):
        return None, source
    cached = hub.cached_file(source, "config.json", revision)
    return (f"{source}@{cached.parent.name}" if cached is not None else None), source


def load(source: str, *, revision: str | None = None, cfg: ModelCfg | None = None, backend: str = "onnx") -> "ClapOnnxEncoder":
    """A CLAP model's ONNX towers, exported on first use (see the module docstring)."""
    runtime = backends.runtime(backend)
    backends.require(runtime, why=f"the {backend} backend")
    fingerprint, model_id = _identity(source, revision)
    directory = backends.export_dir(fingerprint, FAMILY, _versions()) if fingerprint else None
    meta = backends.read_export(directory) if directory is not None else None
    if meta is None:
        earlier = backends.refused(directory, runtime) if directory is not None else None
        if earlier is not None:  # before loading torch: a refused export is not tried again
            raise earlier
        encoder = load_clap(source, revision=revision, device="cpu", cfg=cfg)
        fingerprint, model_id = encoder.fingerprint, encoder.model_id
        directory = backends.export_dir(fingerprint, FAMILY, _versions())
        _logger.info("exporting %s to ONNX in %s (once per model)", fingerprint, directory)
        meta = backends.exported(directory, lambda tmp: export(encoder, tmp, runtime=runtime), runtime_module=runtime, what=fingerprint)
        del encoder
    return ClapOnnxEncoder(directory, meta, model_id=model_id, fingerprint=fingerprint, backend=backend, source=(source, revision, cfg))


class ClapOnnxEncoder(backends.Exported, ClapEncoder):
    """:class:`~medzero.audio.clap.ClapEncoder` with both forward passes on ONNX Runtime.

    Features, batching and determinism are the torch encoder's own code; the long-clip "shrink" is
    :func:`~medzero.audio.clap_features.shrink_rows` (numpy, equal to torch's to float32 rounding).
    ``model`` and ``processor`` load the torch model on first access (model packs need them).
    """

    def __init__(
        self, directory: Path, meta: dict[str, Any], *, model_id: str, fingerprint: str, backend: str = "onnx",
        source: tuple[str, str | None, ModelCfg | None] | None = None, batch_size: int = 8,
    ):
        self.export_dir = Path(directory)
        self.backend = backend
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.device = "cpu"
        self.batch_size = batch_size
        self.feature_extractor = MelFeatures.load(self.export_dir)
        self.sample_rate = int(meta["sample_rate"])
        self.max_samples = int(meta["max_samples"])
        self.fusion = bool(meta["fusion"])
        self.dim = int(meta["dim"])
        self.logit_scale = float(meta["logit_scale"])
        self.weights_source = model_id
        self._meta = meta
        self.torch_source = source
        self._tokens: Any = None
        self._audio, self._text = self.open_towers("audio")

    def __repr__(self) -> str:
        return f"ClapOnnxEncoder({self.fingerprint!r}, backend={self.backend!r})"

    @staticmethod
    def _fixed_fusion(mel: np.ndarray, total_frames: int, chunk_frames: int) -> np.ndarray:
        """:meth:`ClapEncoder._fixed_fusion` without torch: the centre crop of each third, and the shrink."""
        ranges = np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)
        starts = [int(r[len(r) // 2]) if len(r) else 0 for r in ranges]
        crops = [mel[s : s + chunk_frames] for s in starts]
        return np.stack([shrink_rows(mel, chunk_frames), *crops], axis=0)

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self._audio(input_features=np.ascontiguousarray(features, dtype=np.float32)), dtype=np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), 64):
            ids, mask = self.tokenize(texts[start : start + 64])
            out[start : start + len(ids)] = self._text(input_ids=ids, attention_mask=mask)
        return out

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) as int64, padded to the longest and truncated as transformers does."""
        if self._tokens is None:
            spec = self._meta.get("tokenizer")
            self._tokens = _Tokens(self.export_dir / "tokenizer.json", spec) if spec else _HfTokens(self.processor.tokenizer)
        return self._tokens(list(texts))

    def preprocess_config(self) -> dict[str, Any]:
        return dict(self._meta["preprocess_config"])

    # -- the torch model, only when something needs it (backends.Exported.torch_encoder) -----------
    torch_loader = staticmethod(load_clap)

    @property
    def processor(self) -> Any:
        return self.torch_encoder().processor

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


class _Tokens:
    """A ``tokenizers`` tokenizer set up as transformers sets it for ``padding=True, truncation=True``."""

    def __init__(self, path: Path, spec: dict[str, Any]):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        if spec.get("max_length"):
            self.tokenizer.enable_truncation(int(spec["max_length"]), direction=spec.get("truncation_side", "right"))
        self.tokenizer.enable_padding(
            direction=spec.get("padding_side", "right"), pad_id=int(spec["pad_id"]), pad_type_id=int(spec.get("pad_type_id", 0)),
            pad_token=str(spec["pad_token"]),
        )

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask


class _HfTokens:
    """transformers' own tokenizer, for a model whose tokenizer has no ``tokenizers`` backend."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="np")
        return tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)


# -- export ----------------------------------------------------------------------------------------


def _probe_features(encoder: ClapEncoder, n: int) -> np.ndarray:
    """Log-mel features of ``n`` deterministic clips (a tone, noise, near-silence, a long clip)."""
    rng = np.random.default_rng(0)
    rate, length = encoder.sample_rate, encoder.max_samples
    t = np.arange(length // 2) / rate
    clips = [
        0.3 * np.sin(2 * np.pi * 440 * t),
        0.1 * rng.standard_normal(length),
        1e-4 * rng.standard_normal(length // 3),
        0.05 * rng.standard_normal(length * 2) + 0.2 * np.sin(2 * np.pi * 3000 * np.arange(length * 2) / rate),
    ]
    return np.stack([encoder.features(clips[i % len(clips)]) for i in range(n)]).astype(np.float32)


def export(encoder: ClapEncoder, directory: Path, *, runtime: str = "onnxruntime") -> dict[str, Any]:
    """Write ``audio.onnx``, ``text.onnx``, the features and the tokenizer into ``directory``; each
    tower is checked against torch on inputs of another batch size than the one traced."""
    import torch

    model = encoder.model.float().eval()

    class AudioTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_features: torch.Tensor) -> torch.Tensor:
            is_longer = torch.ones((input_features.shape[0], 1), dtype=torch.bool)
            return self.model.get_audio_features(input_features=input_features, is_longer=is_longer).pooler_output

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    features = _probe_features(encoder, 3)
    audio_path = directory / "audio.onnx"
    backends.export_onnx(AudioTower().eval(), [torch.from_numpy(features[:2])], audio_path,
                         inputs=["input_features"], dynamic={"input_features": {0: "batch"}})
    with torch.inference_mode():
        expected = AudioTower()(torch.from_numpy(features)).numpy()
    audio_diff = backends.check_close("the audio tower", backends.Session(audio_path, runtime, keep_compiled=False)(input_features=features), expected)

    trace = encoder.tokenizer(PROBE_TEXTS[:2], padding=True, truncation=True, return_tensors="pt")
    text_path = directory / "text.onnx"
    backends.export_onnx(TextTower().eval(), [trace["input_ids"], trace["attention_mask"]], text_path,
                         inputs=["input_ids", "attention_mask"],
                         dynamic={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}})
    probe = encoder.tokenizer(PROBE_TEXTS[1:], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        expected = TextTower()(probe["input_ids"], probe["attention_mask"]).numpy()
    got = backends.Session(text_path, runtime, keep_compiled=False)(input_ids=probe["input_ids"].numpy(), attention_mask=probe["attention_mask"].numpy())
    text_diff = backends.check_close("the text tower", got, expected)

    mel = encoder.feature_extractor
    files = ["audio.onnx", "text.onnx", *(mel if isinstance(mel, MelFeatures) else MelFeatures.of(mel)).save(directory)]
    spec = _save_tokenizer(encoder.tokenizer, directory)
    if spec is not None:
        files.append("tokenizer.json")
    return {
        "family": FAMILY,
        "fingerprint": encoder.fingerprint,
        "model_id": encoder.model_id,
        "files": files,
        "sample_rate": encoder.sample_rate,
        "max_samples": encoder.max_samples,
        "fusion": encoder.fusion,
        "dim": encoder.dim,
        "logit_scale": encoder.logit_scale,
        "tokenizer": spec,
        "preprocess_config": encoder.preprocess_config(),
        "max_abs_diff": {"audio": audio_diff, "text": text_diff},
        "versions": _versions(),
        "opset": backends.opset(),
    }


def _save_tokenizer(tokenizer: Any, directory: Path) -> dict[str, Any] | None:
    """``tokenizer.json`` and the settings that make ``tokenizers`` give transformers' ids and masks
    (checked on :data:`PROBE_TEXTS`); ``None`` when it cannot (then transformers' tokenizer is used)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "pad_token_id", None) is None:
        return None
    limit = getattr(tokenizer, "model_max_length", None)
    spec = {
        "max_length": int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "pad_id": int(tokenizer.pad_token_id),
        "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        "pad_token": str(tokenizer.pad_token),
    }
    path = directory / "tokenizer.json"
    path.write_text(backend.to_str(), encoding="utf-8")
    lean = _Tokens(path, spec)
    for batch in (PROBE_TEXTS, PROBE_TEXTS[:1], PROBE_TEXTS[1:3]):
        expected = tokenizer(batch, padding=True, truncation=True, return_tensors="np")
        ids, mask = lean(batch)
        if not (np.array_equal(ids, expected["input_ids"]) and np.array_equal(mask, expected["attention_mask"])):
            _logger.info("the tokenizers copy of %s gives other ids; transformers' tokenizer will be used", type(tokenizer).__name__)
            path.unlink()
            return None
    return spec

