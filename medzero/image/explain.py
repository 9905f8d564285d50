"""Per-finding heatmaps for open_clip image results: which region of the image drove each label's score.

Two methods, both scoring a label the way its task does (:meth:`medzero.tasks.scoring.TaskHead.scores`:
a multiclass softmax against the task's other labels, or a multilabel softmax against the label's
negative prompts), so a map says what moved *that score*, not the raw image-text similarity:

- ``occlusion``: the model input is cut into ``grid``×``grid`` cells; each cell in turn is set to
  the model's mean pixel (0 after the model's normalisation), the occluded images go through the
  image tower in batches, and a cell's value is how far each label's score dropped. Needs only
  ``encoder.encode``, so it runs on every backend (torch, ONNX Runtime, OpenVINO); one pass gives
  every label's map. Cost: ``grid²`` + 1 image-tower passes per image.
- ``gradient``: gradient-weighted patch tokens (Grad-CAM-like, on a ViT): the patch tokens entering
  the last transformer block, each patch's deviation from the average patch weighted by the
  gradient of the label's task score (``relu(Σ_d ∂score/∂t_d · (t_d − t̄_d))``: to first order, how
  far the score would fall were the patch replaced by the average one, the token-space twin of
  occlusion), on the ViT's own patch grid (14×14 for ViT-B/16). The
  score is the image-text similarity through the task's softmax, so this is the similarity's
  gradient on each patch. Needs the torch model (``open_clip`` ViT or timm ViT tower): no ONNX
  export has gradients. Cost: one forward and backward pass per label.

Default (``method="auto"``): **occlusion**, chosen by measurement. ``bench/bench_explain.py --n 6``
(full-size random-weight ViT-B/16, torch, 2-core CPU, 4 labels; hide the 5 of 49 cells a map ranks
highest against 16 random sets of 5): occlusion's top cells lowered the label's score by 0.0088
more than random cells (z 3.9; 24 of 24 image-label pairs), the gradient map's by 0.0015 (z 0.5;
10 of 24); occlusion took 6.8 s an image, the gradient 1.9 s (its cost grows with the labels, a
backward pass each; occlusion's does not). The test favours occlusion somewhat (it hides the very
cells occlusion scored one by one), but occlusion also runs on every backend, including ONNX
Runtime, which has no gradients. The gradient method stays available (``method="gradient"``) on
the torch backend, where it is the faster choice for a few labels.

Each :class:`Explanation` carries the grid, the method, and ``region``: the rectangle of the
original image, in its own pixel frame, that the model input covers after the preprocessing's
resize and centre crop (or letterbox), so an overlay sits on the pixels the model saw.
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..core.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from ..tasks.scoring import TaskHead

__all__ = [
    "Explanation", "explain_image", "input_region", "overlay_png", "overlay_pngs", "overlay_image", "METHODS",
    "DEFAULT_METHOD",
]

_logger = logging.getLogger(__name__)

METHODS = ("occlusion", "gradient")
#: What ``method="auto"`` runs (see the module docstring for the measurement behind it).
DEFAULT_METHOD = "occlusion"
#: Occlusion cells per side: 7×7 = 49 passes of the image tower (32-pixel cells on a 224 input).
DEFAULT_GRID = 7
MAX_GRID = 32


@dataclass(frozen=True)
class Explanation:
    """One label's heatmap: ``grid`` rows × columns of floats over ``region`` of the original image.

    ``grid`` values: occlusion, the label's score drop when the cell is hidden (negative: hiding it
    raised the score); gradient, a non-negative relevance. Larger means more evidence for the label.
    ``region`` is ``[x0, y0, x1, y1]`` in the original image's pixels (it may reach past the image's
    edges where the preprocessing pads); row 0 of the grid is its top.
    """

    label: str
    method: str
    grid: np.ndarray
    region: tuple[float, float, float, float]
    score: float
    image_size: tuple[int, int]  # (width, height) of the original image
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "grid": [[round(float(v), 6) for v in row] for row in np.asarray(self.grid)],
            "region": [float(v) for v in self.region],
            "image_size": [int(v) for v in self.image_size],
            "score": float(self.score),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, label: str, data: Mapping[str, Any]) -> "Explanation":
        return cls(label, str(data["method"]), np.asarray(data["grid"], dtype=np.float64), tuple(data["region"]),
                   float(data["score"]), tuple(data["image_size"]))


# -- geometry --------------------------------------------------------------------------------------


def input_region(preprocess: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """``[x0, y0, x1, y1]``: the rectangle of a ``width``×``height`` picture that ``preprocess``'s
    geometric steps (torchvision ``Resize``, open_clip ``ResizeKeepRatio``, ``CenterCrop``,
    ``CenterCropOrPad``) turn into the model input. Steps it does not know are taken as not moving
    pixels (a warning is logged once per kind)."""
    w, h = float(width), float(height)
    sx = sy = 1.0  # current = decoded * s + t
    tx = ty = 0.0
    for step in getattr(preprocess, "transforms", [preprocess]):
        kind = type(step).__name__
        if kind == "Resize":
            nw, nh = _resized(step.size, w, h, getattr(step, "max_size", None))
        elif kind == "ResizeKeepRatio":
            target_h, target_w = step.size
            ratio_h, ratio_w = h / target_h, w / target_w
            ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
            nh, nw = float(round(h / ratio)), float(round(w / ratio))
        elif kind in ("CenterCrop", "CenterCropOrPad"):
            size = step.size
            ch, cw = (size, size) if isinstance(size, int) else (size[0], size[-1])
            pad_l = (cw - w) // 2 if cw > w else 0
            pad_t = (ch - h) // 2 if ch > h else 0
            w2, h2 = max(w, cw), max(h, ch)
            left, top = int(round((w2 - cw) / 2.0)), int(round((h2 - ch) / 2.0))
            tx, ty, w, h = tx + pad_l - left, ty + pad_t - top, float(cw), float(ch)
            continue
        else:
            if kind not in ("Compose", "MaybeConvertMode", "MaybeToTensor", "ToTensor", "Normalize", "Lambda", "function"):
                _logger.warning("heatmap geometry: preprocessing step %s is taken as not moving pixels", kind)
            continue
        fx, fy = nw / w, nh / h
        sx, sy, tx, ty, w, h = sx * fx, sy * fy, tx * fx, ty * fy, nw, nh
    return ((0 - tx) / sx, (0 - ty) / sy, (w - tx) / sx, (h - ty) / sy)


def _resized(size: Any, w: float, h: float, max_size: Any) -> tuple[float, float]:
    """torchvision's ``Resize`` output size (``_compute_resized_output_size``)."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return float(size[1]), float(size[0])
    n = size[0] if isinstance(size, (list, tuple)) else size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = n, int(n * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (float(new_short), float(new_long)) if w <= h else (float(new_long), float(new_short))


# -- the two methods ------------------------------------------------------------------------------


def explain_image(
    encoder: Any,
    head: "TaskHead",
    image: Any,
    *,
    pixels: Any = None,
    original_size: tuple[int, int] | None = None,
    method: str = "auto",
    grid: int | None = None,
    batch_size: int | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Explanation]:
    """A heatmap per label of ``head``'s task for one image.

    Args:
        encoder: the image encoder (:class:`~medzero.image.clip.OpenClipEncoder` or its ONNX twin).
        head: the task head that scores the image (its labels, prompts and scoring mode).
        image: the picture the preprocessing receives (PIL image, LoadedImage, path or array).
        pixels: its preprocessed model input (3, S, S), when already made (``Prepared.input``).
        original_size: (width, height) of the image as stored, when it was decoded smaller.
        method: ``auto`` (:data:`DEFAULT_METHOD`), ``occlusion`` or ``gradient``.
        grid: occlusion cells per side (default 7, at most 32 and at most the input's side).
        batch_size: occluded images (or label copies) per forward pass (default the encoder's).
        labels: only these labels (default all).
    """
    import torch

    method = DEFAULT_METHOD if method in (None, "auto") else method
    if method not in METHODS:
        raise BadInputError(f"unknown explanation method {method!r} (use one of: auto, {', '.join(METHODS)})")
    pil = encoder.to_pil(image)
    if pixels is None:
        pixels = encoder.preprocess(pil)
    pixels = getattr(pixels, "pixels", pixels)
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32) if not isinstance(pixels, torch.Tensor) else pixels).float()
    if x.ndim != 3:
        raise BadInputError("explanations need one image's pixels (3, H, W)")
    decoded_w, decoded_h = pil.size
    width, height = original_size or (decoded_w, decoded_h)
    x0, y0, x1, y1 = input_region(encoder.preprocess, decoded_w, decoded_h)
    fx, fy = width / decoded_w, height / decoded_h
    region = (x0 * fx, y0 * fy, x1 * fx, y1 * fy)
    ids = head.task.label_ids()
    wanted = [i for i, label in enumerate(ids) if labels is None or label in labels]
    batch = int(batch_size or getattr(encoder, "batch_size", 16) or 16)
    if method == "occlusion":
        base, maps, info = _occlusion(encoder, head, x, grid or DEFAULT_GRID, batch)
    else:
        base, maps, info = _gradient(encoder, head, x, wanted, batch)
    return {
        ids[i]: Explanation(ids[i], method, maps[i], region, float(base[i]), (int(width), int(height)), dict(info))
        for i in wanted
    }


def _occlusion(encoder: Any, head: "TaskHead", x: Any, grid: int, batch: int) -> tuple[np.ndarray, dict[int, np.ndarray], dict]:
    """Each cell set to the mean pixel (0 after normalisation); the drop of every label's task score."""
    _, side_h, side_w = x.shape
    grid = max(1, min(int(grid), MAX_GRID, side_h, side_w))
    rows = np.linspace(0, side_h, grid + 1).round().astype(int)
    cols = np.linspace(0, side_w, grid + 1).round().astype(int)
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    base = head.scores(encoder.encode(x[None]))[0]
    drops = np.zeros((len(base), grid, grid))
    for start in range(0, len(cells), batch):
        chunk = cells[start : start + batch]
        masked = x[None].repeat(len(chunk), 1, 1, 1)
        for k, (r, c) in enumerate(chunk):
            masked[k, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = 0.0
        scores = head.scores(encoder.encode(masked))
        for k, (r, c) in enumerate(chunk):
            drops[:, r, c] = base - scores[k]
    return base, {i: drops[i] for i in range(len(base))}, {"passes": len(cells) + 1}


def _vit_blocks(visual: Any) -> tuple[Any, tuple[int, int]]:
    """The transformer blocks of an open_clip or timm ViT image tower, and its patch grid."""
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return visual.transformer.resblocks, tuple(int(v) for v in visual.grid_size)
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        return trunk.blocks, tuple(int(v) for v in trunk.patch_embed.grid_size)
    raise BadInputError("the gradient explanation needs a ViT image tower (open_clip or timm); use method=occlusion")


def _gradient(encoder: Any, head: "TaskHead", x: Any, wanted: list[int], batch: int) -> tuple[np.ndarray, dict[int, np.ndarray], dict]:
    """Gradient × (token − mean token) on the patch tokens entering the last block, per label, on the ViT's patch grid."""
    import torch

    model = getattr(encoder, "torch_model", None) or getattr(encoder, "model", None)
    if model is None or not isinstance(model, torch.nn.Module) or getattr(encoder, "export_dir", None) is not None:
        raise BadInputError("the gradient explanation needs the torch backend (an ONNX export has no gradients); "
                            "use method=occlusion")
    blocks, (gh, gw) = _vit_blocks(model.visual)
    captured: list[Any] = []

    def hook(_module: Any, args: tuple) -> None:
        tokens = args[0]
        tokens.retain_grad()
        captured.append(tokens)

    positives = torch.as_tensor(head.positives, dtype=torch.float32)
    negatives = None if head.negatives is None else torch.as_tensor(head.negatives, dtype=torch.float32)
    scale = float(head.logit_scale)
    base = head.scores(encoder.encode(x[None]))[0]
    maps: dict[int, np.ndarray] = {}
    device = next(model.parameters()).device
    handle = blocks[-1].register_forward_pre_hook(hook)
    try:
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            captured.clear()
            inputs = x[None].repeat(len(chunk), 1, 1, 1).to(device).requires_grad_(True)
            with torch.enable_grad():
                emb = model.encode_image(inputs).float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                pos = scale * emb @ positives.to(device).T
                if negatives is None:
                    probs = pos.softmax(dim=-1)
                else:
                    neg = scale * emb @ negatives.to(device).T
                    probs = torch.stack([pos, neg], dim=-1).softmax(dim=-1)[..., 0]
                picked = probs[torch.arange(len(chunk)), torch.as_tensor(chunk)]
                model.zero_grad(set_to_none=True)
                picked.sum().backward()
            tokens = captured[-1]
            if tokens.shape[0] != len(chunk):  # a sequence-first transformer: (N, B, D)
                tokens_t, grads = tokens.detach().transpose(0, 1), tokens.grad.transpose(0, 1)
            else:
                tokens_t, grads = tokens.detach(), tokens.grad
            patches, grads = tokens_t[:, -gh * gw :], grads[:, -gh * gw :]
            # A patch against the average patch, to first order: where the tokens' common part is
            # large (random or untrained towers), plain gradient × token has one sign everywhere.
            cam = torch.relu((grads * (patches - patches.mean(dim=1, keepdim=True))).sum(dim=-1))
            for k, i in enumerate(chunk):
                maps[i] = cam[k].reshape(gh, gw).double().cpu().numpy()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return base, maps, {"passes": math.ceil(len(wanted) / batch)}


# -- pictures -------------------------------------------------------------------------------------

#: A perceptual colour map (anchors of matplotlib's "inferno"), interpolated linearly.
_INFERNO = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
], dtype=np.float64)


def colourise(values: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 colours for values in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(_INFERNO) - 1)
    low = np.floor(v).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (v - low)[..., None]
    return (_INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac).round().astype(np.uint8)


def normalised(grid: np.ndarray) -> np.ndarray:
    """The positive part of a map scaled to [0, 1] (all zeros when nothing raised the score)."""
    g = np.clip(np.asarray(grid, dtype=np.float64), 0, None)
    top = g.max() if g.size else 0.0
    return g / top if top > 0 else np.zeros_like(g)


def overlay_image(image: Any, explanation: Explanation, *, title: str | None = None, alpha: float = 0.45,
                  max_side: int = 1024) -> Any:
    """An RGB PIL image: the picture in grey, the heatmap in colour over ``explanation.region``, and
    a caption band with ``title`` (label and score) and the method. The picture is shrunk to at most
    ``max_side`` pixels on its longer side (the heatmap is placed in the same frame)."""
    from PIL import Image, ImageDraw, ImageFont

    pil = image if isinstance(image, Image.Image) else _to_pil(image)
    width, height = explanation.image_size
    base = pil.convert("L").convert("RGB")
    shrink = min(1.0, max_side / max(base.size))
    size = (max(1, round(base.size[0] * shrink)), max(1, round(base.size[1] * shrink)))
    base = base.resize(size, Image.BILINEAR)
    fx, fy = size[0] / width, size[1] / height
    x0, y0, x1, y1 = explanation.region
    box = (round(x0 * fx), round(y0 * fy), round(x1 * fx), round(y1 * fy))
    heat = normalised(explanation.grid)
    bw, bh = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    smooth = np.clip(np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((bw, bh), Image.BICUBIC), dtype=np.float64), 0, 1)
    colour = Image.fromarray(colourise(smooth))
    mask = Image.fromarray((np.clip(smooth * 1.5, 0, 1) * alpha * 255).astype(np.uint8))
    layer = Image.new("RGB", size)
    layer_mask = Image.new("L", size, 0)
    layer.paste(colour, box[:2])
    layer_mask.paste(mask, box[:2])
    picture = Image.composite(layer, base, layer_mask)
    band = max(18, size[1] // 14)
    canvas = Image.new("RGB", (size[0], size[1] + band), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=max(10, int(band * 0.6)))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    caption = f"{title or explanation.label}  |  {explanation.method}"
    draw.text((4, size[1] + band * 0.15), caption, fill=(255, 255, 255), font=font)
    return canvas


def overlay_png(image: Any, explanation: Explanation, *, title: str | None = None, max_side: int = 1024) -> bytes:
    """:func:`overlay_image` as PNG bytes."""
    buffer = io.BytesIO()
    overlay_image(image, explanation, title=title, max_side=max_side).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_pngs(result: Any, source: Any, *, lang: str = "en", max_side: int = 1024) -> dict[str, bytes]:
    """A PNG overlay per label of a Result classified with ``explain`` (``{label: png}``, the
    task's order), drawn on ``source`` (the image it was classified from: a path, bytes, an array
    or a LoadedImage) read again at most about ``2 × max_side`` pixels a side. Each picture: the
    image, the map over the pixels the model saw, the label's name and score, the method.
    An empty dict for a result without explanations."""
    from .io import LoadedImage, read_image

    explanations = getattr(result, "explanations", None) or {}
    if not explanations:
        return {}
    picture = source if isinstance(source, LoadedImage) else read_image(source, reduce_to=2 * max_side)
    pil = picture.to_pil()
    names = getattr(result, "label_names", {}) or {}
    out = {}
    for label, data in explanations.items():
        explanation = Explanation.from_dict(label, data)
        name = (names.get(label) or {}).get(lang) or label
        out[label] = overlay_png(pil, explanation, title=f"{name} {explanation.score:.2f}", max_side=max_side)
    return out


def _to_pil(image: Any) -> Any:
    from PIL import Image

    if hasattr(image, "to_pil"):
        return image.to_pil()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)
