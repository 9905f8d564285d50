"""Image classification throughput: a naive per-image loop against medzero's batch path.

Model: a full-size open_clip ViT-B-16 (random weights, the same compute as the real ones), saved as
a ``local-dir:`` checkpoint (open_clip_config.json + open_clip_model.safetensors) so that medzero
loads it through its public path. Data: ``--n`` synthetic 2048×2048 16-bit (12 bits stored)
MONOCHROME2 DICOMs with a Window Center/Width, written to a temporary folder.

- naive: one image at a time: pydicom → Modality/VOI LUT → 8-bit PIL → preprocess → encode_image
  (batch of one) → softmax against the label text features;
- medzero: ``medzero.Classifier(labels=..., image_model="local-dir:...").classify_batch(paths)``
  (decoding in loader threads, overlapped with batched ``encode_image``).

Prints images/s for both, the ratio, peak RSS after each, the naive loop's share of time spent
decoding, and the largest absolute difference between the two paths' scores.

    python bench/bench_image.py --n 16
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_logger = logging.getLogger("bench_image")

LABELS = ["normal chest radiograph", "pneumothorax", "pleural effusion", "pneumonia"]


def write_dicoms(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        body = 2500 - 1500 * ((x - 0.5) ** 2 + (y - 0.55) ** 2) * 4 + 300 * np.sin(12 * x + i)
        pixels = np.clip(body + rng.normal(0, 40, body.shape), 0, 4095).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = "DX"
        ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
        ds.WindowCenter, ds.WindowWidth = 2048, 4000
        path = folder / f"synthetic_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def build_checkpoint(folder: Path) -> Path:
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    cfg = open_clip.get_model_config("ViT-B-16")
    pp = dict(model.visual.preprocess_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pp}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def naive(paths: list[Path], checkpoint: Path) -> tuple[np.ndarray, float, float]:
    """The loop a notebook would write. Returns (scores, seconds, seconds spent decoding)."""
    import open_clip
    import pydicom
    import torch
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{checkpoint}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{checkpoint}")
    model.eval()
    with torch.no_grad():
        text = model.encode_text(tokenizer(LABELS))
        text = text / text.norm(dim=-1, keepdim=True)
        scale = model.logit_scale.exp()
    rows, decode = [], 0.0
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        ds = pydicom.dcmread(path)
        values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        bits = int(ds.BitsStored)
        unit = np.clip(values / (2**bits - 1), 0, 1).astype(np.float32)  # unsigned, no rescale
        pil = Image.fromarray(np.rint(unit * np.float32(255)).astype(np.uint8), mode="L").convert("RGB")
        decode += time.perf_counter() - t0
        with torch.no_grad():
            image = model.encode_image(preprocess(pil).unsqueeze(0))
            image = image / image.norm(dim=-1, keepdim=True)
            rows.append((scale * image @ text.T).softmax(dim=-1).numpy()[0])
    return np.stack(rows), time.perf_counter() - start, decode


def medzero_batch(paths: list[Path], checkpoint: Path, batch_size: int) -> tuple[np.ndarray, float, float]:
    import medzero
    from medzero.image import read_image

    classifier = medzero.Classifier(labels=LABELS, template="{}", image_model=f"local-dir:{checkpoint}", device="cpu", batch_size=batch_size)
    classifier.head("image")  # load the model and encode the labels before timing, as naive does
    start = time.perf_counter()
    results = classifier.classify_batch([str(p) for p in paths])
    seconds = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"medzero failed on {len(errors)} files: {errors[0]}")
    t0 = time.perf_counter()
    for p in paths[: min(8, len(paths))]:
        read_image(p)
    decode_each = (time.perf_counter() - t0) / min(8, len(paths))
    return np.array([[r.scores[label] for label in LABELS] for r in results]), seconds, decode_each


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of synthetic DICOMs (default 64)")
    parser.add_argument("--size", type=int, default=2048, help="rows and columns of each DICOM (default 2048)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    with tempfile.TemporaryDirectory(prefix="medzero-bench-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        paths = write_dicoms(tmp_path / "dicom", args.n, args.size)
        checkpoint = build_checkpoint(tmp_path / "vit_b_16")
        out = sys.stdout
        out.write(
            f"setup: {args.n} DICOMs {args.size}x{args.size} 16-bit, ViT-B-16 checkpoint, {time.perf_counter() - t0:.1f} s; "
            f"torch threads {torch.get_num_threads()}\n"
        )
        naive_scores, naive_s, naive_decode = naive(paths, checkpoint)
        rss_naive = peak_rss_mib()
        ours, ours_s, decode_each = medzero_batch(paths, checkpoint, args.batch_size)
        rss_ours = peak_rss_mib()
        out.write(f"naive loop   : {args.n / naive_s:6.2f} images/s ({naive_s:.1f} s; decoding {100 * naive_decode / naive_s:.0f}% of it), peak RSS {rss_naive:.0f} MiB\n")
        out.write(
            f"medzero batch: {args.n / ours_s:6.2f} images/s ({ours_s:.1f} s; decoding alone {decode_each * 1000:.0f} ms/image = "
            f"{100 * decode_each * args.n / ours_s:.0f}% of it, overlapped), peak RSS {rss_ours:.0f} MiB (process peak so far)\n"
        )
        out.write(f"speed-up     : {naive_s / ours_s:.2f}x\n")
        out.write(f"max |score difference| naive vs medzero: {np.abs(naive_scores - ours).max():.2e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
