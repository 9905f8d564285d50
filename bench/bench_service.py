"""Service benchmark: `medzero serve` with dynamic batching against the same server one request at a time.

    .venv/bin/python bench/bench_service.py [--requests 48] [--max-batch 8] [--window-ms 20]

The model is the full-size CLAP of ``bench_audio.py`` (``ClapConfig()`` with fusion, random
weights of the real architecture, saved with ``save_pretrained``), so a forward pass costs what
the real weights cost. Clips: 8 s espeak-ng speech with noise at different levels, as WAV.

Two servers run side by side in this run, each a `medzero serve` subprocess on 127.0.0.1 with the
same model, labels and clips, and take turns under load at each concurrency (so other load on the
machine affects both alike):

- baseline: ``--max-batch 1`` (no batching: every request is its own forward pass);
- batched: ``--max-batch N --batch-window-ms W``.

For each, closed-loop clients at concurrency 1, 8 and 32 send a fixed number of requests
(``--requests`` per level and round, at least 2 per client; ``--rounds`` turns per server, alternating
which goes first; loops are bounded in count and by ``--deadline-s``). The machine is shared, so each
round's two turns are paired: the benchmark prints the median throughput (requests/s) over rounds,
p50 and p99 latency over all of a level's requests, the median of the rounds' batched/baseline
throughput ratios with their range (at concurrency 1 both servers do the same work, so that ratio
shows how noisy the machine was), and the largest score difference between the two servers'
answers for the same clip (batching must not change a score).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_audio import LABELS, TEMPLATE, build_full_size_clap, make_clips  # noqa: E402

HOST = "127.0.0.1"  # loopback only
CONCURRENCY = (1, 8, 32)


class Deadline(Exception):
    pass


def start_server(model_dir: Path, work: Path, extra: list[str], deadline: float) -> tuple[subprocess.Popen, str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(work / "cache"))
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medzero.service.cli", "--host", HOST, "--port", "0", "--insecure-no-auth",
             "--audio-model", str(model_dir), "--device", "cpu", "--preload", "audio", "--queue-size", "256",
             "--timeout", "600", "--log-level", "info", *extra],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work,
        )
    import httpx

    base = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if found and base is None:
            base = f"http://{HOST}:{found.group(1)}"
        if base is not None:
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    return proc, base, log
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    proc.kill()
    raise Deadline("the server did not become ready before the deadline")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def load(base: str, clips: list[bytes], concurrency: int, requests: int, deadline: float) -> dict:
    """``requests`` requests from ``concurrency`` closed-loop clients; latency of each, wall time of all."""
    import httpx

    params = {"labels": ",".join(LABELS), "template": TEMPLATE}
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    scores: dict[int, dict[str, float]] = {}
    batch_sizes: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                clip = i % len(clips)
                started = time.perf_counter()
                response = http.post("/v1/classify", params=params, content=clips[clip],
                                     headers={"Content-Type": "application/octet-stream"})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed)
                    scores.setdefault(clip, response.json()["result"]["scores"])
                    batch_sizes.append(int(response.headers.get("x-medzero-batch-size", 1)))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - started
    if len(latencies) < requests:
        raise Deadline(f"only {len(latencies)} of {requests} requests finished before the deadline")
    return {"latencies": latencies, "wall": wall, "batch_sizes": batch_sizes, "scores": scores}


def summarise(runs: list[dict]) -> dict:
    """Rounds of one server at one concurrency: median throughput over rounds, latency percentiles over all."""
    ms = np.array([x for r in runs for x in r["latencies"]]) * 1000
    scores: dict[int, dict[str, float]] = {}
    for r in runs:
        for clip, s in r["scores"].items():
            scores.setdefault(clip, s)
    return {
        "requests": len(ms),
        "per_round": [len(r["latencies"]) / r["wall"] for r in runs],
        "throughput": float(np.median([len(r["latencies"]) / r["wall"] for r in runs])),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": float(np.mean([b for r in runs for b in r["batch_sizes"]])),
        "scores": scores,
    }


def warm(base: str, clips: list[bytes], deadline: float) -> None:
    load(base, clips, 1, 2, deadline)  # label embeddings, first forward pass
    load(base, clips, 8, 8, deadline)


def report(name: str, c: int, r: dict) -> None:
    rounds = " ".join(f"{x:.2f}" for x in r["per_round"])
    print(f"  {name:8s} c={c:<3d} {r['throughput']:6.2f} req/s (rounds: {rounds})  p50 {r['p50_ms']:7.0f} ms  "
          f"p99 {r['p99_ms']:7.0f} ms  mean batch {r['mean_batch']:.1f}", flush=True)


def ratios(base: dict, batched: dict) -> list[float]:
    """Each round's batched/baseline throughput: the two turns of a round ran back to back."""
    return [b / a for a, b in zip(base["per_round"], batched["per_round"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level (at least 2 per client)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--window-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3, help="turns per server at each concurrency, alternating")
    parser.add_argument("--deadline-s", type=float, default=1800.0, help="give up after this long in all")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline_s
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="medzero-bench-service-"))
    try:
        t0 = time.perf_counter()
        model_dir = build_full_size_clap(work / "clap-full")
        print(f"built full-size CLAP in {time.perf_counter() - t0:.1f} s; {args.clips} clips of 8 s, "
              f"{len(LABELS)} labels, CPU with {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
        clips = [p.read_bytes() for p in make_clips(work, args.clips)]
        # Both servers run side by side and take turns at each level (only one is ever under load), so a
        # change in the machine's other load affects both alike.
        servers = {
            "baseline": start_server(model_dir, work / "baseline", ["--max-batch", "1", "--batch-window-ms", "0"], deadline),
            "batched": start_server(model_dir, work / "batched", ["--max-batch", str(args.max_batch),
                                                                  "--batch-window-ms", f"{args.window_ms:g}"], deadline),
        }
        try:
            results: dict[str, dict[int, dict]] = {name: {} for name in servers}
            for name, (_, url, _) in servers.items():
                warm(url, clips, deadline)
            for c in CONCURRENCY:
                runs: dict[str, list[dict]] = {name: [] for name in servers}
                for r in range(args.rounds):  # ABBA...: alternate which server goes first
                    for name in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                        runs[name].append(load(servers[name][1], clips, c, max(args.requests, 2 * c), deadline))
                for name in servers:
                    results[name][c] = summarise(runs[name])
                    report(name, c, results[name][c])
                print(f"  load average {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            for proc, _, _ in servers.values():
                stop_server(proc)
        base, batched = results["baseline"], results["batched"]
        diff = max(
            abs(base[c]["scores"][i][label] - batched[c2]["scores"][i][label])
            for c in CONCURRENCY for c2 in CONCURRENCY
            for i in set(base[c]["scores"]) & set(batched[c2]["scores"]) for label in base[c]["scores"][i]
        )
        print(f"\n| concurrency | baseline req/s | p50 / p99 ms | batched (max {args.max_batch}, {args.window_ms:g} ms) "
              f"req/s | p50 / p99 ms | mean batch | throughput ratio (median; range over rounds) |")
        print("|---|---|---|---|---|---|---|")
        for c in CONCURRENCY:
            b, d = base[c], batched[c]
            r = ratios(b, d)
            print(f"| {c} | {b['throughput']:.2f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | {d['throughput']:.2f} | "
                  f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} | {d['mean_batch']:.1f} | "
                  f"**{np.median(r):.2f}x** ({min(r):.2f}-{max(r):.2f}) |")
        print(f"\nrequests per server and level: {args.rounds} rounds x max({args.requests}, 2 x concurrency); "
              f"load average at the end {os.getloadavg()[0]:.2f} (other processes share these cores)")
        print(f"max |score difference| batched vs baseline, same clip: {diff:.2e}")
        print(f"goal: >= 2x the baseline's throughput at concurrency 8; measured {np.median(ratios(base[8], batched[8])):.2f}x "
              f"(median of {args.rounds} paired rounds)")
    except Deadline as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
