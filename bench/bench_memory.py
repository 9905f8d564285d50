"""Peak memory of ``medzero classify`` on small files that decode to something huge.

Each file is classified by the CLI in a fresh process of its own (full-size random CLAP and
ViT-B-16, ``--backend torch``), and its peak RSS (VmHWM) is printed against a baseline measured in
the same run: the same command on an ordinary file of the same modality (8 s of speech, pydicom's
CT_small.dcm). What is left above the baseline is what the hostile file costs.

    flock /tmp/bench.lock .venv/bin/python bench/bench_memory.py

The files are the ones issue 19 reported: a 10.7 kB WAV declared at 1 Hz (resampled to 48 kHz it
would be 514 M samples), a 1.3 MB DICOM holding a 10000×10000 JPEG with rescale and window, and a
10000×10000 RGB PNG.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_audio import build_full_size_clap, make_clips  # noqa: E402
from bench_image import build_checkpoint  # noqa: E402
from audio_samples import one_hz_wav  # noqa: E402
from fixtures_image import large_jpeg_dicom, large_rgb_png  # noqa: E402

_CHILD = """
import re, sys
from medzero.cli import main
code = main(["classify", "--format", "json", "-o", sys.argv[1], "--device", "cpu", "--backend", "torch", *sys.argv[2:]])
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(f"exit={code} peak_mib={peak}", file=sys.stderr)
"""



def classify_peak(model_option: list[str], path: Path, work: Path) -> tuple[int, float, str]:
    """``(peak MiB, seconds, last stderr line)`` of one ``medzero classify`` in a fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEDZERO_CACHE_DIR=str(work / "cache"))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _CHILD, str(work / "out.json"), *model_option, str(path)],
                         capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    found = re.search(r"exit=(\d+) peak_mib=(\d+)", run.stderr)
    if not found:
        raise SystemExit(f"the child failed on {path.name}:\n{run.stderr[-2000:]}")
    lines = [line for line in run.stderr.splitlines() if line and not line.startswith("exit=")]
    return int(found.group(2)), seconds, (lines[-1] if lines else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="side of the large images (default 10000)")
    args = parser.parse_args()
    from pydicom.data import get_testdata_file

    with tempfile.TemporaryDirectory(prefix="medzero-bench-memory-") as tmp:
        work = Path(tmp)
        clap = build_full_size_clap(work / "clap")
        clip = build_checkpoint(work / "clip")
        cases = [
            ("audio", ["--audio-model", str(clap)], "8 s of speech (baseline)", make_clips(work, 1)[0]),
            ("audio", ["--audio-model", str(clap)], "10.7 kB WAV declared at 1 Hz", one_hz_wav(work / "one_hz.wav")),
            ("image", ["--image-model", str(clip)], "CT_small.dcm (baseline)", Path(get_testdata_file("CT_small.dcm"))),
            ("image", ["--image-model", str(clip)], f"{args.size}² JPEG DICOM", large_jpeg_dicom(work / "large.dcm", args.size)),
            ("image", ["--image-model", str(clip)], f"{args.size}² RGB PNG", large_rgb_png(work / "large.png", args.size)),
        ]
        print(f"{'file':34} {'size':>10} {'peak':>10} {'above baseline':>15} {'time':>8}  outcome")
        baseline = {}
        for modality, option, label, path in cases:
            peak, seconds, outcome = classify_peak(option, path, work)
            baseline.setdefault(modality, peak)
            above = peak - baseline[modality]
            size = path.stat().st_size
            print(f"{label:34} {size / 1e3:>8.1f}kB {peak:>7} MiB {above:>+11} MiB {seconds:>7.1f}s  {outcome[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
