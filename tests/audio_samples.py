"""Make real test recordings with espeak-ng, sox and ffmpeg.

Plain functions that take an output directory and return the path they wrote; tests call them
from fixtures. Every sox call uses ``-R`` (repeatable random numbers for noise and dither), so the
files are the same on every run.

:func:`missing_tools` names the command-line tools that are not installed, for ``pytest.skip``.
"""
from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
import wave
from pathlib import Path

DEFAULT_TEXT = (
    "The patient reports a dry cough and shortness of breath for three days. "
    "No fever. Breathing sounds are clear on the left side."
)

TOOLS = ("espeak-ng", "sox", "ffmpeg")

# ffmpeg arguments per target format; "amr" is chosen at run time from what ffmpeg can encode.
_FFMPEG_CODECS = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    "ogg": ["-c:a", "libopus", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "128k"],
}


def missing_tools() -> list[str]:
    """The tools in :data:`TOOLS` that are not on ``PATH``."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(*args: str | Path) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stderr


def sox(*args: str | Path) -> str:
    """Run ``sox -R -q ...``; returns its stderr (where ``stats`` reports)."""
    return _run("sox", "-R", "-q", *args)


def rms_db(path: Path) -> float:
    """RMS level of a file in dBFS, as ``sox stats`` measures it."""
    match = re.search(r"RMS lev dB\s+(-?[\d.]+|-inf)", sox(path, "-n", "stats"))
    if match is None:
        raise RuntimeError(f"sox stats gave no RMS level for {path}")
    return float(match.group(1))


def duration_s(path: Path) -> float:
    """Duration of an audio file in seconds, from its header (``soxi -D``)."""
    return float(subprocess.check_output(["soxi", "-D", str(path)], text=True))


def speech_wav(out_dir: Path, text: str = DEFAULT_TEXT, *, name: str = "speech", seconds: float | None = None) -> Path:
    """espeak-ng speech as 16-bit mono WAV at 22050 Hz; looped or cut to ``seconds`` if given."""
    path = Path(out_dir) / f"{name}.wav"
    _run("espeak-ng", "-v", "en", "-w", path, text)
    if seconds is None:
        return path
    return long_speech(out_dir, seconds, speech=path, name=f"{name}_{seconds:g}s")


def long_speech(out_dir: Path, seconds: float, *, speech: Path | None = None, name: str | None = None) -> Path:
    """Speech repeated until it lasts exactly ``seconds``."""
    speech = speech or speech_wav(out_dir, name="speech_for_long")
    repeats = int(seconds // duration_s(speech))
    path = Path(out_dir) / f"{name or f'long_{seconds:g}s'}.wav"
    sox(speech, path, "repeat", str(repeats), "trim", "0", f"{seconds}")
    return path


def noise_only(
    out_dir: Path, seconds: float, *, rate: int = 22050, level: float = 0.1, color: str = "pinknoise"
) -> Path:
    """Seeded noise (``whitenoise``, ``pinknoise`` or ``brownnoise``) of the given amplitude."""
    path = Path(out_dir) / f"{color}_{seconds:g}s_{rate}.wav"
    sox("-n", "-r", str(rate), "-c", "1", "-b", "16", path, "synth", f"{seconds}", color, "vol", f"{level}")
    return path


def mix_noise(speech: Path, out_dir: Path, snr_db: float, *, color: str = "pinknoise") -> Path:
    """``speech`` plus seeded noise whose RMS is ``snr_db`` below the speech's overall RMS.

    Both are scaled by 0.5 before mixing so that the sum does not clip.
    """
    rate = int(subprocess.check_output(["soxi", "-r", str(speech)], text=True))
    noise = noise_only(out_dir, duration_s(speech), rate=rate, level=0.3, color=color)
    gain = 10 ** ((rms_db(speech) - snr_db - rms_db(noise)) / 20)
    path = Path(out_dir) / f"{speech.stem}_{color}_{snr_db:g}dB.wav"
    sox("-m", "-v", "0.5", speech, "-v", f"{0.5 * gain:.6f}", noise, "-b", "16", path)
    return path


def telephone(speech: Path, out_dir: Path, *, rate: int = 8000) -> Path:
    """Narrow-band telephone audio: 300-3400 Hz band-pass at 8 kHz, then saved at ``rate``."""
    path = Path(out_dir) / f"{speech.stem}_telephone_{rate}.wav"
    sox(speech, "-b", "16", path, "sinc", "300-3400", "rate", "8000", "rate", str(rate))
    return path


def clipped(speech: Path, out_dir: Path, *, gain_db: float = 24) -> Path:
    """``speech`` amplified by ``gain_db`` with hard clipping (no limiter), as 16-bit WAV."""
    path = Path(out_dir) / f"{speech.stem}_clipped.wav"
    sox(speech, "-b", "16", path, "gain", f"{gain_db}")
    return path


def stereo(left: Path, right: Path, out_dir: Path) -> Path:
    """A 2-channel WAV with ``left`` and ``right`` as its channels (the same length and rate)."""
    path = Path(out_dir) / f"{left.stem}_{right.stem}_stereo.wav"
    sox("-M", left, right, "-b", "16", path)
    return path


@functools.cache
def _ffmpeg_encoders() -> str:
    return subprocess.check_output(["ffmpeg", "-hide_banner", "-encoders"], text=True, stderr=subprocess.STDOUT)


def convert(path: Path, out_dir: Path, fmt: str) -> Path:
    """Encode ``path`` as ``fmt``: wav, flac, mp3, ogg (Opus), m4a (AAC) or amr (AMR-NB at 8 kHz).

    AMR uses ffmpeg's AMR-NB encoder when it has one, else sox's ``amr-nb`` writer (which uses
    DTX, so silent stretches become comfort-noise frames).
    """
    out = Path(out_dir) / f"{path.stem}-{fmt}.{fmt}"
    if fmt == "amr":
        encoder = next((e for e in ("libopencore_amrnb", "amr_nb") if f" {e} " in _ffmpeg_encoders()), None)
        if encoder is None:
            sox(path, "-t", "amr-nb", out, "rate", "8000")
            return out
        codec = ["-ar", "8000", "-ac", "1", "-c:a", encoder, "-b:a", "12.2k"]
    else:
        codec = _FFMPEG_CODECS[fmt]
    _run("ffmpeg", "-y", "-loglevel", "error", "-i", path, "-map_metadata", "-1", "-fflags", "+bitexact",
         "-flags:a", "+bitexact", *codec, out)
    return out


def pcm_wav(path: Path, out_dir: Path, *, bits: int = 24, floating: bool = False) -> Path:
    """``path`` re-encoded as a WAV of ``bits``-bit integer PCM, or IEEE float when ``floating``."""
    kind = "f" if floating else "s"
    out = Path(out_dir) / f"{path.stem}-{kind}{bits}.wav"
    sox(path, "-b", str(bits), "-e", "floating-point" if floating else "signed-integer", out)
    return out


def vorbis(path: Path, out_dir: Path) -> Path:
    """``path`` as Ogg Vorbis (``convert(..., "ogg")`` writes Opus)."""
    out = Path(out_dir) / f"{path.stem}-vorbis.ogg"
    _run("ffmpeg", "-y", "-loglevel", "error", "-i", path, "-map_metadata", "-1", "-fflags", "+bitexact",
         "-c:a", "libvorbis", "-q:a", "3", out)
    return out


def silence(out_dir: Path, seconds: float, *, rate: int, channels: int, fmt: str) -> Path:
    """Digital silence compressed by ffmpeg as ``fmt`` (flac, m4a or ogg): a small file that decodes
    to ``seconds * rate * channels`` samples, which is how a few kB can ask for gigabytes."""
    codec = {"flac": ["-c:a", "flac"], "m4a": ["-c:a", "aac"], "ogg": ["-c:a", "libopus"]}[fmt]
    layout = {1: "mono", 2: "stereo"}[channels]
    out = Path(out_dir) / f"silence_{seconds:g}s_{rate}_{channels}ch.{fmt}"
    _run("ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl={layout}", "-t", f"{seconds}",
         "-fflags", "+bitexact", *codec, out)
    return out


def short_header_long_stream(out_dir: Path, seconds: float, *, rate: int = 48000) -> Path:
    """Raw AAC (ADTS) that starts with 3 s of loud noise at 256 kb/s, then silence to ``seconds``.

    ADTS has no length field: FFmpeg estimates one from the first frames' bit rate, about 20 s here,
    so only a decoder that counts what it decodes notices the stream is ``seconds`` long.
    """
    out = Path(out_dir) / f"noise_then_silence_{seconds:g}s.aac"
    _run("ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"anoisesrc=r={rate}:a=0.5:d=3:seed=1",
         "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-filter_complex",
         f"[0][1]concat=n=2:v=0:a=1,atrim=0:{seconds}", "-c:a", "aac", "-b:a", "256k", "-f", "adts", out)
    return out


def one_hz_wav(path: Path, size: int = 10_700) -> Path:
    """The reported file: 10.7 kB of 8-bit mono PCM declared at 1 Hz (2.97 hours: under the time limit)."""
    n = size - 44
    samples = bytes(128 + (i % 50) - 25 for i in range(n))
    header = b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 1, 1, 1, 8)
    path.write_bytes(header + b"data" + struct.pack("<I", n) + samples)
    return path


def silent_wav(path: Path, seconds: float = 3.0, rate: int = 16000) -> Path:
    """``seconds`` of digital silence, 16-bit mono WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return path
