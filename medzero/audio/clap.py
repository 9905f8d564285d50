"""CLAP audio encoder (``laion/clap-htsat-fused`` and any HF-format CLAP) through transformers.

Determinism. Hugging Face's ``ClapFeatureExtractor`` draws at random twice: for clips longer than
10 s it crops three random 10 s windows, one from each third of the clip (the LAION-CLAP fusion
recipe), and when no clip in a batch is longer than 10 s it marks a *random* clip of the batch as
"longer", which changes that clip's embedding with the batch it happens to be in. medzero computes
the same features without either draw:

- the three local crops start at the **centre** of each third of the possible start positions, the
  positions LAION-CLAP samples from, so the expected crop is taken every time;
- every clip is marked ``is_longer=True``: that is what the extractor does for a single clip of up
  to 10 s (the case of the zero-shot pipeline), so scores equal the pipeline's, and a clip's
  embedding no longer depends on its neighbours in a batch.

Everything else (log-mel filters, repeat-padding, the bilinear "shrink" of the whole clip) is the
extractor's own code, called through its methods.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..core.encoder import ModelCfg, local_dir, register_family, register_model, weights_fingerprint
from ..core.errors import BadInputError, ModelUnavailableError

__all__ = ["ClapEncoder", "load_clap", "CLAP_FUSED"]

_logger = logging.getLogger(__name__)

CLAP_FUSED = register_model(
    ModelCfg(
        name="clap-htsat-fused",
        modality="audio",
        family="clap",
        hub_id="laion/clap-htsat-fused",
        # Pin with MEDZERO_CLAP_HTSAT_FUSED_REVISION=<commit sha>; "main" until a reviewed sha is recorded.
        revision="main",
        description="LAION CLAP, HTSAT audio tower with feature fusion, RoBERTa text tower (48 kHz)",
        default=True,
    )
)
register_model(
    ModelCfg(
        name="clap-htsat-unfused",
        modality="audio",
        family="clap",
        hub_id="laion/clap-htsat-unfused",
        revision="main",
        description="LAION CLAP, HTSAT audio tower without fusion (10 s centre crop for long clips)",
    )
)


@register_family("clap", "audio")
def load_clap(source: str, *, revision: str | None = None, device: str = "cpu", cfg: ModelCfg | None = None) -> "ClapEncoder":
    """Load a CLAP model and its processor from a local directory or a hub id (offline: the hub cache)."""
    import torch
    from transformers import ClapModel, ClapProcessor

    local = local_dir(source, modality="audio")
    where = str(local) if local is not None else source
    kwargs: dict[str, Any] = {} if local is not None else {"revision": revision}
    try:
        model = ClapModel.from_pretrained(where, **kwargs)
        processor = ClapProcessor.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        if local is not None:
            raise ModelUnavailableError(
                f"cannot load CLAP from {local}: {str(exc).splitlines()[0]} "
                "(expected a save_pretrained directory with config.json, model.safetensors and the processor files)"
            ) from None
        raise ModelUnavailableError(
            f"audio model {source} is not available offline; on a connected machine run "
            f"`hf download {source}` and copy the Hugging Face cache here, or save it with "
            f"ClapModel/ClapProcessor.save_pretrained and pass --audio-model /path/to/dir (or MEDZERO_AUDIO_MODEL)"
        ) from None
    if local is not None:
        fingerprint = f"{local.resolve().name}@sha256:{weights_fingerprint(local)}"
        model_id = str(local.resolve())
    else:
        commit = getattr(model.config, "_commit_hash", None)
        fingerprint = f"{source}@{commit or revision or 'main'}"
        model_id = source
    return ClapEncoder(model, processor, model_id=model_id, fingerprint=fingerprint, device=device)


class ClapEncoder:
    modality = "audio"

    def __init__(self, model, processor, *, model_id: str, fingerprint: str, device: str = "cpu", batch_size: int = 8):
        import torch

        self.model_id = model_id
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.processor = processor
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.max_samples = int(self.feature_extractor.nb_max_samples)
        self.fusion = bool(getattr(model.config.audio_config, "enable_fusion", False)) and (
            self.feature_extractor.truncation == "fusion"
        )
        self.dim = int(model.config.projection_dim)
        self.logit_scale = float(model.logit_scale_a.detach().float().exp())
        self.weights_source = model_id

    # -- features -----------------------------------------------------------------------------
    def features(self, waveform: np.ndarray) -> np.ndarray:
        """The model input for one mono clip at ``sample_rate``: (4, frames, mels) with fusion, else (1, ...)."""
        fe = self.feature_extractor
        x = np.asarray(waveform, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise BadInputError("CLAP takes one non-empty mono waveform per clip")
        if x.shape[0] > self.max_samples:
            if not self.fusion:
                start = (x.shape[0] - self.max_samples) // 2  # centre crop, not a random one
                return fe._np_extract_fbank_features(x[start : start + self.max_samples], fe.mel_filters_slaney)[None]
            mel = fe._np_extract_fbank_features(x, fe.mel_filters)
            chunk_frames = self.max_samples // fe.hop_length + 1
            total_frames = mel.shape[0]
            if chunk_frames == total_frames:
                return np.stack([mel, mel, mel, mel], axis=0)
            return self._fixed_fusion(mel, total_frames, chunk_frames)
        if x.shape[0] < self.max_samples:
            if fe.padding == "repeatpad":
                x = np.tile(x, self.max_samples // x.shape[0])
            elif fe.padding == "repeat":
                x = np.tile(x, self.max_samples // x.shape[0] + 1)[: self.max_samples]
            x = np.pad(x, (0, self.max_samples - x.shape[0]))
        if self.fusion:
            mel = fe._np_extract_fbank_features(x, fe.mel_filters)
            return np.stack([mel, mel, mel, mel], axis=0)
        return fe._np_extract_fbank_features(x, fe.mel_filters_slaney)[None]

    @staticmethod
    def _fixed_fusion(mel: np.ndarray, total_frames: int, chunk_frames: int) -> np.ndarray:
        import torch

        ranges = np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)
        starts = [int(r[len(r) // 2]) if len(r) else 0 for r in ranges]
        crops = [mel[s : s + chunk_frames] for s in starts]
        shrink = torch.nn.functional.interpolate(
            torch.tensor(mel[None, None]), size=[chunk_frames, mel.shape[1]], mode="bilinear", align_corners=False
        )[0, 0].numpy()
        return np.stack([shrink, *crops], axis=0)

    # -- embeddings ---------------------------------------------------------------------------
    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """(n, dim) normalised embeddings for mono waveforms at ``sample_rate`` (arrays or AudioClips)."""
        import torch

        waves = [getattr(item, "samples", item) for item in items]
        for item in items:
            rate = getattr(item, "sample_rate", self.sample_rate)
            if rate != self.sample_rate:
                raise BadInputError(f"audio at {rate} Hz given to a {self.sample_rate} Hz model; resample it first")
        out = np.empty((len(waves), self.dim), dtype=np.float32)
        for start in range(0, len(waves), self.batch_size):
            chunk = waves[start : start + self.batch_size]
            feats = np.stack([self.features(w) for w in chunk])
            out[start : start + len(chunk)] = self.embed_features(feats)
        return out

    def embed_features(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            input_features = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)
            is_longer = torch.ones((features.shape[0], 1), dtype=torch.bool, device=self.device)
            output = self.model.get_audio_features(input_features=input_features, is_longer=is_longer)
            return output.pooler_output.float().cpu().numpy()

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                chunk = texts[start : start + 64]
                tokens = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt").to(self.device)
                output = self.model.get_text_features(**tokens)
                out[start : start + len(chunk)] = output.pooler_output.float().cpu().numpy()
        return out

    def __repr__(self) -> str:
        return f"ClapEncoder({self.fingerprint!r}, device={self.device!r})"
