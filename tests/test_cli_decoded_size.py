"""Whole-file commands refuse, from the header, audio that would decode past the memory budget.

The duration limit alone let an hour at 192 kHz and 8 channels (11 GB of float32) through
``detect`` and ``scan``; the service had its own bound, the CLI none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from guard import audio
from guard.cli import cli


def write_tones(path: Path, rate: int, channels: int) -> Path:
    t = np.arange(rate) / rate
    sf.write(
        path,
        np.stack([0.3 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)], 1),
        rate,
    )
    return path


def test_detect_and_scan_refuse_a_file_past_the_budget_and_finish_the_others(tmp_path, monkeypatch):
    # A budget of 50 samples per second of the hour's limit is 180,000: one second at
    # 48 kHz with 4 channels (192,000) passes it, one second of 16 kHz mono does not come close.
    monkeypatch.setattr(audio, "SAMPLES_PER_LIMIT_SECOND", 50)
    wide = write_tones(tmp_path / "wide.wav", 48000, 4)
    small = write_tones(tmp_path / "small.wav", 16000, 1)
    for command in (["detect"], ["scan", "--no-detector", "--public-backends", "none"]):
        out = CliRunner().invoke(cli, [*command, str(wide), str(small), "--json"])
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert out.exit_code == 1, out.output
        assert [line["path"] for line in lines] == [str(wide), str(small)]
        assert lines[0]["error"] == (
            f"{wide}: is 1.0 s at 48000 Hz with 4 channels, over the limit of 180,000 samples "
            "(3600 s of 48 kHz stereo)"
        )
        assert "error" not in lines[1]
