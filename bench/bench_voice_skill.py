"""Voice-quality skill: medzero's signal-only verdict on a labelled set of degraded speech.

The set is built here, from speech available on this machine: espeak-ng voices reading clinical
sentences (several voices, several sentences), mixed with numpy at a known SNR and processed by
sox and ffmpeg. Two disjoint splits: TUNING (its own voices and sentences) is where the limits of
``prompts/voice_quality.yaml`` were chosen (``--fit`` runs medzero's own ``calibrate_metrics`` on
it); HELD-OUT (other voices, other sentences, other noise seeds) is what the figures report.

Conditions, each applied to every base clip of a split:

- noise x SNR: white, pink, brown, babble (4 other espeak speakers), music (sox ``pluck`` chords),
  hum (50 or 60 Hz and harmonics) at 30, 20, 10, 5 and 0 dB; the SNR is the speech's RMS over
  the whole clip against the noise's (the usual mixing definition);
- clean; clipping light (+8 dB) and heavy (+20 dB) over a -6 dBFS peak, hard; packet loss 10 % and 35 % (20 ms packets
  zeroed at random); AMR-NB 12.2 kbit/s (ffmpeg's encoder when it has one, else sox's ``amr-nb``
  writer, which the output names); telephone band (300-3400 Hz at 8 kHz); MP3 at 16 kbit/s;
  reverberation (sox ``reverb 80``).

Truth: *fine* = SNR >= 20 dB, clean, telephone; *re-record* = white/pink/babble at <= 5 dB,
heavy clipping, packet loss >= 30 %. Other conditions are reported, not scored. A fine clip is
right when medzero does not say re-record (accept or review); a re-record clip only when it says
re-record (``not_applicable`` counts as a miss).

Printed: per-condition verdict counts; balanced accuracy; the SNR estimate's mean absolute error
against the true SNR beside WADA-SNR's (``medzero.audio.quality.wada_snr``) on the same files;
Spearman correlation of DNSMOS OVRL with the true SNR; the time of a signal-only classify of an
8 s clip with the new models (Silero VAD, DNSMOS) and without them (a child process where
``sys.modules["silero_vad"] = None`` and ``sys.modules["speechmos"] = None``, so the plug-in falls
back to its heuristics). No CLAP weights are used (they cannot be downloaded here): every verdict
is signal-only, and the output says so.

    python bench/bench_voice_skill.py [--quick] [--fit] [--split both|tuning|held_out] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000
SECONDS = 8.0
SNRS = (30, 20, 10, 5, 0)
NOISES = ("white", "pink", "brown", "babble", "music", "hum")
OTHER = ("clean", "clip_light", "clip_heavy", "loss_10", "loss_35", "amr_nb", "telephone", "mp3_16k", "reverb")

TEXTS = {
    "tuning": [
        "I have had a dry cough for three days. It is worse at night, and I feel short of breath when I climb the stairs.",
        "My chest feels tight in the morning. I took my inhaler twice today. There is no fever, but I am very tired.",
    ],
    "held_out": [
        "The pain started in my lower back last week. It spreads to my left leg. Sitting for a long time makes it worse.",
        "My daughter has a rash on her arms. She has been scratching it since Sunday. We have not changed the soap.",
    ],
}
VOICES = {
    "tuning": ["en-us", "en-gb+m3", "en-gb-scotland+f2", "en-029+m5"],
    "held_out": ["en-gb-x-rp+f3", "en-us-nyc+m2", "en-gb-x-gbclan+f4", "en+m7"],
}
BABBLE = [("en-gb-x-gbcwmd", "Did you see the match on Saturday? The second half was much better than the first."),
          ("en-us+f1", "We need to buy bread, milk and some apples before the shop closes at six."),
          ("en-gb+m6", "The train was late again this morning, so I missed the start of the meeting."),
          ("en-029+f5", "Her brother moved to the city last year and now works in a small restaurant.")]
CHORDS = [("C4", "E4", "G4"), ("F3", "A3", "C4"), ("G3", "B3", "D4"), ("A3", "C4", "E4")]


@dataclass(frozen=True)
class Clip:
    path: Path
    split: str
    condition: str  # "pink_5", "clean", "loss_35", ...
    truth: str | None  # "fine", "re-record" or None (reported, not scored)
    snr: float | None  # the true mixing SNR, for noise conditions
    noise: str | None


def truth_of(condition: str) -> str | None:
    """The label the issue fixes for a condition; None: reported, not scored."""
    if condition in ("clean", "telephone"):
        return "fine"
    if condition in ("clip_heavy", "loss_35"):
        return "re-record"
    noise, _, snr = condition.rpartition("_")
    if noise in NOISES:
        if int(snr) >= 20:
            return "fine"
        if noise in ("white", "pink", "babble") and int(snr) <= 5:
            return "re-record"
    return None


# -- building the set ------------------------------------------------------------------------------


def _run(*args) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()[:300]}")


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if rate != RATE:
        import soxr

        x = soxr.resample(x, rate, RATE, quality="HQ").astype(np.float32)
    return x


def _write(path: Path, x: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(str(path), np.clip(x, -1, 1), RATE, subtype="PCM_16")
    return path


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    return np.resize(x, n) if len(x) < n else x[:n]


def speech(work: Path, voice: str, text: str, name: str) -> np.ndarray:
    """espeak-ng speech at 16 kHz, 0.4 s of lead-in, looped or cut to 8 s, at -26 dBFS RMS."""
    wav = work / f"{name}.wav"
    _run("espeak-ng", "-v", voice, "-s", "150", "-w", wav, text)
    x = np.concatenate([np.zeros(int(0.4 * RATE), np.float32), _read(wav), np.zeros(int(0.3 * RATE), np.float32)])
    x = _fit_length(x, int(SECONDS * RATE))
    return x * (10 ** (-26 / 20) / _rms(x))


def noise(kind: str, n: int, rng: np.random.Generator, work: Path, babble: np.ndarray, music: np.ndarray) -> np.ndarray:
    """``n`` samples of one noise kind, unit RMS; babble and music from a random offset."""
    if kind in ("white", "pink", "brown"):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
        spectrum *= {"white": 1.0, "pink": f ** -0.5, "brown": f ** -1.0}[kind]
        x = np.fft.irfft(spectrum, n)
    elif kind == "babble":
        x = np.roll(babble, int(rng.integers(len(babble))))[:n]
    elif kind == "music":
        x = np.roll(music, int(rng.integers(len(music))))[:n]
    else:  # mains hum with harmonics, 50 or 60 Hz
        base = 50.0 if rng.random() < 0.5 else 60.0
        t = np.arange(n) / RATE
        x = sum((1.0 / k) * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 12))
    return (x / _rms(x)).astype(np.float32)


def babble_track(work: Path) -> np.ndarray:
    """Four other espeak speakers talking at once, looped to twice the clip length."""
    n = int(2 * SECONDS * RATE)
    voices = [_fit_length(speech(work, v, t, f"babble{i}"), n) for i, (v, t) in enumerate(BABBLE)]
    voices = [np.roll(v, i * 7919) for i, v in enumerate(voices)]
    return sum(voices).astype(np.float32)


def music_track(work: Path) -> np.ndarray:
    """sox-synthesised plucked chords, 0.5 s each, looped to twice the clip length."""
    parts = []
    for i, chord in enumerate(CHORDS):
        path = work / f"chord{i}.wav"
        _run("sox", "-R", "-n", "-r", str(RATE), "-c", str(len(chord)), path, "synth", "0.5",
             *[a for note in chord for a in ("pluck", note)])
        parts.append(_read(path))
    return _fit_length(np.concatenate(parts), int(2 * SECONDS * RATE))


def amr_tool() -> str:
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    for name in ("libopencore_amrnb", "amr_nb"):
        if f" {name} " in encoders:
            return f"ffmpeg {name}"
    return "sox amr-nb (ffmpeg here has no AMR-NB encoder)"


def degrade(condition: str, x: np.ndarray, work: Path, stem: str, rng: np.random.Generator) -> Path:
    """One processed condition of speech ``x`` written to a file (its real format where it has one)."""
    base = _write(work / f"{stem}.wav", x)
    if condition == "clean":
        return base
    if condition.startswith("clip_"):  # peak at -6 dBFS, then the gain, hard-clipped at full scale
        gain_db = 8 if condition == "clip_light" else 20
        return _write(base, np.clip(x * (0.5 / np.abs(x).max()) * 10 ** (gain_db / 20), -1, 1))
    if condition.startswith("loss_"):
        share = int(condition.split("_")[1]) / 100
        packet = int(0.02 * RATE)
        y = x.copy()
        for i in np.flatnonzero(rng.random(len(y) // packet) < share):
            y[i * packet:(i + 1) * packet] = 0.0
        return _write(base, y)
    out = work / f"{stem}_{condition}"
    if condition == "amr_nb":
        tool = amr_tool()
        if tool.startswith("ffmpeg"):
            _run("ffmpeg", "-y", "-loglevel", "error", "-i", base, "-ar", "8000", "-ac", "1", "-c:a", tool.split()[1], "-b:a", "12.2k", f"{out}.amr")
        else:
            _run("sox", "-R", base, "-t", "amr-nb", f"{out}.amr", "rate", "8000")
        return Path(f"{out}.amr")
    if condition == "telephone":
        _run("sox", "-R", base, "-b", "16", f"{out}.wav", "sinc", "300-3400", "rate", "8000")
        return Path(f"{out}.wav")
    if condition == "mp3_16k":
        _run("ffmpeg", "-y", "-loglevel", "error", "-i", base, "-c:a", "libmp3lame", "-b:a", "16k", f"{out}.mp3")
        return Path(f"{out}.mp3")
    if condition == "reverb":
        _run("sox", "-R", base, "-b", "16", f"{out}.wav", "reverb", "80", "50", "100")
        return Path(f"{out}.wav")
    raise ValueError(condition)


def build(work: Path, *, splits=("tuning", "held_out"), voices: int = 4, texts: int = 2,
          conditions: list[str] | None = None, snrs=SNRS, noises=NOISES) -> list[Clip]:
    """The labelled set: every condition of every (voice, sentence) pair of each split."""
    work.mkdir(parents=True, exist_ok=True)
    babble, music = babble_track(work), music_track(work)
    if conditions is None:
        conditions = [f"{kind}_{snr}" for kind in noises for snr in snrs] + list(OTHER)
    clips = []
    for split in splits:
        seed = 0 if split == "tuning" else 1
        for vi, voice in enumerate(VOICES[split][:voices]):
            for ti, text in enumerate(TEXTS[split][:texts]):
                name = f"{split}_v{vi}_t{ti}"
                x = speech(work, voice, text, name)
                rng = np.random.default_rng([seed, vi, ti])
                for condition in conditions:
                    kind, _, level = condition.rpartition("_")
                    stem = f"{name}_{condition}"
                    if kind in NOISES:
                        n = noise(kind, len(x), rng, work, babble, music) * (_rms(x) / 10 ** (int(level) / 20))
                        mix = x + n
                        path = _write(work / f"{stem}.wav", mix * min(1.0, 0.9 / np.abs(mix).max()))
                        clips.append(Clip(path, split, condition, truth_of(condition), float(level), kind))
                    else:
                        clips.append(Clip(degrade(condition, x, work, stem, rng), split, condition, truth_of(condition), None, None))
    return clips


# -- measuring -------------------------------------------------------------------------------------


def classify(clips: list[Clip]) -> list:
    import medzero

    results = medzero.Classifier("voice_quality", batch_size=16).classify_batch([str(c.path) for c in clips])
    failed = [(c.path.name, r.error) for c, r in zip(clips, results) if r.error]
    if failed:
        raise SystemExit(f"{len(failed)} clips failed, first: {failed[0]}")
    return results


def balanced_accuracy(clips: list[Clip], results: list) -> tuple[float, dict[str, tuple[int, int]]]:
    per = {"fine": [0, 0], "re-record": [0, 0]}
    for c, r in zip(clips, results):
        if c.truth is None:
            continue
        right = (r.verdict in ("accept", "review")) if c.truth == "fine" else r.verdict == "re-record"
        per[c.truth][0] += int(right)
        per[c.truth][1] += 1
    ba = statistics.fmean(ok / n for ok, n in per.values() if n)
    return ba, {k: (ok, n) for k, (ok, n) in per.items()}


def snr_errors(clips: list[Clip], results: list, kinds) -> tuple[float, float | None, int]:
    """Mean absolute error of medzero's snr_db and of WADA-SNR against the true SNR."""
    try:
        from medzero.audio.io import load_audio
        from medzero.audio.quality import wada_snr
    except ImportError:
        wada_snr = None
    ours, wada = [], []
    for c, r in zip(clips, results):
        if c.noise not in kinds:
            continue
        ours.append(abs(r.metrics["snr_db"] - c.snr))
        if wada_snr is not None:
            wada.append(abs(wada_snr(load_audio(str(c.path)).samples) - c.snr))
    return float(np.mean(ours)), (float(np.mean(wada)) if wada else None), len(ours)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


_TIMING = r"""
import sys, time, json
if sys.argv[2] == "without":
    sys.modules["silero_vad"] = None
    sys.modules["speechmos"] = None
import medzero
c = medzero.Classifier("voice_quality")
t0 = time.perf_counter(); first = c.classify(sys.argv[1]); t_first = time.perf_counter() - t0
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter(); r = c.classify(sys.argv[1]); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"first": t_first, "median": times[len(times) // 2], "signal_only": r.signal_only,
                  "metrics": sorted(r.metrics), "torch": "torch" in sys.modules}))
"""


def timing(path: Path, repeats: int, rounds: int = 3) -> dict[str, dict]:
    """Medians over ``rounds`` child processes per side, interleaved."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {"with": [], "without": []}
    for _ in range(rounds):
        for side in runs:
            out = subprocess.run([sys.executable, "-c", _TIMING, str(path), side, str(repeats)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
    return {side: {**rs[0], "median": statistics.median(r["median"] for r in rs), "first": statistics.median(r["first"] for r in rs)}
            for side, rs in runs.items()}


_PROCESS = r"""
import sys
if sys.argv[2] == "without":
    sys.modules["silero_vad"] = None
    sys.modules["speechmos"] = None
from medzero.cli import main
raise SystemExit(main(["classify", sys.argv[1], "--task", "voice_quality", "--format", "json"]))
"""


def process_timing(path: Path, rounds: int = 5) -> dict[str, float]:
    """``medzero classify`` of one clip, process start to exit (what a user waits for), median of
    ``rounds`` interleaved fresh processes per side."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {"with": [], "without": []}
    for _ in range(rounds):
        for side in runs:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", _PROCESS, str(path), side], capture_output=True, env=env, check=True)
            runs[side].append(time.perf_counter() - started)
    return {side: statistics.median(times) for side, times in runs.items()}


def fit_limits(clips: list[Clip], results: list) -> None:
    """medzero's own calibrate_metrics on the tuning split (fine -> accept, re-record -> re-record)."""
    import medzero
    from medzero.evaluation.calibrate import calibrate_metrics

    task = medzero.load_task("voice_quality")
    # every clip here is normalised to -26 dBFS, so its level says nothing a site's recordings would
    print("  rms_dbfs not fitted: every clip of this set is normalised to -26 dBFS")
    task = task.model_copy(update={"metrics": {k: v for k, v in task.metrics.items() if k != "rms_dbfs"}})
    rows = [(c, r) for c, r in zip(clips, results) if c.truth is not None and r.applicable]
    verdicts = ["accept" if c.truth == "fine" else "re-record" for c, _ in rows]
    for f in calibrate_metrics(task, verdicts, [r.metrics for _, r in rows], folds=5):
        cv = f.cv.to_dict() if f.cv else {}
        print(f"  {f.metric} {f.side}: {f.previous:g} -> {'kept' if f.limit is None else f'{f.limit:.6g}'}"
              f"  (n+ {f.n_pos}, n- {f.n_neg}; CV sens {cv.get('sensitivity', float('nan')):.3f}, spec {cv.get('specificity', float('nan')):.3f})"
              + (f"  [{f.skipped}]" if f.skipped else ""))


def report(clips: list[Clip], results: list, split: str) -> dict:
    rows = [(c, r) for c, r in zip(clips, results) if c.split == split]
    cs, rs = [c for c, _ in rows], [r for _, r in rows]
    conditions = list(dict.fromkeys(c.condition for c in cs))
    print(f"\n== {split.upper()} split: {len(cs)} clips ({len({c.path.name.split('_t')[0] for c in cs})} voices) ==")
    print(f"{'condition':<12} {'truth':<10} {'accept':>6} {'review':>6} {'re-rec':>6} {'n/a':>4}  mean snr_db  mean mos_ovrl")
    for cond in conditions:
        sub = [r for c, r in rows if c.condition == cond]
        counts = [sum(r.verdict == v for r in sub) for v in ("accept", "review", "re-record", "not_applicable")]
        mos = [r.metrics.get("mos_ovrl") for r in sub]
        mos_text = f"{np.mean(mos):.2f}" if all(m is not None for m in mos) else "–"
        print(f"{cond:<12} {truth_of(cond) or '—':<10} {counts[0]:>6} {counts[1]:>6} {counts[2]:>6} {counts[3]:>4}  "
              f"{np.mean([r.metrics['snr_db'] for r in sub]):>10.1f}  {mos_text:>12}")
    ba, per = balanced_accuracy(cs, rs)
    print(f"balanced accuracy {ba:.3f} (fine kept {per['fine'][0]}/{per['fine'][1]}, re-record caught {per['re-record'][0]}/{per['re-record'][1]}); target >= 0.95")
    broad = ("white", "pink", "babble", "music")
    mae, wada, n = snr_errors(cs, rs, broad)
    wada_text = "WADA-SNR not available (medzero.audio.quality.wada_snr missing)" if wada is None else f"WADA-SNR {wada:.2f} dB"
    print(f"SNR MAE over {n} clips of broadband noise ({', '.join(broad)}): medzero {mae:.2f} dB, {wada_text}; target: medzero below WADA-SNR")
    mae_b, wada_b, n_b = snr_errors(cs, rs, ("brown", "hum"))
    print(f"  (not scored) brown noise and hum, {n_b} clips: medzero {mae_b:.2f} dB, WADA-SNR "
          + ("–" if wada_b is None else f"{wada_b:.2f} dB") + " (speech-band SNR is meant to read these higher than the mixing SNR)")
    noisy = [(c, r) for c, r in rows if c.noise is not None]
    if all("mos_ovrl" in r.metrics for _, r in noisy):
        rho = spearman([c.snr for c, _ in noisy], [r.metrics["mos_ovrl"] for _, r in noisy])
        per_kind = ", ".join(f"{k} {spearman([c.snr for c, _ in noisy if c.noise == k], [r.metrics['mos_ovrl'] for c, r in noisy if c.noise == k]):.2f}"
                             for k in NOISES)
        print(f"DNSMOS OVRL vs true SNR, Spearman: {rho:.3f} over {len(noisy)} noisy clips ({per_kind})")
    else:
        rho = None
        print("DNSMOS OVRL vs true SNR: mos_ovrl not measured (speechmos missing, or the metric is not in this medzero)")
    return {"balanced_accuracy": ba, "snr_mae": mae, "wada_mae": wada, "spearman_mos_snr": rho}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 voices x 1 sentence per split (a smoke run)")
    ap.add_argument("--fit", action="store_true", help="print the limits calibrate_metrics fits on the TUNING split")
    ap.add_argument("--repeats", type=int, default=5, help="classifies per timing process")
    ap.add_argument("--keep", metavar="DIR", help="build the set here and keep it")
    ap.add_argument("--split", choices=("both", "tuning", "held_out"), default="both", help="build and classify only this split")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print("signal-only: no CLAP weights here (they cannot be downloaded); every verdict comes from the measurement rules")
    print(f"AMR-NB encoder: {amr_tool()}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="voice_skill_"))
    try:
        t0 = time.perf_counter()
        splits = ("tuning", "held_out") if args.split == "both" else (args.split,)
        clips = build(work, splits=splits, voices=2 if args.quick else 4, texts=1 if args.quick else 2)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = classify(clips)
        t_classify = time.perf_counter() - t0
        print(f"built {len(clips)} clips in {t_build:.0f} s; classified in {t_classify:.0f} s ({t_classify / len(clips) * 1000:.0f} ms each)")
        if not all(r.signal_only for r in results):
            print("warning: some verdicts used a CLAP model (found in the cache); the figures are not signal-only")
        if args.fit and "tuning" in splits:
            tuning = [(c, r) for c, r in zip(clips, results) if c.split == "tuning"]
            print("\nlimits fitted by calibrate_metrics on the TUNING split (youden):")
            fit_limits([c for c, _ in tuning], [r for _, r in tuning])
        held = {split: report(clips, results, split) for split in splits}
        clip8 = next(c.path for c in clips if c.condition == "clean")
        t = timing(clip8, args.repeats)
        added = t["with"]["median"] / t["without"]["median"] - 1
        print(f"\nsignal-only classify of an 8 s clip (median of {args.repeats} after the first, 3 processes each): "
              f"with VAD+DNSMOS {t['with']['median'] * 1000:.1f} ms, without {t['without']['median'] * 1000:.1f} ms: "
              f"+{added * 100:.0f}% (target <= 15%); first call {t['with']['first'] * 1000:.0f} ms vs {t['without']['first'] * 1000:.0f} ms; "
              f"torch imported: {t['with']['torch']}")
        p = process_timing(clip8)
        added_process = p["with"] / p["without"] - 1
        print(f"medzero classify of the same clip, process start to exit (median of 5 fresh processes each): "
              f"with {p['with']:.2f} s, without {p['without']:.2f} s: +{added_process * 100:.0f}% (target <= 15%)")
        print(json.dumps({"held_out": held, "added_time": added, "added_process_time": added_process}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
