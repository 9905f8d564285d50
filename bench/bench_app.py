"""App benchmark: seconds from pressing Classify to the whole result on the page, in a real browser.

Full-size models with random weights of the real architectures, loaded by the app through the
public path: CLAP (``bench_audio.build_full_size_clap``, the laion/clap-htsat-fused architecture)
and open_clip ViT-B-16 (``bench_image.build_checkpoint``, a ``local-dir:`` checkpoint). The app runs
in a subprocess as ``medzero app`` starts it, and headless Chromium drives it through Playwright (the
harness of ``tests/test_browser.py``).

Per page, the first Classify loads the model and builds the task head (reported, not timed as a
result); then each timed run uploads a new file, waits until the page is idle, presses Classify and
stops the clock when the result's last element is drawn and the script run is over.

    python bench/bench_app.py [--runs 3]

Target: under 2 s for an 8 s recording and for a 2048×2048 DICOM on CPU.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_audio import build_full_size_clap, make_clips  # noqa: E402
from bench_image import build_checkpoint, write_dicoms  # noqa: E402
from test_browser import (  # noqa: E402
    VOICE_LAST,
    XRAY_LAST,
    launch_browser,
    open_page,
    start_app,
    stop_app,
    upload,
    wait_idle,
)

TARGET_S = 2.0


def time_classify(page, last: str) -> tuple[float, float]:
    """(seconds in the browser from the click to the drawn result, seconds the server spent in Classifier.classify)."""
    start = time.perf_counter()
    page.get_by_role("button", name="Classify").click()
    page.get_by_text(last).first.wait_for(timeout=600_000)
    wait_idle(page, timeout_ms=600_000)
    seconds = time.perf_counter() - start
    caption = page.get_by_text(re.compile(r"classified in [0-9.]+ s")).first.inner_text()
    return seconds, float(re.search(r"classified in ([0-9.]+) s", caption).group(1))


def bench_page(page, url: str, files: list[Path], last: str) -> tuple[float, list[tuple[float, float]]]:
    open_page(page, url)
    upload(page, str(files[0]), files[0].name)
    first, _ = time_classify(page, last)  # loads the model and builds the task head
    times = []
    for path in files[1:]:
        upload(page, str(path), path.name)
        times.append(time_classify(page, last))
    return first, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per page (default 3)")
    parser.add_argument("--size", type=int, default=2048, help="DICOM rows and columns (default 2048)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="medzero-bench-app-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        clap = build_full_size_clap(work / "clap")
        vit = build_checkpoint(work / "vit_b_16")
        clips = make_clips(work, args.runs + 1, seconds=8.0)
        dicoms = write_dicoms(work / "dicom", args.runs + 1, args.size)
        print(f"setup: full-size CLAP + ViT-B-16, {len(clips)} clips of 8 s, {len(dicoms)} DICOMs {args.size}², "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        proc, base = start_app(
            {"MEDZERO_AUDIO_MODEL": str(clap), "MEDZERO_IMAGE_MODEL": f"local-dir:{vit}", "MEDZERO_CACHE_DIR": str(work / "cache")},
            work / "streamlit.log",
            timeout_s=180,
        )
        try:
            with sync_playwright() as p:
                browser = launch_browser(p)
                page = browser.new_context(viewport={"width": 1400, "height": 2000}).new_page()
                page.set_default_timeout(120_000)
                rows = [
                    ("voice, 8 s WAV", *bench_page(page, base, clips, VOICE_LAST)),
                    (f"x-ray, {args.size}² DICOM", *bench_page(page, f"{base}/xray", dicoms, XRAY_LAST)),
                ]
                browser.close()
        finally:
            stop_app(proc)
    print("Classify pressed → result drawn (browser, CPU, model already loaded):")
    for name, first, runs in rows:
        median = statistics.median(t for t, _ in runs)
        server = statistics.median(c for _, c in runs)
        verdict = "ok" if median < TARGET_S else f"over the {TARGET_S:g} s target"
        print(f"  {name:<20} median {median:5.2f} s  runs {', '.join(f'{t:.2f}' for t, _ in runs)}  "
              f"(of which Classifier.classify {server:.2f} s; first press with model load + label embeddings {first:.1f} s)  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
