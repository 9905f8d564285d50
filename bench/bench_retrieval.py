"""Case-index benchmark: exact vs approximate search, recall, and incremental add vs full rebuild.

    .venv/bin/python bench/bench_retrieval.py --n 1000000 --dim 512 --add 100000

What is measured (all in one run, on random unit vectors, the worst case for an approximate index):

1. ``base build``: ``CaseIndex.add_vectors`` of ``--n`` vectors into a new index (SQLite rows, the
   space's append-only vector file, approximate index, atomic FAISS save), i.e. the product path.
2. search latency p50/p99, k=10, one query at a time and batches of 64, for the exact scan
   (``exact=True``: brute force over the stored vectors) and the approximate index (PQ fast scan
   re-ranked exactly), through
   ``CaseIndex.search`` (1 query) and through ``faiss_io`` for batches (the public search takes one
   query); recall@10 of the approximate index against exact.
3. ``incremental add``: ``CaseIndex.add_vectors`` of ``--add`` more vectors into the existing index
   (duplicate check, vector file append + fsync, SQLite rows, PQ encoding, FAISS save when due),
   against ``full rebuild``: what opening an index whose FAISS file is lost costs
   (``SpaceSet._rebuild``), i.e. reading the ``n + add`` stored vectors back from the vector file,
   training the quantiser on its sample and encoding them all (the FAISS save, common to both, is
   not counted in the rebuild). Both run on a warm page cache (the files were just written).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medzero.retrieval import CaseIndex  # noqa: E402
from medzero.retrieval import faiss_io  # noqa: E402


def unit(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000, latent: int = 0) -> np.ndarray:
    """Random unit vectors: isotropic (``latent=0``), or a ``latent``-dimensional Gaussian projected
    into ``d`` dimensions plus 10 % isotropic noise (low intrinsic dimension, like real embeddings)."""
    proj = np.random.default_rng(12345).standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent) if latent else None
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, d), dtype=np.float32)
        if proj is not None:
            x = rng.standard_normal((m, latent), dtype=np.float32) @ proj + 0.1 * x
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def pct(values: list[float]) -> tuple[float, float]:
    a = np.array(values) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--add", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100, help="single queries timed (and used for recall)")
    ap.add_argument("--batches", type=int, default=5, help="64-query batches timed")
    ap.add_argument("--dir", default=None, help="where to build the index (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--latent", type=int, default=0,
                    help="0: isotropic random unit vectors (worst case); e.g. 32: low intrinsic dimension, like real embeddings")
    args = ap.parse_args(argv)

    import faiss

    rng = np.random.default_rng(0)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; n={args.n:,} dim={args.dim} add={args.add:,} "
          f"data={'isotropic' if not args.latent else f'latent {args.latent}-d + noise'}")
    t = time.perf_counter()
    base, extra = unit(rng, args.n, args.dim, latent=args.latent), unit(rng, args.add, args.dim, latent=args.latent)
    queries = unit(rng, max(args.queries, 64 * args.batches), args.dim, latent=args.latent)
    print(f"generated vectors in {time.perf_counter() - t:.1f} s; peak RSS {peak_rss_gb():.2f} GB")

    root = Path(args.dir or tempfile.mkdtemp(prefix="medzero-bench-"))
    path = root / "index"
    shutil.rmtree(path, ignore_errors=True)
    try:
        # 1. base build through the product path
        t = time.perf_counter()
        with CaseIndex(path, approx_threshold=min(100_000, args.n)) as index:
            index.add_vectors(base, modality="image", fingerprint="bench@1", batch_size=50_000)
        base_s = time.perf_counter() - t
        print(f"base build (CaseIndex.add_vectors: vector file + SQLite + approximate index + save): {base_s:.1f} s; "
              f"peak RSS {peak_rss_gb():.2f} GB")

        with CaseIndex(path, readonly=True) as index:
            stats = index.stats()
            space = next(iter(index._spaces.spaces.values()))  # the loaded FAISS index, for batched timings
            print(f"  {stats['spaces'][0]['index_type']}, FAISS file {stats['faiss_bytes'] / 1e9:.2f} GB, "
                  f"database {stats['database_bytes'] / 1e9:.2f} GB, vector file {stats['spaces'][0]['vector_bytes'] / 1e9:.2f} GB")

            # 2. latency and recall
            single = queries[: args.queries]
            exact_t, approx_t, recall = [], [], []
            for q in single:
                t = time.perf_counter()
                ex = index.search_vector(q, k=10, exact=True)
                exact_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                ap_ = index.search_vector(q, k=10)
                approx_t.append(time.perf_counter() - t)
                recall.append(len({h.id for h in ex} & {h.id for h in ap_}) / 10)
            batch_exact, batch_approx, batch_recall = [], [], []
            for b in range(args.batches):
                qb = queries[64 * b : 64 * (b + 1)]
                t = time.perf_counter()
                _, ie = faiss_io.search_exact(space.index, qb, 10)
                batch_exact.append(time.perf_counter() - t)
                t = time.perf_counter()
                _, ia = faiss_io.search(space.index, qb, 10)
                batch_approx.append(time.perf_counter() - t)
                batch_recall += [len(set(a) & set(e)) / 10 for a, e in zip(ia, ie)]
        (e50, e99), (a50, a99) = pct(exact_t), pct(approx_t)
        (be50, be99), (ba50, ba99) = pct(batch_exact), pct(batch_approx)
        print("search, k=10 (1 query through CaseIndex.search, with SQLite row lookup):")
        print(f"  exact   p50 {e50:8.2f} ms  p99 {e99:8.2f} ms")
        print(f"  approx  p50 {a50:8.2f} ms  p99 {a99:8.2f} ms   -> {e50 / a50:.1f}x faster than exact (p50); "
              f"recall@10 {np.mean(recall):.3f}")
        print("search, k=10, batches of 64 queries (FAISS level):")
        print(f"  exact   p50 {be50:8.1f} ms  p99 {be99:8.1f} ms  ({be50 / 64:.2f} ms/query)")
        print(f"  approx  p50 {ba50:8.1f} ms  p99 {ba99:8.1f} ms  ({ba50 / 64:.2f} ms/query) -> {be50 / ba50:.1f}x faster; "
              f"recall@10 {np.mean(batch_recall):.3f}")

        # 3. incremental add vs full rebuild
        t = time.perf_counter()
        with CaseIndex(path, approx_threshold=min(100_000, args.n)) as index:
            open_s = time.perf_counter() - t
            t = time.perf_counter()
            report = index.add_vectors(extra, modality="image", batch_size=50_000)
            add_s = time.perf_counter() - t
            assert len(report.added) == args.add and len(index) == args.n + args.add
        print(f"incremental add of {args.add:,} (CaseIndex.add_vectors: duplicate check + vector file + SQLite + PQ encode): {add_s:.2f} s "
              f"(open + verify {open_s:.2f} s)")
        del base
        with CaseIndex(path, readonly=True, approx_threshold=min(100_000, args.n)) as index:
            space = next(iter(index._spaces.spaces.values()))
            t = time.perf_counter()
            rebuilt = index._spaces._rebuild(space.row)  # what a lost FAISS file costs on open
            rebuild_s = time.perf_counter() - t
            assert rebuilt.ntotal == args.n + args.add and faiss_io.is_approximate(rebuilt)
            del rebuilt
        print(f"full rebuild from the stored vectors, {args.n + args.add:,} vectors (vector file read + train + encode): {rebuild_s:.2f} s")
        print(f"  incremental add = {100 * add_s / rebuild_s:.1f}% of a full rebuild (target < 10%)")
        print(f"peak RSS {peak_rss_gb():.2f} GB")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
