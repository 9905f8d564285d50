"""Audio benchmark: medzero against the transformers zero-shot pipeline on a full-size CLAP, per backend.

The model is ``ClapConfig()`` with fusion on (the architecture of laion/clap-htsat-fused, about
150 M parameters), randomly initialised with a fixed seed, saved with ``save_pretrained`` and
loaded by medzero through its public path, so it costs exactly what the real weights cost.
Backends: ``torch`` and the exported ones given with ``--backends`` (``onnx``, ``openvino``;
``--int8`` adds ``onnx-int8``); their export is made once, timed, before anything is measured.

1. The model alone, per backend: one forward pass of a batch of 8 precomputed feature sets, per
   clip (transformers' ``ClapModel`` for ``torch``); and feature extraction per 10 s model input,
   transformers' ``ClapFeatureExtractor`` against medzero's.
2. Throughput: ``--clips`` clips of 8 s (espeak-ng speech with noise), 8 labels. Baseline: a loop
   over ``transformers.pipeline("zero-shot-audio-classification")`` with the same model, labels and
   template, each clip decoded and resampled to 48 kHz first (both sides decode). medzero:
   ``Classifier(labels=..., backend=...).classify_batch(paths)``. Each backend runs in a process of
   its own (one runtime per process, as in use) with the pipeline measured in that same process,
   interleaved, ``--repeats`` times; medians. Prints clips/s, the ratio to the pipeline, medzero's
   cost per clip against the model alone, and the largest score difference from the pipeline.
   With ``--int8``: how far int8 moves the scores (largest difference, top-1 agreement, clips whose
   whole label ranking is unchanged, mean Kendall tau).
3. Whole process: ``--process-clips`` clips classified by a fresh Python process, from its start to
   its exit (imports, model load, decoding, scoring), the pipeline script against medzero per
   backend, interleaved, ``--repeats`` times; medians. medzero runs with warm caches (its export and
   label embeddings from an earlier run), as a clinic's second and later runs do.
4. A 10-minute recording with voice_quality, in a fresh process per run, three variants
   interleaved: ``before`` (the code of ``--baseline``, a git worktree first on PYTHONPATH),
   ``full`` (today's code, every timeline window scored: ``MEDZERO_TIMELINE=full``) and
   ``medzero`` (today's default: the timeline's coarse pass and refinement). Prints process start
   to result (the target), the classification's wall time, the windows scored, peak RSS, the
   ratio to ``before``, and how each variant's result differs from ``before``'s (scores, verdict,
   window scores, top segments).

    flock /tmp/bench.lock python bench/bench_audio.py [--clips 16] [--repeats 3] \\
        [--backends onnx,openvino] [--int8] [--process-clips 16] [--long-minutes 10] [--skip-long] \\
        [--parts throughput,process,long] [--long-backends onnx] [--long-repeats 1] [--baseline 8697b2b]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
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
#: The last commit before issue 24's changes to the long recording: the 'before' of the long part.
BASELINE = "8697b2b"


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
    """This process's peak RSS: VmHWM (ru_maxrss would carry the parent's peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_note() -> str:
    """The machine's load average now: the figures are only as quiet as the machine was."""
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1 and 2. the model alone, and throughput: one process per backend ---------------------------------
# One runtime per process, as in use: ONNX Runtime's, OpenVINO's and torch's thread pools in one
# process slow each other down (torch's forward measured 1.5x slower beside the other two).


def backend_child(backend: str, model_dir: str, paths: list[str], repeats: int) -> None:
    """Runs in a fresh process: the model alone and the throughput of one backend against the
    pipeline, interleaved; prints JSON."""
    import torch
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor, pipeline

    import medzero
    from medzero.audio.clap_features import MelFeatures
    from medzero.audio.io import load_audio

    waves = [load_audio(p, sample_rate=48000).samples for p in paths[:8]]
    hf = ClapFeatureExtractor.from_pretrained(model_dir)
    ours = MelFeatures.of(hf)
    padded = [np.pad(np.tile(w.astype(np.float64), 480000 // len(w)), (0, 480000 % len(w))) for w in waves]
    times: dict[str, list[float]] = {"transformers features": [], "medzero features": [], "forward": [], "pipeline": [], "medzero": []}
    for _ in range(repeats):
        for name, fe in (("transformers features", hf), ("medzero features", ours)):
            t0 = time.perf_counter()
            for x in padded:
                fe._np_extract_fbank_features(x, fe.mel_filters)
            times[name].append((time.perf_counter() - t0) / len(padded))

    clf = medzero.Classifier(labels=LABELS, template=TEMPLATE, audio_model=model_dir, device="cpu", batch_size=8, backend=backend)
    clf.classify_batch(paths[:1])  # warm-up: loads the model, encodes the prompts once
    encoder = clf.encoder("audio")
    features = np.stack([encoder.features(w) for w in waves]).astype(np.float32)
    model = ClapModel.from_pretrained(model_dir).eval()  # the pipeline's, and the torch forward's
    if backend == "torch":
        is_longer = torch.ones((len(features), 1), dtype=torch.bool)
        forward = lambda: model.get_audio_features(input_features=torch.from_numpy(features), is_longer=is_longer)  # noqa: E731
    else:
        forward = lambda: encoder.embed_features(features)  # noqa: E731
    processor = ClapProcessor.from_pretrained(model_dir)
    pipe = pipeline("zero-shot-audio-classification", model=model, tokenizer=processor.tokenizer,
                    feature_extractor=processor.feature_extractor, device="cpu")

    def baseline_one(path):
        with torch.inference_mode():
            return pipe(load_audio(path, sample_rate=48000).samples, candidate_labels=LABELS, hypothesis_template=TEMPLATE)

    baseline_one(paths[0])
    with torch.inference_mode():
        forward()
    for _ in range(repeats):
        with torch.inference_mode():
            t0 = time.perf_counter()
            forward()
            times["forward"].append((time.perf_counter() - t0) / len(features))
        t0 = time.perf_counter()
        baseline = [baseline_one(p) for p in paths]
        times["pipeline"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = clf.classify_batch(paths)
        times["medzero"].append(time.perf_counter() - t0)
    errors = [r.error for r in results if r.error]
    assert not errors, errors[:1]
    diff = max(abs(r.scores[item["label"]] - item["score"]) for r, items in zip(results, baseline) for item in items)
    print(json.dumps({
        "seconds": {k: median_of(v) for k, v in times.items()},
        "max_abs_score_diff": diff,
        "scores": [[r.scores[label] for label in LABELS] for r in results],
        "load": load_note(),
    }))


def bench_backends(model_dir: Path, clips: list[Path], backends: list[str], repeats: int) -> dict[str, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = {}
    for backend in backends:
        stdout = subprocess.run(
            [sys.executable, __file__, "--backend-child", backend, str(model_dir), str(repeats), *map(str, clips)],
            check=True, capture_output=True, text=True, env=env,
        ).stdout
        out[backend] = json.loads(stdout.strip().splitlines()[-1])
    return out


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other``'s scores move from ``reference``'s (rows: clips, columns: labels)."""
    def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:  # labels are few: count the pairs
        signs = [np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(len(a)) for j in range(i + 1, len(a))]
        return float(np.mean(signs))

    ranks_same = [bool(np.array_equal(np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable"))) for a, b in zip(reference, other)]
    taus = [kendall_tau(a, b) for a, b in zip(reference, other)]
    return {
        "max_abs_diff": float(np.abs(reference - other).max()),
        "top1_agreement": float(np.mean(reference.argmax(1) == other.argmax(1))),
        "same_ranking": float(np.mean(ranks_same)),
        "kendall_tau": float(np.mean(taus)),
    }


# -- 3. whole process --------------------------------------------------------------------------------


def process_child(kind: str, model_dir: str, paths: list[str]) -> None:
    """Runs in a fresh process: classify ``paths`` and print the scores (timed from outside)."""
    if kind == "pipeline":
        import torch
        from transformers import ClapModel, ClapProcessor, pipeline

        from medzero.audio.io import load_audio

        model = ClapModel.from_pretrained(model_dir).eval()
        processor = ClapProcessor.from_pretrained(model_dir)
        pipe = pipeline("zero-shot-audio-classification", model=model, tokenizer=processor.tokenizer,
                        feature_extractor=processor.feature_extractor, device="cpu")
        rows = []
        with torch.inference_mode():
            for path in paths:
                items = pipe(load_audio(path, sample_rate=48000).samples, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
                rows.append({item["label"]: item["score"] for item in items})
    else:
        import medzero

        clf = medzero.Classifier(labels=LABELS, template=TEMPLATE, audio_model=model_dir, device="cpu", backend=kind)
        rows = [r.scores for r in clf.classify_batch(paths)]
    print(json.dumps(rows))


def bench_process(model_dir: Path, clips: list[Path], backends: list[str], repeats: int) -> dict:
    kinds = ["pipeline", *backends]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    scores: dict[str, list] = {}
    for kind in kinds[1:]:  # warm caches: the export and the label embeddings, as after a first run
        subprocess.run([sys.executable, __file__, "--process-child", kind, str(model_dir), *map(str, clips[:1])],
                       check=True, capture_output=True, env=env)
    for _ in range(repeats):
        for kind in kinds:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--process-child", kind, str(model_dir), *map(str, clips)],
                                 check=True, capture_output=True, text=True, env=env).stdout
            times[kind].append(time.perf_counter() - t0)
            scores[kind] = json.loads(out.strip().splitlines()[-1])
    diffs = {k: max(abs(a[label] - b[label]) for a, b in zip(scores[k], scores["pipeline"]) for label in LABELS) for k in backends}
    return {"clips": len(clips), "seconds": {k: median_of(v) for k, v in times.items()}, "all": times, "max_abs_score_diff": diffs}


# -- 4. a long recording -----------------------------------------------------------------------------


def long_child(model_dir: str, path: str, backend: str) -> None:
    """Runs in a fresh process: load time counts from process start. Prints what it measured and
    what it found (scores, verdict, top segments, window scores) for the comparison of variants."""
    import psutil

    started = psutil.Process().create_time()
    import medzero

    clf = medzero.Classifier(task="voice_quality", audio_model=model_dir, device="cpu", backend=backend)
    t0 = time.time()
    result = clf.classify(path)
    done = time.time()
    timeline = result.timeline
    first = next(iter(timeline["scores"].values()))
    print(json.dumps({
        "load_to_first_result_s": done - started,
        "classify_s": done - t0,
        "windows": len(timeline["start"]),
        "scored": sum(v is not None for v in first),
        "peak_rss_mb": peak_rss_mb(),
        "verdict": result.verdict,
        "scores": result.scores,
        "segments": [[s.label, s.start, s.end, s.score] for s in result.segments],
        "timeline": {"start": timeline["start"], "scores": timeline["scores"]},
    }))


#: The variants of the long recording's run: (name, where medzero comes from, MEDZERO_TIMELINE).
#: ``before`` is the code before issue 24 (a git worktree of ``--baseline``, first on PYTHONPATH),
#: ``full`` today's code scoring every timeline window, ``medzero`` today's default.
LONG_VARIANTS = (("before", "baseline", None), ("full", None, "full"), ("medzero", None, None))


def make_long_recording(work: Path, minutes: float) -> Path:
    """The bench's clip tiled to ``minutes`` with a little white noise (speech all through)."""
    import soundfile as sf

    path = work / "long.flac"
    if not path.exists():
        speech, rate = sf.read(work / "speech.wav", dtype="float32")
        n = int(minutes * 60 * rate)
        x = np.tile(speech, n // len(speech) + 1)[:n]
        x = x + np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.01
        sf.write(path, np.clip(x, -1, 1), rate)
    return path


def run_long(model_dir: Path, path: Path, backend: str, *, tree: Path | None = None, timeline: str | None = None,
             warm: bool = False) -> dict:
    """One fresh process classifying the long recording (after a warm-up run when ``warm``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MEDZERO_TIMELINE", None)
    if timeline:
        env["MEDZERO_TIMELINE"] = timeline
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, __file__, "--long-child", str(model_dir), str(path), backend]
    if warm:  # the export and the task's label embeddings, as after a first run
        subprocess.run(command, check=True, capture_output=True, env=env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the whole process (user + system): much less moved than wall time by other
    # work on a shared machine, so the fairer comparison there
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out.strip().splitlines()[-1]), "cpu_s": cpu}


def bench_long(model_dir: Path, work: Path, minutes: float, backend: str, warm: bool = True) -> dict:
    """Today's default on the long recording (kept for callers of the single-variant run)."""
    return {"minutes": minutes, "backend": backend, **run_long(model_dir, make_long_recording(work, minutes), backend, warm=warm)}


def baseline_tree(work: Path, ref: str) -> Path:
    """A detached git worktree of ``ref`` (this checkout's repository), removed by the caller."""
    repo = Path(__file__).resolve().parent.parent
    tree = work / f"baseline-{ref[:12]}"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-f", str(tree), ref], check=True, capture_output=True)
    # the editable install maps medzero.prompts to this checkout's prompts/: the tree's own tasks instead
    if not (tree / "medzero" / "prompts").exists():
        (tree / "medzero" / "prompts").symlink_to(tree / "prompts", target_is_directory=True)
    return tree


def compare_long(reference: dict, other: dict) -> dict:
    """How ``other``'s long-recording result differs from ``reference``'s: whole-recording scores,
    verdict, window scores on the windows both scored, and each label's top segment."""
    def top(run):
        found: dict[str, tuple] = {}
        for label, start, _end, score in run["segments"]:
            found.setdefault(label, (start, score))
        return found

    score_diff = max(abs(reference["scores"][k] - other["scores"][k]) for k in reference["scores"])
    where = {s: i for i, s in enumerate(reference["timeline"]["start"])}
    window_diff = 0.0
    for label, values in other["timeline"]["scores"].items():
        for k, start in enumerate(other["timeline"]["start"]):
            i = where.get(start)
            if i is not None and values[k] is not None and reference["timeline"]["scores"][label][i] is not None:
                window_diff = max(window_diff, abs(values[k] - reference["timeline"]["scores"][label][i]))
    a, b = top(reference), top(other)
    same_top = sum(a[k][0] == b.get(k, (None,))[0] for k in a)
    segments_a = {(x[0], x[1]) for x in reference["segments"]}
    segments_b = {(x[0], x[1]) for x in other["segments"]}
    return {"score_diff": score_diff, "window_diff": window_diff, "verdict_same": reference["verdict"] == other["verdict"],
            "same_top": same_top, "labels": len(a), "same_segments": len(segments_a & segments_b), "segments": len(segments_a),
            "top_gap": max((abs(a[k][1] - b[k][1]) for k in a if k in b), default=0.0)}


def report_long(args: argparse.Namespace, model_dir: Path, work: Path, backends: list[str]) -> None:
    """The long recording per backend: before, full pass and today's default, interleaved, in one run."""
    path = make_long_recording(work, args.long_minutes)
    tree = baseline_tree(work, args.baseline) if args.baseline else None
    variants = [v for v in LONG_VARIANTS if v[1] is None or tree is not None]
    long_backends = [b for b in args.long_backends.split(",") if b] or backends
    repeats = max(1, args.long_repeats)
    runs = {(b, name): [] for b in long_backends for name, _, _ in variants}
    try:
        for i in range(repeats):
            for b in long_backends:
                for name, where, mode in variants:
                    runs[b, name].append(run_long(model_dir, path, b, tree=tree if where else None, timeline=mode, warm=i == 0))
    finally:
        if tree is not None:
            repo = Path(__file__).resolve().parent.parent
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
    print(f"{args.long_minutes:g}-minute recording, voice_quality, process start to result, fresh process per run "
          f"(warm caches; medians of {repeats}, variants interleaved; before = {args.baseline or 'not run'}; {load_note()}):")
    for b in long_backends:
        base = median_of([r["load_to_first_result_s"] for r in runs[b, variants[0][0]]])
        base_cpu = median_of([r["cpu_s"] for r in runs[b, variants[0][0]]])
        for name, _, _ in variants:
            rs = runs[b, name]
            first = median_of([r["load_to_first_result_s"] for r in rs])
            wall = median_of([r["classify_s"] for r in rs])
            cpu = median_of([r["cpu_s"] for r in rs])
            print(f"  --backend {b:10s} {name:8s} start to result {first:5.1f} s ({base / first:4.2f}x {variants[0][0]}; goal < 10 s); "
                  f"CPU time {cpu:5.1f} s ({base_cpu / cpu:4.2f}x); classification {wall:5.1f} s; "
                  f"{rs[0]['scored']} of {rs[0]['windows']} timeline windows scored; "
                  f"peak RSS {max(r['peak_rss_mb'] for r in rs):.0f} MB; all runs {', '.join('%.1f' % r['load_to_first_result_s'] for r in rs)} s "
                  f"(CPU {', '.join('%.1f' % r['cpu_s'] for r in rs)} s)")
        reference = runs[b, variants[0][0]][0]
        for name, _, _ in variants[1:]:
            c = compare_long(reference, runs[b, name][0])
            print(f"    {name} against {variants[0][0]}: verdict {'same' if c['verdict_same'] else 'DIFFERENT'}; max |score diff| "
                  f"{c['score_diff']:.1e} (whole recording), {c['window_diff']:.1e} (windows both scored); top segment the same "
                  f"for {c['same_top']} of {c['labels']} labels (largest top-score gap {c['top_gap']:.1e}); "
                  f"{c['same_segments']} of {c['segments']} segments the same", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="clips for the in-process throughput (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of each measurement (medians)")
    parser.add_argument("--backends", default="onnx,openvino", help="exported backends to compare with torch (default onnx,openvino)")
    parser.add_argument("--int8", action="store_true", help="also measure onnx-int8 and its score agreement")
    parser.add_argument("--process-clips", type=int, default=16, help="clips for the whole-process runs; 0 skips them")
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--long-repeats", type=int, default=1, help="fresh-process runs of the long recording per backend (medians)")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--long-backends", default="", help="backends of the long recording (default: all measured)")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"git commit whose code runs the long recording's 'before' (a worktree on PYTHONPATH; default "
                             f"{BASELINE}, before issue 24; '' skips it)")
    parser.add_argument("--parts", default="throughput,process,long", help="which measurements to run (default all)")
    parser.add_argument("--long-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--process-child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--backend-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long_child:
        long_child(*args.long_child)
        return
    if args.backend_child:
        backend_child(args.backend_child[0], args.backend_child[1], args.backend_child[3:], int(args.backend_child[2]))
        return
    if args.process_child:
        process_child(args.process_child[0], args.process_child[1], args.process_child[2:])
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backends = ["torch", *[b for b in args.backends.split(",") if b and b != "torch"]] + (["onnx-int8"] if args.int8 else [])
    work = Path(tempfile.mkdtemp(prefix="medzero-bench-"))
    os.environ.setdefault("MEDZERO_CACHE_DIR", str(work / "cache"))
    try:
        t0 = time.perf_counter()
        model_dir = build_full_size_clap(work / "clap-full")
        print(f"built full-size CLAP in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs; backends {', '.join(backends)}", flush=True)
        clips = make_clips(work, max(args.clips, args.process_clips, 8))
        from medzero.encoders import factory as encoders

        parts = set(args.parts.split(","))
        print(f"  {load_note()}", flush=True)
        for b in backends[1:]:
            t0 = time.perf_counter()
            encoders.create(str(model_dir), modality="audio", device="cpu", backend=b)
            print(f"  first load with --backend {b} (exports once per model): {time.perf_counter() - t0:.1f} s", flush=True)

        if "throughput" in parts:
            report_backends(bench_backends(model_dir, clips[: args.clips], backends, args.repeats), backends, args)

        if args.process_clips and "process" in parts:
            p = bench_process(model_dir, clips[: args.process_clips], backends, args.repeats)
            print(f"whole process, {p['clips']} clips, process start to exit (medians of {args.repeats}; medzero with warm caches; {load_note()}):")
            print(f"  transformers pipeline script  {p['seconds']['pipeline']:5.1f} s")
            for b in backends:
                print(f"  medzero --backend {b:10s}   {p['seconds'][b]:5.1f} s  {p['seconds']['pipeline'] / p['seconds'][b]:5.2f}x "
                      f"(goal >= 1.5x); max |score diff| {p['max_abs_score_diff'][b]:.1e}")
            print("  all runs (s): " + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in p["all"].items()), flush=True)

        if not args.skip_long and "long" in parts:
            report_long(args, model_dir, work, backends)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report_backends(runs: dict[str, dict], backends: list[str], args: argparse.Namespace) -> None:
    first = runs[backends[0]]["seconds"]
    print("feature extraction per 10 s model input (medians): transformers "
          f"{first['transformers features'] * 1000:.1f} ms, medzero {first['medzero features'] * 1000:.1f} ms")
    n = args.clips
    print(f"throughput, {n} clips of 8 s x {len(LABELS)} labels; one process per backend, each against the pipeline "
          f"in the same process (medians of {args.repeats}):")
    for b in backends:
        t = runs[b]["seconds"]
        per_clip = t["medzero"] / n
        print(
            f"  --backend {b:10s} model alone {t['forward'] * 1000:5.1f} ms/clip; medzero {n / t['medzero']:5.2f} clips/s "
            f"= {per_clip * 1000:.0f} ms/clip = {per_clip / t['forward']:.2f}x its model alone (goal <= 1.2x); pipeline "
            f"{n / t['pipeline']:5.2f} clips/s; {t['pipeline'] / t['medzero']:.2f}x the pipeline; max |score diff| "
            f"{runs[b]['max_abs_score_diff']:.1e} ({runs[b]['load']})"
        )
    if "onnx-int8" in runs:
        reference = runs["onnx" if "onnx" in runs else "torch"]["scores"]
        a = agreement(np.array(reference), np.array(runs["onnx-int8"]["scores"]))
        print(
            f"  int8 against float: max |score diff| {a['max_abs_diff']:.1e}, top-1 agreement {a['top1_agreement']:.0%}, "
            f"same label ranking {a['same_ranking']:.0%} of clips, mean Kendall tau {a['kendall_tau']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
