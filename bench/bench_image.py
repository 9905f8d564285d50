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

Decoding (``--codec``: the synthetic DICOMs stored uncompressed, as 8-bit JPEG baseline or as
lossless JPEG 2000): ``read_image`` per image at full size and as the model path asks for it
(``reduce_to`` = twice the 224-pixel input: JPEG DCT scaling, JPEG 2000 resolution levels, block
averages), medians of 5 over the files. Reduced decoding against full decoding: the torch child
classifies every file both ways (full decoding forced by giving the plug-in no model size) and
prints the largest |score change| and the top-label agreement, on the synthetic DICOMs, on real
pixels (pydicom's test images, bicubic-upscaled to ``--size`` and stored with ``--codec``), and on
pydicom's own test files as they are (all at most 640 pixels: nothing is reduced).

``--baseline DIR`` runs every child a second time with ``PYTHONPATH=DIR`` (a worktree of an
earlier commit), interleaved, and prints before → after with the ratio, from the same run.

    flock /tmp/bench.lock python bench/bench_image.py --n 32 [--repeats 3] [--backends onnx,openvino] [--int8]
    git worktree add /tmp/before <commit> && flock /tmp/bench.lock python bench/bench_image.py --n 16 --backends "" --baseline /tmp/before
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
#: The side ``read_image`` is asked to keep on the model path (twice a ViT-B/16's 224-pixel input).
REDUCE_TO = 448
CODECS = ("native", "jpeg", "j2k")
#: pydicom's own grayscale test images whose pixels the "real" set upscales.
REAL_FILES = ("CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "image_dfl.dcm", "liver_1frame.dcm")


def write_dicom(path: Path, pixels: np.ndarray, codec: str) -> Path:
    """12-bit grayscale ``pixels`` as a DX Part-10 file: uncompressed, 8-bit JPEG baseline (the
    top 8 bits, Pillow quality 90) or lossless JPEG 2000 (pydicom's encoder)."""
    import io

    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if codec == "jpeg":
        eight = (pixels >> 4).astype(np.uint8)
        ds.set_pixel_data(eight, photometric_interpretation="MONOCHROME2", bits_stored=8)
        buffer = io.BytesIO()
        Image.fromarray(eight).save(buffer, format="JPEG", quality=90)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.WindowCenter, ds.WindowWidth = 128, 250
    else:
        ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
        if codec == "j2k":
            ds.compress(JPEG2000Lossless)
        ds.WindowCenter, ds.WindowWidth = 2048, 4000
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicoms(folder: Path, n: int, size: int, seed: int = 0, codec: str = "native") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        body = 2500 - 1500 * ((x - 0.5) ** 2 + (y - 0.55) ** 2) * 4 + 300 * np.sin(12 * x + i)
        pixels = np.clip(body + rng.normal(0, 40, body.shape), 0, 4095).astype(np.uint16)
        paths.append(write_dicom(folder / f"synthetic_{i:03d}.dcm", pixels, codec))
    return paths


def write_real(folder: Path, size: int, codec: str) -> list[Path]:
    """pydicom's test images (real CT, MR, ...) upscaled bicubically to ``size`` as 12-bit DICOMs:
    real anatomy at the size where reduced decoding applies (the files themselves are small)."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in REAL_FILES:
        arr = pydicom.dcmread(get_testdata_file(name, download=False)).pixel_array.astype(np.float32)
        arr = arr[arr.shape[0] // 2] if arr.ndim == 3 else arr
        big = np.asarray(Image.fromarray(arr, mode="F").resize((size, size), Image.BICUBIC))
        low, high = np.percentile(big, [0.5, 99.5])
        pixels = np.clip((big - low) / max(high - low, 1e-6) * 4095, 0, 4095).astype(np.uint16)
        paths.append(write_dicom(folder / f"real_{Path(name).stem}.dcm", pixels, codec))
    return paths


def copy_testdata(folder: Path) -> list[Path]:
    """pydicom's own test images as they are (grayscale and colour, native, JPEG, JPEG 2000, RLE)."""
    import shutil

    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    names = REAL_FILES + ("JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "US1_J2KR.dcm", "examples_jpeg2k.dcm", "MR_small_RLE.dcm", "JPGExtended.dcm")
    found = [(name, get_testdata_file(name, download=False)) for name in names]  # those shipped in pydicom's wheel
    return [Path(shutil.copy(source, folder / name)) for name, source in found if source]


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


def decode_cost(paths: list[Path], repeats: int = 5) -> dict[str, float]:
    """Seconds per image of ``read_image`` at full size and as the model path asks (``reduce_to``),
    interleaved, median of ``repeats`` passes over up to 8 files."""
    from medzero.image import read_image

    files = paths[: min(8, len(paths))]
    times: dict[str, list[float]] = {"full": [], "reduced": []}
    for p in files:  # warm the page cache and the codecs
        read_image(p, reduce_to=REDUCE_TO)
    for _ in range(repeats):
        for name, reduce_to in (("full", None), ("reduced", REDUCE_TO)):
            t0 = time.perf_counter()
            for p in files:
                read_image(p, reduce_to=reduce_to)
            times[name].append((time.perf_counter() - t0) / len(files))
    return {name: statistics.median(v) for name, v in times.items()}


def reduced_vs_full(classifier, sets: dict[str, list[Path]]) -> dict[str, dict]:
    """Per set of files: scores as the model path decodes them (reduced) and at full size (the
    plug-in told no model size, as for an encoder whose input cannot be read), compared."""
    from medzero.image import plugin

    out = {}
    for name, paths in sets.items():
        reduced, _ = medzero_batch(paths, classifier)
        model_side = plugin._model_side
        plugin._model_side = lambda encoder: None
        try:
            full, _ = medzero_batch(paths, classifier)
        finally:
            plugin._model_side = model_side
        out[name] = {"files": len(paths), **agreement(full, reduced)}
    return out


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
    with ``backend``, interleaved, and the image tower alone; for torch, reduced against full
    decoding on every set of files in the folder's subfolders."""
    classifier = medzero_classifier(checkpoint, batch_size, backend)
    times: dict[str, list[float]] = {"naive": [], "naive_decode": [], "medzero": []}
    for _ in range(repeats):
        naive_scores, naive_s, naive_decode = naive(paths, checkpoint)
        times["naive"].append(naive_s)
        times["naive_decode"].append(naive_decode)
        scores, seconds = medzero_batch(paths, classifier)
        times["medzero"].append(seconds)
    sets = {"synthetic": paths}
    for sub in sorted(p for p in paths[0].parent.iterdir() if p.is_dir()) if paths else []:
        sets[sub.name] = sorted(sub.glob("*.dcm"))
    return {
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "alone": tower_alone({backend: classifier}, batch_size, repeats)[backend],
        "decode_each": decode_cost(paths),
        "reduced_vs_full": reduced_vs_full(classifier, sets) if backend == "torch" else {},
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
    parser.add_argument("--codec", choices=CODECS, default="native", help="how the DICOMs store their pixels (default native)")
    parser.add_argument("--baseline", default=None, help="a medzero source tree (e.g. a worktree of an earlier commit) run the same way, for before → after")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.child:
        backend, checkpoint, folder, repeats = args.child
        paths = sorted(Path(folder).glob("*.dcm"))
        print(json.dumps(backend_child(backend, Path(checkpoint), paths, args.batch_size, int(repeats))))
        return 0
    backends = ["torch", *[b for b in args.backends.split(",") if b and b != "torch"]] + (["onnx-int8"] if args.int8 else [])
    trees = {"before": str(Path(args.baseline).resolve()), "after": str(Path(__file__).resolve().parents[1])} if args.baseline else {"": None}
    import torch

    with tempfile.TemporaryDirectory(prefix="medzero-bench-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("MEDZERO_CACHE_DIR", str(tmp_path / "cache"))
        t0 = time.perf_counter()
        paths = write_dicoms(tmp_path / "dicom", args.n, args.size, codec=args.codec)
        write_real(tmp_path / "dicom" / "real", args.size, args.codec)
        copy_testdata(tmp_path / "dicom" / "pydicom")
        checkpoint = build_checkpoint(tmp_path / "vit_b_16")
        out = sys.stdout
        out.write(
            f"setup: {args.n} DICOMs {args.size}x{args.size} 12-bit ({args.codec}), ViT-B-16 checkpoint, {time.perf_counter() - t0:.1f} s; "
            f"torch threads {torch.get_num_threads()}; {load_note()}\n"
        )
        for backend in backends[1:]:
            t0 = time.perf_counter()
            medzero_classifier(checkpoint, args.batch_size, backend)
            out.write(f"  first load with --backend {backend} (exports once per model): {time.perf_counter() - t0:.1f} s\n")
        out.flush()
        runs: dict[tuple[str, str], dict] = {}
        for backend in backends:
            for tree, source in trees.items():  # before and after in turn, on the same files
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
                stdout = subprocess.run(
                    [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", backend, str(checkpoint),
                     str(tmp_path / "dicom"), str(args.repeats)],
                    check=True, capture_output=True, text=True, env=env if source else None,
                ).stdout
                runs[backend, tree] = json.loads(stdout.strip().splitlines()[-1])
        out.write(f"{args.n} images; one process per backend, each against the naive loop in the same process (medians of {args.repeats}):\n")
        for backend in backends:
            for tree in trees:
                r = runs[backend, tree]
                t = r["seconds"]
                out.write(
                    f"  {tree:6s} --backend {backend:10s} medzero {args.n / t['medzero']:6.2f} images/s; naive loop {args.n / t['naive']:5.2f} images/s "
                    f"(decoding {100 * t['naive_decode'] / t['naive']:.0f}% of it); {t['naive'] / t['medzero']:.2f}x the naive loop; "
                    f"image tower alone {r['alone'] * 1000:.0f} ms/image; max |score diff| to naive {r['max_abs_diff']:.1e}; "
                    f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['load']})\n"
                )
            if args.baseline:
                b, a = runs[backend, "before"]["seconds"], runs[backend, "after"]["seconds"]
                out.write(f"  --backend {backend}: after / before = {b['medzero'] / a['medzero']:.2f}x the images/s "
                          f"(naive loop in the same processes: {b['naive'] / a['naive']:.2f}x)\n")
        for tree in trees:
            d = runs["torch", tree]["decode_each"]
            out.write(f"{tree + ' ' if tree else ''}decoding alone (read_image, {args.codec}): full size {d['full'] * 1000:.1f} ms/image, "
                      f"reduced (reduce_to={REDUCE_TO}) {d['reduced'] * 1000:.1f} ms/image = {d['full'] / d['reduced']:.2f}x faster "
                      f"(medzero overlaps it, and the model's preprocessing, with the model in loader threads)\n")
        if args.baseline:
            b, a = runs["torch", "before"]["decode_each"], runs["torch", "after"]["decode_each"]
            out.write(f"reduced decoding after / before: {b['reduced'] / a['reduced']:.2f}x faster; full size {b['full'] / a['full']:.2f}x\n")
        for tree in trees:
            for name, c in runs["torch", tree]["reduced_vs_full"].items():
                out.write(f"{tree + ' ' if tree else ''}reduced against full decoding, {name} ({c['files']} files, torch): max |score change| "
                          f"{c['max_abs_diff']:.1e}, top-label agreement {c['top1_agreement']:.0%}, same label ranking {c['same_ranking']:.0%}\n")
        if args.int8:
            last = list(trees)[-1]
            a = agreement(np.array(runs["onnx" if "onnx" in backends else "torch", last]["scores"]), np.array(runs["onnx-int8", last]["scores"]))
            out.write(
                f"int8 against float: max |score diff| {a['max_abs_diff']:.1e}, top-1 agreement {a['top1_agreement']:.0%}, "
                f"same label ranking {a['same_ranking']:.0%} of images, mean Kendall tau {a['kendall_tau']:.3f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
