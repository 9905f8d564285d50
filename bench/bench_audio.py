"""Audio benchmark: medzero against the transformers zero-shot pipeline, on a full-size CLAP.

The model is ``ClapConfig()`` with fusion on (the architecture of laion/clap-htsat-fused, about
150 M parameters), randomly initialised with a fixed seed, saved with ``save_pretrained`` and
loaded by medzero through its public path, so it costs exactly what the real weights cost.

1. Throughput: 32 clips of 8 s (espeak-ng speech with noise at different levels), 8 labels.
   Baseline: a loop over ``transformers.pipeline("zero-shot-audio-classification")`` with the same
   model, labels and template, each clip decoded and resampled to 48 kHz first (both sides decode).
   medzero: ``Classifier(labels=...).classify_batch(paths)``. Prints clips/s, the ratio, and the
   largest score difference between the two.
2. A 10-minute recording, in a fresh process: load time (process start to first result), wall
   time of the classification and peak RSS.

    python bench/bench_audio.py [--clips 32] [--long-minutes 10] [--skip-long]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = [
    "a person speaking",
    "speech with loud background noise",
    "music",
    "a baby crying",
    "traffic noise",
    "wind noise",
    "an electrical hum",
    "silence",
]
TEMPLATE = "This is a sound of {}."


def build_full_size_clap(directory: Path) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEMPLATE.format(x) for x in LABELS] * 8, vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    model_json = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = RobertaTokenizerFast(vocab=model_json["vocab"], merges=merges, model_max_length=77)
    # laion/clap-htsat-fused: HTSAT with aff_2d fusion, RoBERTa-base text tower (vocab 50265), 512-d projection.
    config = ClapConfig(audio_config={"enable_fusion": True, "fusion_type": "aff_2d"})
    torch.manual_seed(0)
    model = ClapModel(config).eval()
    model.save_pretrained(directory)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def make_clips(directory: Path, n: int, seconds: float = 8.0) -> list[Path]:
    import soundfile as sf

    rate = 22050
    speech = directory / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(speech), "Hello doctor. I have had a dry cough and a sore throat for three days."],
        check=True,
    )
    voice, rate = sf.read(speech, dtype="float32")
    voice = np.tile(voice, int(np.ceil(seconds * rate / len(voice))))[: int(seconds * rate)]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        noise = rng.standard_normal(len(voice)).astype(np.float32) * (0.002 * (i % 8 + 1))
        path = directory / f"clip{i:02d}.wav"
        sf.write(path, np.clip(voice + noise, -1, 1), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_throughput(model_dir: Path, clips: list[Path]) -> dict:
    import torch
    from transformers import ClapModel, ClapProcessor, pipeline

    import medzero
    from medzero.audio.io import load_audio

    # Baseline: the transformers pipeline, one clip at a time (it takes one waveform per call).
    model = ClapModel.from_pretrained(model_dir).eval()
    processor = ClapProcessor.from_pretrained(model_dir)
    pipe = pipeline(
        "zero-shot-audio-classification", model=model, tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor, device="cpu",
    )

    def baseline_one(path):
        x = load_audio(path, sample_rate=48000).samples
        with torch.inference_mode():
            return pipe(x, candidate_labels=LABELS, hypothesis_template=TEMPLATE)

    baseline_one(clips[0])  # warm-up
    t0 = time.perf_counter()
    baseline = [baseline_one(p) for p in clips]
    t_base = time.perf_counter() - t0

    clf = medzero.Classifier(labels=LABELS, template=TEMPLATE, audio_model=str(model_dir), device="cpu", batch_size=8)
    clf.classify_batch(clips[:1])  # warm-up: loads the model, encodes the prompts once
    t0 = time.perf_counter()
    ours = clf.classify_batch(clips)
    t_ours = time.perf_counter() - t0

    diff = max(
        abs(r.scores[item["label"]] - item["score"]) for r, items in zip(ours, baseline) for item in items
    )
    return {
        "clips": len(clips),
        "pipeline_clips_per_s": len(clips) / t_base,
        "medzero_clips_per_s": len(clips) / t_ours,
        "speedup": t_base / t_ours,
        "max_abs_score_diff": diff,
    }


def long_child(model_dir: str, path: str) -> None:
    """Runs in a fresh process: load time counts from process start."""
    import psutil

    started = psutil.Process().create_time()
    import medzero

    clf = medzero.Classifier(task="voice_quality", audio_model=model_dir, device="cpu")
    t0 = time.time()
    result = clf.classify(path)
    done = time.time()
    print(json.dumps({
        "load_to_first_result_s": done - started,
        "classify_s": done - t0,
        "windows": len(result.timeline["start"]),
        "peak_rss_mb": peak_rss_mb(),
        "verdict": result.verdict,
    }))


def bench_long(model_dir: Path, work: Path, minutes: float) -> dict:
    import soundfile as sf

    speech, rate = sf.read(work / "speech.wav", dtype="float32")
    n = int(minutes * 60 * rate)
    x = np.tile(speech, n // len(speech) + 1)[:n]
    x = x + np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.01
    path = work / "long.flac"
    sf.write(path, np.clip(x, -1, 1), rate)
    out = subprocess.run(
        [sys.executable, __file__, "--long-child", str(model_dir), str(path)],
        check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    return {"minutes": minutes, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--long-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long_child:
        long_child(*args.long_child)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="medzero-bench-"))
    os.environ.setdefault("MEDZERO_CACHE_DIR", str(work / "cache"))
    try:
        t0 = time.perf_counter()
        model_dir = build_full_size_clap(work / "clap-full")
        print(f"built full-size CLAP in {time.perf_counter() - t0:.1f} s", flush=True)
        clips = make_clips(work, args.clips)
        r = bench_throughput(model_dir, clips)
        print(
            f"throughput, {r['clips']} clips of 8 s x {len(LABELS)} labels (CPU, {os.cpu_count()} cores):\n"
            f"  transformers pipeline loop  {r['pipeline_clips_per_s']:.2f} clips/s\n"
            f"  medzero classify_batch      {r['medzero_clips_per_s']:.2f} clips/s\n"
            f"  ratio medzero / pipeline    {r['speedup']:.2f}x (target >= 1.5x)\n"
            f"  max |score difference|      {r['max_abs_score_diff']:.2e}",
            flush=True,
        )
        if not args.skip_long:
            r = bench_long(model_dir, work, args.long_minutes)
            print(
                f"{r['minutes']:g}-minute recording, voice_quality, fresh process:\n"
                f"  process start to first result  {r['load_to_first_result_s']:.1f} s\n"
                f"  classification wall time       {r['classify_s']:.1f} s ({r['windows']} timeline windows)\n"
                f"  peak RSS                       {r['peak_rss_mb']:.0f} MB (target < 3072 MB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
