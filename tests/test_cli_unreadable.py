"""Inputs the user may not read, and backend refusals, among other inputs of one command.

The tests run as root in CI, and root reads everything, so a denied permission is played by
``os.access`` and by the file calls that would fail; the rest of each command runs for real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from guard import audio
from guard.cli import cli


def write_tone(path: Path, rate: int = 16000, seconds: float = 1.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    return path


def deny(monkeypatch, *denied: Path) -> None:
    """Make ``os.access`` say no for ``denied``, as it does for a user without permission."""
    real = os.access
    monkeypatch.setattr(audio.os, "access", lambda p, mode: Path(p) not in denied and real(p, mode))


def test_an_unreadable_file_or_folder_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    # `detect` stopped at click's own readability check (exit 2, no JSON, nothing judged);
    # `scan` and `watermark detect` called the file damaged and skipped the folder silently.
    good = write_tone(tmp_path / "good.wav")
    locked = write_tone(tmp_path / "locked.wav")
    closed = tmp_path / "closed"
    closed.mkdir()
    deny(monkeypatch, locked, closed)
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: iter(()))  # as for a closed folder
    for command in (["detect"], ["scan", "--no-detector", "--public-backends", "none"]):
        out = CliRunner().invoke(cli, [*command, str(locked), str(closed), str(good), "--json"])
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert out.exit_code == 1, out.output
        assert [line["path"] for line in lines] == [str(locked), str(closed), str(good)]
        assert lines[0]["error"] == f"{locked}: cannot be read (permission denied)"
        assert lines[1]["error"] == (
            f"{closed}: is a folder that cannot be read (permission denied)"
        )
        assert "error" not in lines[2]


def test_an_unsearchable_output_folder_is_blamed_not_the_source(tmp_path, monkeypatch, samples_dir):
    # Creating the temporary file fails, and so did removing it in `finally`: that second
    # error replaced the first, and the user read the source's name beside the temp file's.
    source = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    key = tmp_path / "org.key"
    assert CliRunner().invoke(cli, ["watermark", "keygen", str(key)]).exit_code == 0
    closed = tmp_path / "closed"
    closed.mkdir()
    real_open, real_unlink = Path.open, Path.unlink

    def refuse_inside(real):
        def call(self, *args, **kwargs):
            if self.parent == closed:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        return call

    monkeypatch.setattr(Path, "open", refuse_inside(real_open))
    monkeypatch.setattr(Path, "unlink", refuse_inside(real_unlink))
    target = closed / "marked.wav"
    out = CliRunner().invoke(
        cli, ["watermark", "embed", str(source), str(target), "--key", str(key), "--payload", "1"]
    )
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1] == (
        f"error: {target}: could not be written (Permission denied)"
    )


def test_a_backend_refusal_names_its_file_among_others(tmp_path, samples_dir):
    short = write_tone(tmp_path / "short.wav", seconds=0.5)
    sample = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    out = CliRunner().invoke(
        cli, ["watermark", "detect", str(short), str(sample), "--backend", "audioseal"]
    )
    assert out.exit_code == 1
    assert f"error: {short}: " in out.output and "needs at least 1 s" in out.output
    assert f"{sample}: no audioseal mark" in out.output
