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

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..encoders import hub
from ..encoders.factory import Location, Target, advice, local_dir, missing_error, short_reason, weights_fingerprint
from ..encoders.registry import Family, ModelCfg, model_error, register_family, register_model
from ..core.errors import BadInputError
from ..core.ingest import map_ahead
from ..encoders.packs import LICENCE_PATTERNS, TOKENIZER_FILES, copy_files
from .clap_features import MelFeatures

__all__ = ["ClapEncoder", "ClapInput", "load_clap", "CLAP", "CLAP_FUSED"]

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
        extra={"license": "apache-2.0"},
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
        extra={"license": "apache-2.0"},
    )
)

#: Files a Hugging Face CLAP folder needs besides its weights (processor and tokenizer).
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: A text whose token ids a pack records, so ``verify`` notices another tokenizer.
PROBE_TEXT = "a person speaking in a quiet room"


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
            raise model_error(
                f"cannot load CLAP from {local} ({short_reason(exc)})",
                "expected a save_pretrained directory with config.json, model.safetensors and the processor files",
            ) from None
        target = Target(source, "audio", "clap", source, revision, cfg)
        because = hub.offline_reason()
        if because is not None:
            raise missing_error(target, because, locate_clap(source, revision, cfg) or Location("hub", source)) from None
        raise model_error(f"audio model {target.display} could not be loaded from {hub.host()} ({short_reason(exc)})", advice(target)) from None
    if local is not None:
        fingerprint = f"{local.resolve().name}@sha256:{weights_fingerprint(local)}"
        model_id = str(local.resolve())
    else:
        # The snapshot folder the cache served is named by its commit (transformers does not always say).
        cached = hub.cached_file(source, "config.json", revision)
        commit = getattr(model.config, "_commit_hash", None) or (cached.parent.name if cached is not None else None)
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
        self.feature_extractor = MelFeatures.of(processor.feature_extractor)  # the same features, vectorised
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
        return self._features(waveform)[0]

    def _features(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`features`, and the whole clip's log-mel when the fusion computed one (a clip
        longer than the input), which the timeline's windows are cut from (:meth:`window_inputs`)."""
        fe = self.feature_extractor
        x = np.asarray(waveform)
        if x.ndim != 1 or x.size == 0:
            raise BadInputError("CLAP takes one non-empty mono waveform per clip")
        if x.dtype not in (np.float32, np.float64):  # the mel converts float32 block by block, exactly
            x = x.astype(np.float64)
        if x.shape[0] > self.max_samples:
            if not self.fusion:
                start = (x.shape[0] - self.max_samples) // 2  # centre crop, not a random one
                return fe._np_extract_fbank_features(x[start : start + self.max_samples], fe.mel_filters_slaney)[None], None
            mel = fe._np_extract_fbank_features(x, fe.mel_filters)
            chunk_frames = self.max_samples // fe.hop_length + 1
            total_frames = mel.shape[0]
            if chunk_frames == total_frames:
                return np.stack([mel, mel, mel, mel], axis=0), mel
            return self._fixed_fusion(mel, total_frames, chunk_frames), mel
        return self._short_features(x), None

    def _short_features(self, x: np.ndarray) -> np.ndarray:
        """A clip of at most one model input: repeat-padded to it, as the extractor pads."""
        fe = self.feature_extractor
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
    def prepare_input(self, item: Any) -> "ClapInput":
        """The part of :meth:`embed` that needs no model, for one clip: its log-mel features. The
        ingest pipeline runs it in its decoding threads, so features are ready when the batch is."""
        rate = getattr(item, "sample_rate", self.sample_rate)
        if rate != self.sample_rate:
            raise BadInputError(f"audio at {rate} Hz given to a {self.sample_rate} Hz model; resample it first")
        features, mel = self._features(getattr(item, "samples", item))
        return ClapInput(features.astype(np.float32), mel)

    def window_inputs(self, samples: np.ndarray, starts: Sequence[int], width: int, whole: Any = None) -> list["ClapInput"]:
        """The model inputs of the windows ``samples[s : s + width]``, equal to :meth:`prepare_input`
        of each window to float32 rounding.

        With fusion, a window exactly one model input long and starting on a mel frame, the whole
        clip's log-mel (``whole``, what :meth:`prepare_input` of the clip returned) already holds
        the window's frames: they are cut from it, and only the frames whose FFT reaches past the
        window's ends (two at each end, which see the window's own reflected padding) are computed
        again. Overlapping windows thus cost no FFT twice (a window's mel costs about 30 ms on 2
        cores, 3.6 s for the 119 windows of a 10-minute recording). Any other window is computed whole.
        """
        fe = self.feature_extractor
        mel = getattr(whole, "mel", None)
        hop, n = int(fe.hop_length), int(fe.fft_window_size)
        cut = (mel is not None and self.fusion and width == self.max_samples and width % hop == 0
               and mel.shape[0] == 1 + len(samples) // hop)
        out = []
        for start in starts:
            window = samples[start : start + width]
            if not cut or start % hop or len(window) != width:
                out.append(self.prepare_input(window))
                continue
            frames = mel[start // hop : start // hop + width // hop + 1].copy()
            head = -(-(n // 2) // hop)  # frames whose FFT starts before the window
            tail = width // hop + 1 - ((width - n // 2) // hop + 1)  # frames whose FFT ends after it
            frames[:head] = fe._np_extract_fbank_features(window[: (head + 1) * hop + n], fe.mel_filters)[:head]
            frames[-tail:] = fe._np_extract_fbank_features(window[width - hop * (tail + n // hop + 2) :], fe.mel_filters)[-tail:]
            out.append(ClapInput(np.stack([frames, frames, frames, frames], axis=0)))
        return out

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """(n, dim) normalised embeddings for mono waveforms at ``sample_rate`` (arrays, AudioClips, or
        what :meth:`prepare_input` returned); the next batch's features are computed in a worker
        thread while this batch runs through the model."""
        items = list(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        chunks = [items[start : start + self.batch_size] for start in range(0, len(items), self.batch_size)]
        done = 0
        for features in map_ahead(self._stacked_features, chunks):
            out[done : done + len(features)] = self.embed_features(features)
            done += len(features)
        return out

    def _stacked_features(self, chunk: Sequence[Any]) -> np.ndarray:
        return np.stack([(item if isinstance(item, ClapInput) else self.prepare_input(item)).features for item in chunk])

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

    def preprocess_config(self) -> dict[str, Any]:
        """The feature extraction and tokenisation this model really applies (recorded in model packs)."""
        fe = self.feature_extractor
        keys = ("sampling_rate", "feature_size", "fft_window_size", "hop_length", "max_length_s", "nb_max_samples",
                "padding", "truncation", "frequency_min", "frequency_max", "top_db")
        config: dict[str, Any] = {key: getattr(fe, key, None) for key in keys}
        config["fusion"] = self.fusion
        config["tokenizer"] = {
            "class": type(self.tokenizer).__name__,
            "probe_ids": [int(i) for i in self.tokenizer(PROBE_TEXT)["input_ids"]],
        }
        return config


class ClapInput:
    """One clip's model input (its log-mel features), made ahead by :meth:`ClapEncoder.prepare_input`;
    for a clip longer than the model input with fusion, also its whole log-mel (``mel``), which
    the timeline cuts its windows from."""

    __slots__ = ("features", "mel")

    def __init__(self, features: np.ndarray, mel: np.ndarray | None = None):
        self.features = features
        self.mel = mel


# -- without loading: where the files are, packing, recognising a folder --------------------------


def locate_clap(source: str, revision: str | None, cfg: ModelCfg | None) -> Location | None:
    """Whether a hub CLAP's config, weights and processor files are in the Hugging Face cache."""
    config = hub.cached_file(source, "config.json", revision)
    if config is None:
        return Location("hub", source)
    if not any(hub.cached_file(source, name, revision) for name in _WEIGHT_FILES):
        return Location("hub", source, "its weights are not in the Hugging Face cache")
    if not any(hub.cached_file(source, name, revision) for name in _PROCESSOR_FILES):
        return Location("hub", source, "its processor files are not in the Hugging Face cache")
    return Location("hub-cache", str(config.parent))


def recognise_clap(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "clap"


def stage_clap(encoder: "ClapEncoder", target: Target, dest: Path) -> dict[str, Path]:
    """The folder of a CLAP pack: the source's configs, safetensors weights, processor and
    tokenizer files and model card (from the directory, the installed pack or the hub snapshot
    that was loaded); weights stored only as ``.bin`` are written again as safetensors."""
    if target.pack is not None:
        source = target.pack.path
    elif target.directory is not None:
        source = target.directory
    else:
        commit = encoder.fingerprint.rsplit("@", 1)[-1]
        config = hub.cached_file(target.source, "config.json", commit) or hub.cached_file(target.source, "config.json", target.revision)
        if config is None:
            raise model_error(f"the Hugging Face cache holds no snapshot of {target.source} to pack")
        source = config.parent
    files = copy_files(source, ("*.json", "*.safetensors", *TOKENIZER_FILES, *LICENCE_PATTERNS))
    files = {k: v for k, v in files.items() if not k.endswith(".bin.index.json")}
    if not any(k.endswith(".safetensors") for k in files):
        written = dest / "weights"
        encoder.model.float().save_pretrained(written)
        files.pop("model.safetensors.index.json", None)
        files.update({p.name: p for p in written.iterdir() if p.is_file()})
    if not any(k in files for k in _PROCESSOR_FILES) or not any(k in files for k in TOKENIZER_FILES):
        written = dest / "processor"
        encoder.processor.save_pretrained(written)
        files.update({p.name: p for p in written.iterdir() if p.is_file() and p.name not in files})
    return files


CLAP = register_family(
    Family(
        name="clap",
        modality="audio",
        load=load_clap,
        onnx="medzero.audio.clap_onnx:load",  # ONNX Runtime and OpenVINO (see that module)
        locate=locate_clap,
        recognise=recognise_clap,
        stage=stage_clap,
        # What --backend auto uses for CLAP on the CPU, best first. Measured (bench/bench_audio.py,
        # full-size CLAP, 2 cores): onnx beat torch everywhere (a one-file classify 1.0 s against
        # 5.5 s, as it imports neither torch nor transformers; 16 clips in a fresh process 3.4 s
        # against 8.2 s), with scores equal to 3e-8. openvino (the extra medzero[openvino]) runs the
        # audio tower twice as fast as onnx (50 against 107 ms a clip; 16 clips 2.6 s), which takes
        # a 10-minute recording under 10 s; since it keeps its compiled model beside the export, it
        # starts as fast (1.0 s for one file). Without it, onnx.
        prefer_on_cpu=("openvino", "onnx"),
    )
)
