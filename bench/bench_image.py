"""Image classification throughput: a naive per-image loop against medzero's batch path, per backend.

Model: a full-size open_clip ViT-B-16 (random weights, the same compute as the real ones), saved as
a ``local-dir:`` checkpoint (open_clip_config.json + open_clip_model.safetensors) so that medzero
loads it through its public path. Data: ``--n`` synthetic 2048×2048 16-bit (12 bits stored)
MONOCHROME2 DICOMs with a Window Center/Width, written to a temporary folder.

- naive: one image at a time: pydicom → Modality/VOI LUT → 8-bit PIL → preprocess → encode_image
  (batch of one) → softmax against the label text features;
- medzero: ``medzero.Classifier(labels=..., image_model="local-dir:...", backend=...).classify_batch(paths)``
  (decoding and the model's preprocessing in loader threads, overlapped with batched
  ``encode_image``), for ``torch`` and each backend in ``--backends`` (``--int8`` adds
  ``onnx-int8``); exports are made once, timed, before anything is measured.

Each backend runs in a process of its own (one runtime per process, as in use), with the naive
loop measured in that same process, interleaved, ``--repeats`` times; medians. Prints images/s for
each, the ratio to the naive loop, peak RSS, the naive loop's share of time spent decoding, the
largest absolute difference from the naive loop's scores, the image tower alone per image (batch
of ``--batch-size``), and with ``--int8`` how far int8 moves the scores.

    flock /tmp/bench.lock python bench/bench_image.py --n 32 [--repeats 3] [--backends onnx,openvino] [--int8]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_audio import agreement, load_note, peak_rss_mb  # run from bench/, or with bench/ on sys.path

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


def medzero_classifier(checkpoint: Path, batch_size: int, backend: str):
    import medzero

    classifier = medzero.Classifier(
        labels=LABELS, template="{}", image_model=f"local-dir:{checkpoint}", device="cpu", batch_size=batch_size, backend=backend
    )
    classifier.head("image")  # load the model and encode the labels before timing, as naive does
    return classifier


def medzero_batch(paths: list[Path], classifier) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    results = classifier.classify_batch([str(p) for p in paths])
    seconds = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"medzero failed on {len(errors)} files: {errors[0]}")
    return np.array([[r.scores[label] for label in LABELS] for r in results]), seconds


def decode_cost(paths: list[Path]) -> float:
    from medzero.image import read_image

    t0 = time.perf_counter()
    for p in paths[: min(8, len(paths))]:
        read_image(p)
    return (time.perf_counter() - t0) / min(8, len(paths))


def tower_alone(classifiers: dict, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds per image of the image tower alone, on a preprocessed batch, per backend."""
    import torch

    pixels = torch.randn((batch_size, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    encoders = {name: clf.encoder("image") for name, clf in classifiers.items()}
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for enc in encoders.values():
        enc.encode(pixels)  # warm-up
    for _ in range(repeats):
        for name, enc in encoders.items():
            t0 = time.perf_counter()
            enc.encode(pixels)
            times[name].append((time.perf_counter() - t0) / batch_size)
    return {name: statistics.median(v) for name, v in times.items()}


def backend_child(backend: str, checkpoint: Path, paths: list[Path], batch_size: int, repeats: int) -> dict:
    """Runs in a fresh process (one runtime per process, as in use): the naive loop and medzero
    with ``backend``, interleaved, and the image tower alone."""
    classifier = medzero_classifier(checkpoint, batch_size, backend)
    times: dict[str, list[float]] = {"naive": [], "naive_decode": [], "medzero": []}
    for _ in range(repeats):
        naive_scores, naive_s, naive_decode = naive(paths, checkpoint)
        times["naive"].append(naive_s)
        times["naive_decode"].append(naive_decode)
        scores, seconds = medzero_batch(paths, classifier)
        times["medzero"].append(seconds)
    return {
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "alone": tower_alone({backend: classifier}, batch_size, repeats)[backend],
        "decode_each": decode_cost(paths),
        "max_abs_diff": float(np.abs(naive_scores - scores).max()),
        "scores": scores.tolist(),
        "peak_rss_mib": peak_rss_mb(),
        "load": load_note(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="number of synthetic DICOMs (default 64)")
    parser.add_argument("--size", type=int, default=2048, help="rows and columns of each DICOM (default 2048)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of each measurement (medians)")
    parser.add_argument("--backends", default="onnx,openvino", help="exported backends to compare with torch (default onnx,openvino)")
    parser.add_argument("--int8", action="store_true", help="also measure onnx-int8 and its score agreement")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.child:
        backend, checkpoint, folder, repeats = args.child
        paths = sorted(Path(folder).glob("*.dcm"))
        print(json.dumps(backend_child(backend, Path(checkpoint), paths, args.batch_size, int(repeats))))
        return 0
    backends = ["torch", *[b for b in args.backends.split(",") if b and b != "torch"]] + (["onnx-int8"] if args.int8 else [])
    import torch

    with tempfile.TemporaryDirectory(prefix="medzero-bench-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("MEDZERO_CACHE_DIR", str(tmp_path / "cache"))
        t0 = time.perf_counter()
        paths = write_dicoms(tmp_path / "dicom", args.n, args.size)
        checkpoint = build_checkpoint(tmp_path / "vit_b_16")
        out = sys.stdout
        out.write(
            f"setup: {args.n} DICOMs {args.size}x{args.size} 16-bit, ViT-B-16 checkpoint, {time.perf_counter() - t0:.1f} s; "
            f"torch threads {torch.get_num_threads()}; {load_note()}\n"
        )
        for backend in backends[1:]:
            t0 = time.perf_counter()
            medzero_classifier(checkpoint, args.batch_size, backend)
            out.write(f"  first load with --backend {backend} (exports once per model): {time.perf_counter() - t0:.1f} s\n")
        out.flush()
        runs = {}
        for backend in backends:
            stdout = subprocess.run(
                [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", backend, str(checkpoint),
                 str(tmp_path / "dicom"), str(args.repeats)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs[backend] = json.loads(stdout.strip().splitlines()[-1])
        out.write(f"{args.n} images; one process per backend, each against the naive loop in the same process (medians of {args.repeats}):\n")
        for backend in backends:
            r = runs[backend]
            t = r["seconds"]
            out.write(
                f"  --backend {backend:10s} medzero {args.n / t['medzero']:6.2f} images/s; naive loop {args.n / t['naive']:5.2f} images/s "
                f"(decoding {100 * t['naive_decode'] / t['naive']:.0f}% of it); {t['naive'] / t['medzero']:.2f}x the naive loop; "
                f"image tower alone {r['alone'] * 1000:.0f} ms/image; max |score diff| to naive {r['max_abs_diff']:.1e}; "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['load']})\n"
            )
        out.write(f"decoding alone {runs['torch']['decode_each'] * 1000:.0f} ms/image (medzero overlaps it, and the model's preprocessing, with the model in loader threads)\n")
        if args.int8:
            a = agreement(np.array(runs["onnx" if "onnx" in runs else "torch"]["scores"]), np.array(runs["onnx-int8"]["scores"]))
            out.write(
                f"int8 against float: max |score diff| {a['max_abs_diff']:.1e}, top-1 agreement {a['top1_agreement']:.0%}, "
                f"same label ranking {a['same_ranking']:.0%} of images, mean Kendall tau {a['kendall_tau']:.3f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
