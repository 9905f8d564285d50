"""The open_clip image encoder and its named models.

References the ``open_clip`` family accepts (``create("...", modality="image")``):

- ``local-dir:/path`` or a plain existing directory: a folder holding ``open_clip_config.json``
  (with ``model_cfg`` and ``preprocess_cfg``) and ``open_clip_model.safetensors`` (``*.bin`` is
  accepted too and loaded with ``weights_only``). A text tower from Hugging Face
  (``text_cfg.hf_model_name``, as in BiomedCLIP) is found as a ``config.json`` inside the folder
  itself (so a folder that carries one, like a model pack's, needs nothing else), else as a local
  directory, else in the Hugging Face cache; its tokenizer files must sit in the folder;
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

from ..encoders import hub
from ..encoders.factory import Location, Target, advice, local_dir, missing_error, short_reason, weights_fingerprint
from ..encoders.registry import Family, ModelCfg, model_error, register_family, register_model
from ..core.errors import ModelUnavailableError
from ..encoders.packs import LICENCE_PATTERNS, TOKENIZER_FILES, copy_files
from ..core.vectors import l2_normalise

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["OpenClipEncoder", "ClipInput", "load_open_clip", "json_value", "OPEN_CLIP", "LOCAL_COPY_HINT"]

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
        extra={"license": "mit"},
    )
)
register_model(
    ModelCfg(
        name="vit-b-16-openai",
        modality="image",
        family="open_clip",
        hub_id="ViT-B-16",
        description="OpenAI CLIP ViT-B/16 (general-domain baseline)",
        # hf_hub: where open_clip keeps the tag's weights, so finding them needs no open_clip import.
        extra={"pretrained": "openai", "license": "mit", "hf_hub": "timm/vit_base_patch16_clip_224.openai/"},
    )
)

#: A text whose token ids a pack records, so ``verify`` notices another tokenizer.
PROBE_TEXT = "a chest x ray showing a pleural effusion"
_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenClipEncoder:
    """An open_clip model behind medzero's :class:`~medzero.core.contracts.Encoder` protocol.

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

    def preprocess_config(self) -> dict[str, Any]:
        """The preprocessing this model really applies, read from its transform (image size, resize,
        interpolation, mean, std, every step) and its tokenizer (recorded in model packs)."""
        steps = []
        summary: dict[str, Any] = {}
        for step in getattr(self.preprocess, "transforms", [self.preprocess]):
            name = getattr(step, "__name__", None) or type(step).__name__
            entry: dict[str, Any] = {"op": name}
            for attr in ("size", "max_size", "interpolation", "mean", "std", "mode", "fill"):
                if hasattr(step, attr) and not callable(getattr(step, attr)):
                    entry[attr] = json_value(getattr(step, attr))
            steps.append(entry)
            if name == "Normalize":
                summary.update(mean=entry.get("mean"), std=entry.get("std"))
            elif "interpolation" in entry:
                summary.setdefault("interpolation", entry["interpolation"])
                summary.setdefault("resize", entry.get("size"))
            elif name == "CenterCrop":
                summary["image_size"] = entry.get("size")
        tokens = self.tokenizer([PROBE_TEXT])
        summary["steps"] = steps
        summary["tokenizer"] = {
            "class": type(self.tokenizer).__name__,
            "context_length": int(tokens.shape[-1]),
            "probe_ids": [int(i) for i in tokens[0].tolist()],
        }
        return summary

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

    def prepare_input(self, item: Any) -> "ClipInput":
        """The model's preprocessing of one image, ahead of :meth:`embed`: the ingest pipeline runs
        it in its decoding threads, so pixels are ready when the batch is."""
        return ClipInput(self.preprocess(self.to_pil(item)))

    def preprocess_batch(self, items: Sequence[Any]) -> "torch.Tensor":
        """(n, 3, H, W) float32: the model's own preprocessing of each item, stacked (CPU)."""
        import torch

        return torch.stack([item.pixels if isinstance(item, ClipInput) else self.preprocess(self.to_pil(item)) for item in items])

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


def json_value(value: Any) -> Any:
    """A transform attribute as JSON: enums by value, tuples as lists, tensors as lists."""
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    return value


def load_open_clip(source: str, *, revision: str | None = None, device: str = "cpu", cfg: ModelCfg | None = None) -> OpenClipEncoder:
    """Load an open_clip model from a ``local-dir:``/directory, ``hf-hub:`` or ``ARCH@TAG`` reference."""
    display = f"{cfg.name!r} ({source})" if cfg is not None else repr(source)
    source = str(source).strip()
    remote = source.startswith("hf-hub:") or ("@" in source and not source.startswith("local-dir:"))
    local = None if remote else local_dir(source, modality="image")
    if local is not None:
        return _load_local_dir(local, device=device, display=display)
    target = Target(source, "image", "open_clip", source, revision, cfg)
    if source.startswith("hf-hub:"):
        return _load_hub(source.removeprefix("hf-hub:"), revision=revision, device=device, target=target)
    arch, _, tag = source.partition("@")
    tag = tag or (cfg.extra.get("pretrained") if cfg is not None else None)
    if not tag and "/" in arch and not Path(arch).exists():
        return _load_hub(arch, revision=revision, device=device, target=target)  # a bare hub id
    return _load_builtin(arch, tag, device=device, display=display, target=target)


def _unavailable(target: Target, reason: str) -> ModelUnavailableError:
    return model_error(f"image model {target.display} could not be loaded from {hub.host()} ({reason})", advice(target))


def _load_local_dir(path: Path, *, device: str, display: str) -> OpenClipEncoder:
    path = path.resolve()
    if not path.is_dir():
        raise model_error(f"image model folder {path} does not exist", LOCAL_COPY_HINT.removeprefix("or "))
    config_path = path / "open_clip_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
    except FileNotFoundError:
        raise model_error(f"{path} has no open_clip_config.json", "an open_clip folder needs it and open_clip_model.safetensors") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise model_error(f"{config_path} is not a valid open_clip config ({type(exc).__name__}: {short_reason(exc)})", "it needs a 'model_cfg' entry") from None
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.pth") for p in path.glob(pattern)]
    if not weights:
        raise model_error(f"{path} holds no weights", "put open_clip_model.safetensors next to open_clip_config.json")
    overrides: dict[str, Any] = {}
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    hf_name = text_cfg.get("hf_model_name")
    offline_because: str | None = None
    if hf_name and (path / "config.json").is_file():
        text_cfg.update(hf_model_name=str(path), hf_model_pretrained=False)  # the folder carries its text tower
        overrides["text_cfg"] = text_cfg
    elif hf_name and not Path(hf_name).expanduser().is_dir():
        offline_because = hub.offline_reason()
        if offline_because is not None and hub.cached_file(hf_name, "config.json") is None:
            raise model_error(
                f"image model {display} is not available (its text tower config {hf_name} is not cached, and {offline_because})",
                f"put that config.json in {path}",
            )
    import contextlib

    import open_clip

    ref = f"local-dir:{path}"
    try:
        with hub.offline() if offline_because is not None else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(ref, device=device, **overrides)
            tokenizer = open_clip.get_tokenizer(ref)
    except Exception as exc:  # open_clip, timm, transformers and safetensors raise many types
        raise model_error(f"cannot load image model from {path} ({type(exc).__name__}: {short_reason(exc)})") from None
    fingerprint = f"local-dir:{path.name}:{weights_fingerprint(path)}"
    return OpenClipEncoder(
        model, preprocess, tokenizer, model_id=str(path), fingerprint=fingerprint, device=device, dim=model_cfg.get("embed_dim")
    )


def _load_hub(repo: str, *, revision: str | None, device: str, target: Target) -> OpenClipEncoder:
    location = locate_open_clip(f"hf-hub:{repo}", revision, target.cfg)
    because = hub.offline_reason() if location is None or not location.local else None
    if because is not None:
        raise missing_error(target, because, location)
    import open_clip

    ref = f"hf-hub:{repo}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(ref, device=device)
        tokenizer = open_clip.get_tokenizer(ref)
    except Exception as exc:
        raise _unavailable(target, f"{type(exc).__name__}: {short_reason(exc)}") from None
    cached = hub.cached_file(repo, "open_clip_config.json", revision)
    commit = cached.parent.name if cached else (revision or "main")
    if revision and commit != revision:
        _logger.info("%s: open_clip loads the cached snapshot %s (asked for revision %s)", repo, commit, revision)
    dim = (open_clip.get_model_config(ref) or {}).get("embed_dim")
    return OpenClipEncoder(model, preprocess, tokenizer, model_id=ref, fingerprint=f"{ref}@{commit}", device=device, dim=dim)


def _load_builtin(arch: str, tag: str | None, *, device: str, display: str, target: Target) -> OpenClipEncoder:
    import open_clip

    if arch not in open_clip.list_models():
        raise model_error(
            f"unknown image model {display}",
            "use a registered name, local-dir:/path, hf-hub:org/name or ARCH@TAG (open_clip.list_models())",
        )
    if not tag:
        raise model_error(
            f"image model {display} names an architecture without weights",
            f"add a pretrained tag, e.g. {arch}@openai, or use local-dir:/path",
        )
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pretrained_cfg and not Path(tag).is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise model_error(f"{arch} has no pretrained tag {tag!r}", f"known tags: {tags}")
    if pretrained_cfg:
        location = _locate_builtin(arch, tag)
        because = hub.offline_reason() if location is None or not location.local else None
        if because is not None:
            raise missing_error(target, because, location)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, device=device)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:
        raise _unavailable(target, f"{type(exc).__name__}: {short_reason(exc)}") from None
    dim = (open_clip.get_model_config(arch) or {}).get("embed_dim")
    fingerprint = f"{arch}@{tag}" if pretrained_cfg else f"{arch}@{Path(tag).name}:{weights_fingerprint(Path(tag).parent)}"
    return OpenClipEncoder(model, preprocess, tokenizer, model_id=f"{arch}@{tag}", fingerprint=fingerprint, device=device, dim=dim)


class ClipInput:
    """One image's preprocessed pixels (3, H, W), made ahead by :meth:`OpenClipEncoder.prepare_input`."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: Any):
        self.pixels = pixels


# -- without loading: where the files are, packing, recognising a folder --------------------------


def locate_open_clip(source: str, revision: str | None, cfg: ModelCfg | None) -> Location | None:
    """Whether an ``hf-hub:`` (or bare hub id) open_clip model, its weights and its Hugging Face
    text tower are in the local cache; ``ARCH@TAG`` asks open_clip where the tag's weights live.
    ``None`` when the reference names nothing that can be looked up (the loader says why)."""
    source = str(source).strip()
    arch, _, tag = source.partition("@")
    tag = tag or (cfg.extra.get("pretrained") if cfg is not None else None)
    if not source.startswith("hf-hub:") and not ("/" in arch and not tag):
        if cfg is not None and cfg.extra.get("hf_hub") and tag == cfg.extra.get("pretrained"):
            return _locate_weights(str(cfg.extra["hf_hub"]), f"{arch}@{tag}")
        return _locate_builtin(arch, tag) if tag else None
    repo = source.removeprefix("hf-hub:")
    config = hub.cached_file(repo, "open_clip_config.json", revision)
    if config is None:
        return Location("hub", repo)
    if not any(hub.cached_file(repo, name, revision) for name in _WEIGHTS):
        return Location("hub", repo, "its weights are not in the Hugging Face cache")
    try:
        text_cfg = json.loads(config.read_text(encoding="utf-8"))["model_cfg"].get("text_cfg") or {}
    except (OSError, ValueError, KeyError, AttributeError):
        text_cfg = {}
    for key, filename in (("hf_model_name", "config.json"), ("hf_tokenizer_name", "tokenizer_config.json")):
        name = text_cfg.get(key)
        if name and not Path(name).expanduser().is_dir() and hub.cached_file(name, filename) is None:
            return Location("hub", repo, f"its text tower {name} is not in the Hugging Face cache")
    return Location("hub-cache", str(config.parent))


def _locate_builtin(arch: str, tag: str | None) -> Location | None:
    import open_clip

    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else None
    if not pretrained_cfg:
        return None
    return _locate_weights(pretrained_cfg.get("hf_hub", ""), f"{arch}@{tag}")


def _locate_weights(hub_path: str, display: str) -> Location:
    """open_clip's ``hf_hub`` entry of a pretrained tag ('org/name/' or 'org/name/file.bin') in the cache."""
    repo_id, filename = (hub_path.rstrip("/"), "") if hub_path.endswith("/") else os.path.split(hub_path)
    if not repo_id:
        return Location("hub", display, "its weights are not on the Hugging Face hub")
    names = [filename] if filename else list(_WEIGHTS)
    for name in names:
        found = hub.cached_file(repo_id, name)
        if found is not None:
            return Location("hub-cache", str(found.parent))
    return Location("hub", repo_id, "its weights are not in the Hugging Face cache")


def recognise_open_clip(directory: Path) -> bool:
    return (directory / "open_clip_config.json").is_file()


def stage_open_clip(encoder: OpenClipEncoder, target: Target, dest: Path) -> dict[str, Path]:
    """The folder of an open_clip pack, loadable as ``local-dir:``: ``open_clip_config.json`` (the
    source's, or one written from open_clip's built-in config and the preprocessing in use),
    ``open_clip_model.safetensors`` (copied, or written from the loaded weights when the source has
    only ``.bin``/``.pth``), a Hugging Face text tower's ``config.json`` and tokenizer files in the
    folder itself, and the source's model card or licence."""
    from safetensors.torch import save_file

    if target.pack is not None:
        source: Path | None = target.pack.path
    elif target.directory is not None:
        source = target.directory
    elif target.source.startswith("hf-hub:") or ("/" in target.source and "@" not in target.source):
        repo = target.source.removeprefix("hf-hub:")
        commit = encoder.fingerprint.rsplit("@", 1)[-1]
        config = hub.cached_file(repo, "open_clip_config.json", commit) or hub.cached_file(repo, "open_clip_config.json", target.revision)
        if config is None:
            raise model_error(f"the Hugging Face cache holds no snapshot of {repo} to pack")
        source = config.parent
    else:
        source = None  # ARCH@TAG: open_clip's built-in config
    files = copy_files(source, ("open_clip_config.json", *LICENCE_PATTERNS)) if source is not None else {}
    if "open_clip_config.json" not in files:
        import open_clip

        arch = encoder.model_id.partition("@")[0]
        config = {"model_cfg": open_clip.get_model_config(arch), "preprocess_cfg": json_value(dict(encoder.model.visual.preprocess_cfg))}
        (dest / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        files["open_clip_config.json"] = dest / "open_clip_config.json"
    if source is not None and (source / "open_clip_model.safetensors").is_file():
        files["open_clip_model.safetensors"] = source / "open_clip_model.safetensors"
    else:
        state = {k: v.detach().float().cpu().contiguous().clone() for k, v in encoder.model.state_dict().items()}
        save_file(state, str(dest / "open_clip_model.safetensors"))
        files["open_clip_model.safetensors"] = dest / "open_clip_model.safetensors"
    model_cfg = json.loads(files["open_clip_config.json"].read_text(encoding="utf-8"))["model_cfg"]
    if (model_cfg.get("text_cfg") or {}).get("hf_model_name"):
        text = dest / "text"
        text.mkdir()
        if source is not None and (source / "config.json").is_file():
            files["config.json"] = source / "config.json"
        else:
            encoder.model.text.transformer.config.to_json_file(str(text / "config.json"))
            files["config.json"] = text / "config.json"
        in_source = copy_files(source, TOKENIZER_FILES) if source is not None else {}
        if in_source:
            files.update(in_source)
        else:
            encoder.tokenizer.tokenizer.save_pretrained(str(text))
            files.update({p.name: p for p in text.iterdir() if p.is_file() and p.name != "config.json"})
    return files


OPEN_CLIP = register_family(
    Family(
        name="open_clip",
        modality="image",
        load=load_open_clip,
        onnx="medzero.image.clip_onnx:load",  # ONNX Runtime and OpenVINO (see that module)
        locate=locate_open_clip,
        recognise=recognise_open_clip,
        stage=stage_open_clip,
        # --backend auto keeps torch for open_clip: measured (bench/bench_image.py, full-size
        # ViT-B-16, 2 cores) onnx ran 4.95 images/s against torch's 4.99, its image tower slower
        # alone (138 against 122 ms), and it still imports torch for open_clip's preprocessing and
        # tokenizer.
        prefer_on_cpu=None,
    )
)
