"""A site's labelled voice manifest made of the session's real recordings, and the CLI runner the
calibration tests drive it with (shared by test_probability_calibration and test_conformal)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Mapping

from click.testing import CliRunner


def write_voice_manifest(root: Path, audio_clips: Mapping[str, Path], rows: Mapping[str, tuple]) -> Path:
    """``root/site/voice.csv`` with a ``clips/`` folder beside it: one row per ``rows`` entry
    (clip key → (background_noise, speech_present, verdict)), each clip copied under its key."""
    clips = root / "site" / "clips"
    clips.mkdir(parents=True)
    with open(root / "site" / "voice.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "background_noise", "speech_present", "verdict"])
        for key, (noise, speech, verdict) in rows.items():
            src = audio_clips[key]
            shutil.copy(src, clips / f"{key}{src.suffix}")
            writer.writerow([f"clips/{key}{src.suffix}", noise, speech, verdict])
    return root / "site" / "voice.csv"


def run_cli(args):
    from medzero.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
