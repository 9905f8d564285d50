"""open_clip's two towers on ONNX Runtime: ``backend="onnx"`` (and ``"onnx-int8"``).

The first load of a model builds the torch model once and exports ``encode_image`` and
``encode_text`` (:mod:`medzero.encoders.backends`: checked against torch, cached per fingerprint), with
the model's preprocessing settings (open_clip's ``PreprocessCfg``), a probe image as that
preprocessing turns it into pixels, the logit scale and the embedding size. Later loads rebuild the
same preprocessing with open_clip's ``image_transform_v2`` (checked on the probe: if the pixels
differ, the torch model is loaded instead) and the model's own tokenizer, and read no weights.
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
from ..core.errors import ModelUnavailableError
from ..core.vectors import l2_normalise
from .clip import OpenClipEncoder, json_value, load_open_clip

__all__ = ["OnnxClipEncoder", "load", "export"]

_logger = logging.getLogger(__name__)

FAMILY = "open_clip"
PROBE_TEXTS = ["a chest x ray", "a photo of a skin lesion with irregular borders", "normal", "x"]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _versions() -> dict[str, str]:
    return backends.package_versions("torch", "open_clip_torch", "timm", "transformers")


def _identity(source: str, revision: str | None, cfg: ModelCfg | None) -> tuple[str | None, str | None]:
    """(fingerprint, tokenizer reference) as :func:`~medzero.image.clip.load_open_clip` would give
    them, without loading the model; ``(None, None)`` when only loading can tell."""
    source = str(source).strip()
    remote = source.startswith("hf-hub:") or ("@" in source and not source.startswith("local-dir:"))
    local = None if remote else local_dir(source, modality="image")
    if local is not None:
        path = local.resolve()
        return f"local-dir:{path.name}:{weights_fingerprint(path)}", f"local-dir:{path}"
    arch, _, tag = source.partition("@")
    tag = tag or (cfg.extra.get("pretrained") if cfg is not None else None)
    repo = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else (arch if not tag and "/" in arch else None)
    if repo is None:  # ARCH@TAG: a built-in tag's weights are fixed
        return (f"{arch}@{tag}", arch) if tag and not Path(tag).exists() else (None, None)
    if not (hub.forced_offline() or (revision and _COMMIT.match(revision))):
        return None, None
    cached = hub.cached_file(repo, "open_clip_config.json", revision)
    return (f"hf-hub:{repo}@{cached.parent.name}", f"hf-hub:{repo}") if cached is not None else (None, None)


def load(source: str, *, revision: str | None = None, cfg: ModelCfg | None = None, backend: str = "onnx") -> "OnnxClipEncoder":
    """An open_clip model's ONNX towers, exported on first use (see the module docstring)."""
    runtime = backends.runtime(backend)
    backends.require(runtime, why=f"the {backend} backend")
    fingerprint, tokenizer_ref = _identity(source, revision, cfg)
    directory = backends.export_dir(fingerprint, FAMILY, _versions()) if fingerprint else None
    meta = backends.read_export(directory) if directory is not None else None
    if meta is not None:
        preprocess, tokenizer = _rebuild(meta, directory, tokenizer_ref)
        if preprocess is not None:
            return OnnxClipEncoder(directory, meta, preprocess, tokenizer, fingerprint=fingerprint, backend=backend,
                                   source=(source, revision, cfg))
    elif directory is not None and (earlier := backends.refused(directory, runtime)) is not None:
        raise earlier  # before loading torch: a refused export is not tried again
    encoder = load_open_clip(source, revision=revision, device="cpu", cfg=cfg)
    directory = backends.export_dir(encoder.fingerprint, FAMILY, _versions())
    _logger.info("exporting %s to ONNX in %s (once per model)", encoder.fingerprint, directory)
    meta = backends.exported(directory, lambda tmp: export(encoder, tmp, runtime=runtime), runtime_module=runtime,
                             what=encoder.fingerprint)
    return OnnxClipEncoder(directory, meta, encoder.preprocess, encoder.tokenizer, fingerprint=encoder.fingerprint,
                           backend=backend, source=(source, revision, cfg))


def _rebuild(meta: dict[str, Any], directory: Path, tokenizer_ref: str | None) -> tuple[Any, Any]:
    """The preprocessing and tokenizer of an exported model, without the model; ``(None, None)``
    when the rebuilt preprocessing does not turn the probe image into the recorded pixels."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["preprocess_cfg"].items()}
    try:
        preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        same = np.array_equal(preprocess(_probe_image()).numpy(), np.load(directory / "probe_pixels.npy"))
    except (TypeError, ValueError, OSError) as exc:
        _logger.info("cannot rebuild the preprocessing of %s (%s); loading the model", meta["fingerprint"], exc)
        return None, None
    if not same:
        _logger.info("the rebuilt preprocessing of %s gives other pixels; loading the model", meta["fingerprint"])
        return None, None
    try:
        with hub.offline():  # the export was made, so the tokenizer's files are on this machine
            tokenizer = open_clip.get_tokenizer(tokenizer_ref or meta["tokenizer_ref"])
    except Exception as exc:  # open_clip and transformers raise many types
        raise ModelUnavailableError(f"cannot load the tokenizer of {meta['fingerprint']} ({type(exc).__name__}: {exc})") from None
    return preprocess, tokenizer


class OnnxClipEncoder(backends.Exported, OpenClipEncoder):
    """:class:`~medzero.image.clip.OpenClipEncoder` with ``encode_image`` and ``encode_text`` on
    ONNX Runtime; preprocessing, batching and tokenizing are the torch encoder's own code.
    ``model`` loads the torch model on first access (model packs need it)."""

    def __init__(
        self, directory: Path, meta: dict[str, Any], preprocess: Any, tokenizer: Any, *, fingerprint: str, backend: str = "onnx",
        source: tuple[str, str | None, ModelCfg | None] | None = None, batch_size: int = 16, text_batch_size: int = 64,
    ):
        self.export_dir = Path(directory)
        self.backend = backend
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = str(meta["model_id"])
        self.fingerprint = fingerprint
        self.device = "cpu"
        self.batch_size = int(batch_size)
        self.text_batch_size = int(text_batch_size)
        self.logit_scale = float(meta["logit_scale"])
        self.dim = int(meta["dim"])
        self._meta = meta
        self.torch_source = source
        self._image, self._text = self.open_towers("image")

    def __repr__(self) -> str:
        return f"OnnxClipEncoder({self.model_id!r}, dim={self.dim}, backend={self.backend!r})"

    def encode(self, batch: Any) -> np.ndarray:
        pixels = np.ascontiguousarray(batch.numpy() if hasattr(batch, "numpy") else batch, dtype=np.float32)
        return l2_normalise(self._image(pixels=pixels))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            tokens = self.tokenizer(texts[start : start + self.text_batch_size])
            out.append(l2_normalise(self._text(tokens=np.ascontiguousarray(tokens.numpy(), dtype=np.int64))))
        return np.concatenate(out)

    torch_loader = staticmethod(load_open_clip)  # the torch model when something needs it (backends.Exported)


def _probe_image() -> Any:
    """A deterministic 97×131 RGB picture (gradients and noise), not square, so resizing and cropping both act."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:97, 0:131]
    rgb = np.stack([x * 255 / 130, y * 255 / 96, (x + y) % 256], axis=-1) + rng.normal(0, 20, (97, 131, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def export(encoder: OpenClipEncoder, directory: Path, *, runtime: str = "onnxruntime") -> dict[str, Any]:
    """Write ``image.onnx``, ``text.onnx`` and the probe pixels into ``directory``; each tower is
    checked against torch on another batch size than the one traced."""
    import torch

    model = encoder.model.float().eval()

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens)

    probe = encoder.preprocess(_probe_image())
    np.save(directory / "probe_pixels.npy", probe.numpy())
    generator = torch.Generator().manual_seed(0)
    pixels = torch.cat([probe[None], torch.randn((2, *probe.shape), generator=generator)])
    image_path = directory / "image.onnx"
    backends.export_onnx(ImageTower().eval(), [pixels[:2]], image_path, inputs=["pixels"], dynamic={"pixels": {0: "batch"}})
    with torch.inference_mode():
        expected = l2_normalise(ImageTower()(pixels).numpy())
    image_diff = backends.check_close("the image tower", l2_normalise(backends.Session(image_path, runtime, keep_compiled=False)(pixels=pixels.numpy())), expected)

    tokens = encoder.tokenizer(PROBE_TEXTS)
    text_path = directory / "text.onnx"
    backends.export_onnx(TextTower().eval(), [tokens[:2]], text_path, inputs=["tokens"], dynamic={"tokens": {0: "batch"}})
    with torch.inference_mode():
        expected = l2_normalise(TextTower()(tokens[1:]).numpy())
    got = l2_normalise(backends.Session(text_path, runtime, keep_compiled=False)(tokens=tokens[1:].numpy().astype(np.int64)))
    text_diff = backends.check_close("the text tower", got, expected)

    model_id = encoder.model_id
    tokenizer_ref = f"local-dir:{model_id}" if Path(model_id).is_dir() else model_id.partition("@")[0] if "@" in model_id and not model_id.startswith("hf-hub:") else model_id
    return {
        "family": FAMILY,
        "fingerprint": encoder.fingerprint,
        "model_id": model_id,
        "tokenizer_ref": tokenizer_ref,
        "files": ["image.onnx", "text.onnx", "probe_pixels.npy"],
        "dim": encoder.dim,
        "logit_scale": encoder.logit_scale,
        "preprocess_cfg": json_value(dict(model.visual.preprocess_cfg)),
        "max_abs_diff": {"image": image_diff, "text": text_diff},
        "versions": _versions(),
        "opset": backends.opset(),
    }
