"""The open_clip image encoder and its named models.

References the ``open_clip`` family accepts (``create("...", modality="image")``):

- ``local-dir:/path`` or a plain existing directory: a folder holding ``open_clip_config.json``
  (with ``model_cfg`` and ``preprocess_cfg``) and ``open_clip_model.safetensors`` (``*.bin`` is
  accepted too and loaded with ``weights_only``). A text tower from Hugging Face
  (``text_cfg.hf_model_name``, as in BiomedCLIP) is found as a local directory, else as a
  ``config.json`` inside the folder itself, else in the Hugging Face cache;
  its tokenizer files must sit in the folder;
- ``hf-hub:org/name``: an open_clip repository on the Hugging Face Hub, read from the local hub
  cache when offline;
- ``ARCH@TAG``: an open_clip architecture with a pretrained tag, e.g. ``ViT-B-16@openai``
  (``@`` because ``:`` already marks the ``hf-hub:`` and ``local-dir:`` schemes). Registered
  models give the tag as ``extra["pretrained"]``. An architecture without a tag is refused:
  it would be randomly initialised.

torch and open_clip are imported inside functions, so ``import medzero.image`` stays light.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..core.encoder import ModelCfg, local_dir, register_family, register_model, weights_fingerprint
from ..core.errors import ModelUnavailableError, one_line
from ..core.vectors import l2_normalise

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["OpenClipEncoder", "load_open_clip", "LOCAL_COPY_HINT"]

_logger = logging.getLogger(__name__)

LOCAL_COPY_HINT = (
    "or pass a local copy with --image-model local-dir:/path "
    "(a folder holding open_clip_config.json and open_clip_model.safetensors)"
)

register_model(
    ModelCfg(
        name="biomedclip",
        modality="image",
        family="open_clip",
        hub_id="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        default=True,
        description="BiomedCLIP (ViT-B/16 + PubMedBERT), trained on 15M PubMed Central figure-caption pairs",
    )
)
register_model(
    ModelCfg(
        name="vit-b-16-openai",
        modality="image",
        family="open_clip",
        hub_id="ViT-B-16",
        description="OpenAI CLIP ViT-B/16 (general-domain baseline)",
        extra={"pretrained": "openai"},
    )
)


class OpenClipEncoder:
    """An open_clip model behind medzero's :class:`~medzero.core.encoder.Encoder` protocol.

    ``embed`` runs the model's own preprocessing (``self.preprocess``, as returned by open_clip)
    on each image's 8-bit RGB picture, then ``encode_image`` in batches of ``batch_size`` under
    ``torch.inference_mode()`` (with fp16/bf16 autocast on CUDA), preparing the next batch in a
    worker thread while the current one runs. ``preprocess_batch`` and ``encode`` are the two
    halves, for callers that schedule them themselves.
    """

    modality = "image"

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        *,
        model_id: str,
        fingerprint: str,
        device: str = "cpu",
        dim: int | None = None,
        batch_size: int = 16,
        text_batch_size: int = 64,
    ):
        import torch

        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.device = str(device)
        self.batch_size = int(batch_size)
        self.text_batch_size = int(text_batch_size)
        with torch.no_grad():
            self.logit_scale = float(model.logit_scale.detach().float().exp().flatten()[0].item())
        self.dim = int(dim) if dim else int(self.embed_text(["x"]).shape[1])

    def __repr__(self) -> str:
        return f"OpenClipEncoder({self.model_id!r}, dim={self.dim}, device={self.device!r})"

    # -- images ----------------------------------------------------------------------------------
    def to_pil(self, item: Any) -> Any:
        """The 8-bit RGB PIL image the preprocessing receives for a LoadedImage, PIL image, path or array."""
        from PIL import Image

        from .io import LoadedImage, read_image

        if isinstance(item, LoadedImage):
            return item.to_pil()
        if isinstance(item, Image.Image):
            return item
        return read_image(item).to_pil()

    def preprocess_batch(self, items: Sequence[Any]) -> "torch.Tensor":
        """(n, 3, H, W) float32: the model's own preprocessing of each item, stacked (CPU)."""
        import torch

        return torch.stack([self.preprocess(self.to_pil(item)) for item in items])

    def encode(self, batch: "torch.Tensor") -> np.ndarray:
        """(n, dim) float32 L2-normalised image embeddings for a preprocessed batch."""
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch.to(self.device, non_blocking=True))
        return _normalise(features)

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if len(chunks) == 1:
            return self.encode(self.preprocess_batch(chunks[0]))
        out = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medzero-preprocess") as pool:
            pending = pool.submit(self.preprocess_batch, chunks[0])
            for chunk in chunks[1:]:
                batch = pending.result()
                pending = pool.submit(self.preprocess_batch, chunk)
                out.append(self.encode(batch))
            out.append(self.encode(pending.result()))
        return np.concatenate(out)

    # -- text ------------------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.text_batch_size):
            tokens = self.tokenizer(texts[start : start + self.text_batch_size])
            with torch.inference_mode(), self._autocast():
                out.append(_normalise(self.model.encode_text(tokens.to(self.device))))
        return np.concatenate(out)

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()


def _normalise(features: "torch.Tensor") -> np.ndarray:
    return l2_normalise(features.float().cpu().numpy())


# -- loading -------------------------------------------------------------------------------------


@register_family("open_clip", "image")
def load_open_clip(source: str, *, revision: str | None = None, device: str = "cpu", cfg: ModelCfg | None = None) -> OpenClipEncoder:
    """Load an open_clip model from a ``local-dir:``/directory, ``hf-hub:`` or ``ARCH@TAG`` reference."""
    display = f"{cfg.name!r} ({source})" if cfg is not None else repr(source)
    source = str(source).strip()
    remote = source.startswith("hf-hub:") or ("@" in source and not source.startswith("local-dir:"))
    local = None if remote else local_dir(source, modality="image")
    if local is not None:
        return _load_local_dir(local, device=device, display=display)
    if source.startswith("hf-hub:"):
        return _load_hub(source.removeprefix("hf-hub:"), revision=revision, device=device, display=display)
    arch, _, tag = source.partition("@")
    tag = tag or (cfg.extra.get("pretrained") if cfg is not None else None)
    if not tag and "/" in arch and not Path(arch).exists():
        return _load_hub(arch, revision=revision, device=device, display=display)  # a bare hub id
    return _load_builtin(arch, tag, device=device, display=display)


def _unavailable(display: str, reason: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"image model {display} is not available ({reason}); download it once with network access, {LOCAL_COPY_HINT}"
    )


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except (ImportError, AttributeError):
        return False


def _load_local_dir(path: Path, *, device: str, display: str) -> OpenClipEncoder:
    path = path.resolve()
    if not path.is_dir():
        raise ModelUnavailableError(f"image model folder {path} does not exist; {LOCAL_COPY_HINT.removeprefix('or ')}")
    config_path = path / "open_clip_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
    except FileNotFoundError:
        raise ModelUnavailableError(f"{path} has no open_clip_config.json; an open_clip folder needs it and open_clip_model.safetensors") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{config_path} is not a valid open_clip config ({type(exc).__name__}: {exc}); it needs a 'model_cfg' entry") from None
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in path.glob(pattern)]
    if not weights:
        raise ModelUnavailableError(f"{path} holds no weights; put open_clip_model.safetensors next to open_clip_config.json")
    overrides: dict[str, Any] = {}
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    hf_name = text_cfg.get("hf_model_name")
    if hf_name and not Path(hf_name).expanduser().is_dir():
        if (path / "config.json").is_file():
            text_cfg.update(hf_model_name=str(path), hf_model_pretrained=False)
            overrides["text_cfg"] = text_cfg
        elif not _hub_file_cached(hf_name, "config.json") and _offline():
            raise _unavailable(display, f"its text tower config {hf_name} is not cached; put that config.json in {path}")
    import open_clip

    ref = f"local-dir:{path}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(ref, device=device, **overrides)
        tokenizer = open_clip.get_tokenizer(ref)
    except Exception as exc:  # open_clip, timm, transformers and safetensors raise many types
        raise ModelUnavailableError(f"cannot load image model from {path} ({type(exc).__name__}: {one_line(exc)})") from None
    fingerprint = f"local-dir:{path.name}:{weights_fingerprint(path)}"
    return OpenClipEncoder(
        model, preprocess, tokenizer, model_id=str(path), fingerprint=fingerprint, device=device, dim=model_cfg.get("embed_dim")
    )


def _load_hub(repo: str, *, revision: str | None, device: str, display: str) -> OpenClipEncoder:
    cached = _hub_file_cached(repo, "open_clip_config.json", revision)
    if not cached and _offline():
        raise _unavailable(display, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    import open_clip

    ref = f"hf-hub:{repo}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(ref, device=device)
        tokenizer = open_clip.get_tokenizer(ref)
    except Exception as exc:
        raise _unavailable(display, f"{type(exc).__name__}: {one_line(exc)}") from None
    cached = cached or _hub_file_cached(repo, "open_clip_config.json", revision)
    commit = Path(cached).parent.name if cached else (revision or "main")
    if revision and commit != revision:
        _logger.info("%s: open_clip loads the cached snapshot %s (asked for revision %s)", repo, commit, revision)
    dim = (open_clip.get_model_config(ref) or {}).get("embed_dim")
    return OpenClipEncoder(model, preprocess, tokenizer, model_id=ref, fingerprint=f"{ref}@{commit}", device=device, dim=dim)


def _load_builtin(arch: str, tag: str | None, *, device: str, display: str) -> OpenClipEncoder:
    import open_clip

    if arch not in open_clip.list_models():
        raise ModelUnavailableError(
            f"unknown image model {display}; use a registered name, local-dir:/path, hf-hub:org/name or ARCH@TAG (open_clip.list_models())"
        )
    if not tag:
        raise ModelUnavailableError(
            f"image model {display} names an architecture without weights; add a pretrained tag, e.g. {arch}@openai, or use local-dir:/path"
        )
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pretrained_cfg and not Path(tag).is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ModelUnavailableError(f"{arch} has no pretrained tag {tag!r}; known tags: {tags}")
    if pretrained_cfg and _offline():
        hub = pretrained_cfg.get("hf_hub", "")
        repo_id, filename = os.path.split(hub)  # 'org/name/' or 'org/name/file.bin'
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if not hub or not any(_hub_file_cached(repo_id, n) for n in names):
            raise _unavailable(display, "its weights are not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:
        raise _unavailable(display, f"{type(exc).__name__}: {one_line(exc)}") from None
    dim = (open_clip.get_model_config(arch) or {}).get("embed_dim")
    fingerprint = f"{arch}@{tag}" if pretrained_cfg else f"{arch}@{Path(tag).name}:{weights_fingerprint(Path(tag).parent)}"
    return OpenClipEncoder(model, preprocess, tokenizer, model_id=f"{arch}@{tag}", fingerprint=fingerprint, device=device, dim=dim)


def _hub_file_cached(repo: str, filename: str, revision: str | None = None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # an invalid repo id, or no huggingface_hub
        return None
    return found if isinstance(found, str) else None
