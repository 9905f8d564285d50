"""Which heatmap method medzero.image.explain uses by default: occlusion against gradient-weighted patch tokens.

Model: the full-size open_clip ViT-B-16 of bench_image.py (random weights, the real compute), loaded
through medzero's public path (``Classifier(labels=..., image_model="local-dir:...", backend="torch")``).
Images: ``--n`` synthetic chest-like pictures (bright body, two dark lung fields, a bright blob
placed at random, noise), 512×512.

For each image, each method's map of each label, then the deletion test on the same cells
(``--cells``×``--cells`` over the model input): hide the ``--k`` cells the map ranks highest (set to
the mean pixel) and measure the label's task-score drop, against hiding ``--random`` random sets of
``--k`` cells (shared by all labels and both methods). Per (image, label): effect = drop(top) −
mean drop(random), and z = effect / std of the random drops. Prints, per method, the mean effect,
mean z, the share of (image, label) pairs where top beat random, and seconds per image (all labels),
each method timed in the same process, interleaved.

Caveat: occlusion's map is made of single-cell drops on the very cells the test hides, so the test
suits it; the gradient map is pooled onto the same cells.

    flock /tmp/bench.lock python bench/bench_explain.py --n 4
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_image import LABELS, build_checkpoint  # noqa: E402


def picture(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = 200 - 120 * np.abs(x - 0.5)
    for cx in (0.31, 0.69):
        lung = ((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.31) ** 2 < 1
        pixels = np.where(lung, 40 + 30 * y, pixels)
    bx, by, r = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.75), rng.uniform(0.04, 0.1)
    pixels = np.where((x - bx) ** 2 + (y - by) ** 2 < r * r, 235, pixels)
    return np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)


def pooled(grid: np.ndarray, cells: int) -> np.ndarray:
    """A map resampled to cells×cells by area averaging (a 14×14 gradient map onto 7×7 cells)."""
    from PIL import Image

    g = np.asarray(grid, dtype=np.float32)
    if g.shape == (cells, cells):
        return g.astype(np.float64)
    return np.asarray(Image.fromarray(g).resize((cells, cells), Image.BOX), dtype=np.float64)


def masked(x, chosen: list[list[int]], cells: int):
    side = x.shape[-1]
    edges = np.linspace(0, side, cells + 1).round().astype(int)
    out = x[None].repeat(len(chosen), 1, 1, 1)
    for k, picks in enumerate(chosen):
        for cell in picks:
            r, c = divmod(int(cell), cells)
            out[k, :, edges[r] : edges[r + 1], edges[c] : edges[c + 1]] = 0.0
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--cells", type=int, default=7)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--random", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args(argv)

    import medzero
    from PIL import Image

    from medzero.image.explain import explain_image

    workdir = Path(tempfile.mkdtemp(prefix="bench_explain_"))
    checkpoint = args.checkpoint or build_checkpoint(workdir / "vit-b-16")
    classifier = medzero.Classifier(labels=LABELS, image_model=f"local-dir:{checkpoint}", backend="torch")
    encoder, head = classifier.encoder("image"), classifier.head("image")
    rng = np.random.default_rng(args.seed)
    methods = ("occlusion", "gradient")
    times = {m: [] for m in methods}
    effects = {m: [] for m in methods}
    zs = {m: [] for m in methods}
    explain_image(encoder, head, Image.fromarray(picture(rng)), method="gradient")  # warm-up
    for i in range(args.n):
        image = Image.fromarray(picture(rng))
        x = encoder.preprocess(image)
        base = head.scores(encoder.encode(x[None]))[0]
        maps = {}
        for method in (methods if i % 2 == 0 else methods[::-1]):
            start = time.perf_counter()
            maps[method] = explain_image(encoder, head, image, pixels=x, method=method, grid=args.cells)
            times[method].append(time.perf_counter() - start)
        randoms = [list(rng.choice(args.cells**2, args.k, replace=False)) for _ in range(args.random)]
        random_drops = base[None] - head.scores(encoder.encode(masked(x, randoms, args.cells)))  # (random, labels)
        for method in methods:
            tops = [list(np.argsort(-pooled(maps[method][label].grid, args.cells).ravel(), kind="stable")[: args.k])
                    for label in head.task.label_ids()]
            top_scores = head.scores(encoder.encode(masked(x, tops, args.cells)))
            for j in range(len(tops)):
                drop = base[j] - top_scores[j, j]
                effect = drop - random_drops[:, j].mean()
                effects[method].append(effect)
                zs[method].append(effect / (random_drops[:, j].std() + 1e-12))
    report = {}
    for method in methods:
        report[method] = {
            "mean_effect": float(np.mean(effects[method])),
            "mean_z": float(np.mean(zs[method])),
            "top_beats_random": float(np.mean(np.asarray(effects[method]) > 0)),
            "s_per_image": float(statistics.median(times[method])),
        }
    report["time_ratio_gradient_over_occlusion"] = report["gradient"]["s_per_image"] / report["occlusion"]["s_per_image"]
    report["setup"] = {"n": args.n, "labels": len(LABELS), "cells": args.cells, "k": args.k, "random": args.random,
                       "model": "ViT-B-16 random weights, torch, CPU"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
