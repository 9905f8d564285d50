"""The ray engine against the local engine on this machine: classification and index building.

    flock /tmp/bench.lock .venv/bin/python bench/bench_ray.py --n 24 --reps 2

Model: a full-size open_clip ViT-B-16 with random weights (the same compute as the real one), saved
as a ``local-dir:`` checkpoint (``bench_image.build_checkpoint``). Data: ``--n`` synthetic 12-bit
DICOM radiographs of ``--size``² pixels (``bench_image.write_dicoms``). Task: ``chest_xray_findings``.

Each repetition runs, in this order, and the figures are medians over ``--reps``:

- ``classify local``: ``Classifier.classify_batch(paths)`` with the model loaded and the labels
  encoded before timing (what a warm process pays);
- ``classify ray``: ``medzero.distributed.classify_files`` on a Ray started on this machine before
  the repetitions (its start is reported on its own). A call pays everything the engine does per
  run: the probe task that loads the model to learn its facts, starting the actor pool and loading
  the model in it, decode tasks, embedding, results back to the driver;
- ``index local`` / ``index ray``: ``CaseIndex.add(paths)`` and ``CaseIndex.add(paths,
  engine="ray")`` into new indexes;
- afterwards, without Ray or a model: how many cases per second the driver, the index's one
  writer, commits as the ray engine does (``writer_rate``), the ceiling of a cluster's index build.

Each engine also classifies one file per repetition: its time is the fixed cost of a run
(``fixed``), and ``marginal`` is the rate of the other files, ``(n - 1) / (T(n) - T(1))``, i.e. the
throughput a long run approaches. The run checks that both engines' scores agree to 1e-6. On one
machine the ray engine can only lose: it splits the same cores between decode tasks and one
embedding actor (whose torch gets the actor's CPUs as threads), copies every decoded image through
the object store, and starts its workers and loads its models in every run. What it buys is more
machines; see docs/scaling.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_image import build_checkpoint, write_dicoms  # noqa: E402

TASK = "chest_xray_findings"


class Clock:
    """Times a run; counts the files its ``progress`` callback reports."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.files = 0

    def __call__(self, n: int) -> None:
        self.files += n

    def done(self, expected: int) -> float:
        assert self.files == expected, (self.files, expected)
        return time.perf_counter() - self.start


def classify_local(classifier, paths):
    clock = Clock()
    results = classifier.classify_batch(paths, progress=clock)
    return clock.done(len(paths)), {r.source: r.scores for r in results}, [r.error for r in results if r.error]


def classify_ray(classifier, paths, batch_size):
    from medzero.distributed import classify_files

    clock = Clock()
    table = classify_files(classifier, paths, batch_size=batch_size, progress=clock)
    seconds = clock.done(len(paths))
    rows = table.to_pylist()
    scores = {r["path"]: {k[6:]: v for k, v in r.items() if k.startswith("score.")} for r in rows}
    return seconds, scores, [r["error"] for r in rows if r["error"]]


def index_add(root: Path, name: str, checkpoint: Path, paths, batch_size: int, engine: str):
    from medzero.retrieval import CaseIndex

    clock = Clock()
    with CaseIndex(root / name, image_model=f"local-dir:{checkpoint}", device="cpu") as index:
        report = index.add(paths, TASK, batch_size=batch_size, progress=clock, engine=engine)
    seconds = clock.done(len(paths))
    assert len(report.added) == len(paths) and not report.errors, report.errors[:1]
    return seconds


def writer_rate(root: Path, n: int, batch_size: int, dim: int = 512) -> float:
    """Cases/s the driver commits, the ray engine's one writer: rows as the actors send them back
    (a 512-d vector, PHI-safe metadata, 14 task scores) through ``_commit`` (vector files fsynced,
    one SQLite transaction per batch, FAISS), into a new index. No model, no Ray."""
    import hashlib
    import json

    from medzero.distributed._index import RayAddReport, _commit
    from medzero.retrieval import CaseIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metadata = json.dumps({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "Rows": 2048, "Columns": 2048})
    scores = json.dumps({f"label_{i}": 0.5 for i in range(14)})
    rows = [
        dict(order=i, path=f"/archive/{i:08d}.dcm", sha256=hashlib.sha256(vectors[i].tobytes()).hexdigest(), modality="image",
             status="ok", error=None, fingerprint="bench@1", vector=vectors[i].tobytes(), metadata=metadata,
             duration_s=None, width=2048, height=2048, task=TASK, scores=scores)
        for i in range(n)
    ]
    report = RayAddReport()
    start = time.perf_counter()
    with CaseIndex(root / "writer") as index, index.writer() as writer:
        for i in range(0, n, batch_size):
            _commit(writer, rows[i : i + batch_size], {"image": None}, report)
        writer.save()
    seconds = time.perf_counter() - start
    assert len(report.added) == n
    return n / seconds


def median(values):
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="synthetic DICOMs (default 24)")
    parser.add_argument("--size", type=int, default=1024, help="rows and columns of each DICOM (default 1024)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each measurement, interleaved (default 2)")
    parser.add_argument("--no-index", action="store_true", help="classification only")
    parser.add_argument("--writer-cases", type=int, default=20_000, help="cases for the driver's commit rate (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's per-step log lines; its workers inherit it

    with tempfile.TemporaryDirectory(prefix="medzero-bench-ray-") as tmp:
        root = Path(tmp)
        os.environ["MEDZERO_CACHE_DIR"] = str(root / "cache")  # a cold text cache, shared by both engines
        t0 = time.perf_counter()
        paths = [str(p) for p in write_dicoms(root / "dicom", args.n, args.size)]
        checkpoint = build_checkpoint(root / "vit_b_16")
        import ray
        import torch

        import medzero

        print(f"setup: {args.n} DICOMs {args.size}x{args.size}, ViT-B-16 (random weights), {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, ray {ray.__version__}")

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - t0

        classifier = medzero.Classifier(TASK, image_model=f"local-dir:{checkpoint}", device="cpu", batch_size=args.batch_size)
        t0 = time.perf_counter()
        classifier.head("image")  # model loaded and labels encoded: the local engine runs warm
        load_s = time.perf_counter() - t0

        figures: dict[str, list[float]] = {}
        worst = 0.0
        for rep in range(args.reps):
            runs = {}
            for engine, run in (("local", classify_local), ("ray", lambda c, p: classify_ray(c, p, args.batch_size))):
                seconds, scores, errors = run(classifier, paths)
                assert not errors, errors[:1]
                runs[engine] = scores
                figures.setdefault(f"classify {engine}", []).append(seconds)
                figures.setdefault(f"classify {engine}, 1 file", []).append(run(classifier, paths[:1])[0])
            worst = max(worst, max(abs(runs["local"][p][k] - runs["ray"][p][k]) for p in paths for k in runs["local"][p]))
            if not args.no_index:
                for engine in ("local", "ray"):
                    figures.setdefault(f"index {engine}", []).append(index_add(root, f"{engine}{rep}", checkpoint, paths, args.batch_size, engine))
            print(f"  rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in figures.items()), flush=True)
        ray.shutdown()
        writer = {b: writer_rate(root / f"w{b}", args.writer_cases, b) for b in (64, 512)} if args.writer_cases else {}

    m = {k: median(v) for k, v in figures.items()}
    print(f"ray.init: {ray_start:.1f} s, once per process (not in the figures below). Local model load and label encoding: {load_s:.1f} s, "
          "done before timing (the ray engine loads its models inside every run)")
    print(f"medians of {args.reps} repetitions, {args.n} files of {args.size}x{args.size}, batches of {args.batch_size}:")
    print(f"{'':10} {'local s':>8} {'ray s':>8} {'ray/local':>10}")
    for what in ("classify", "index"):
        if f"{what} ray" in m:
            print(f"{what:10} {m[f'{what} local']:8.1f} {m[f'{what} ray']:8.1f} {m[f'{what} ray'] / m[f'{what} local']:9.2f}x")
    fixed = {e: m[f"classify {e}, 1 file"] for e in ("local", "ray")}
    marginal = {e: (args.n - 1) / max(1e-9, m[f"classify {e}"] - fixed[e]) for e in ("local", "ray")}
    print(f"classify, fixed cost of a run (1 file): local {fixed['local']:.1f} s, ray {fixed['ray']:.1f} s")
    print(f"classify, marginal files/s ((n-1) / (T(n) - T(1))): local {marginal['local']:.2f}, ray {marginal['ray']:.2f} "
          f"-> ray/local {marginal['ray'] / marginal['local']:.2f}x")
    print(f"max |score difference| local vs ray: {worst:.2e}")
    for b, rate in writer.items():
        print(f"driver commits (the one writer, {args.writer_cases} cases of 512-d into a new index, batches of {b}): {rate:,.0f} cases/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
