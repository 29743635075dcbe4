"""``scan --report`` and ``audit DIR --report`` never replace a file the user still needs.

The report is written after the whole scan, by renaming over whatever is there: before these
checks, ``--report`` naming the key, the audit log or an input replaced it with HTML and
exited 0. Each refusal comes before the scan, as one sentence, and leaves every file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from guard import audio as audio_io
from guard.cli import cli
from guard.cli_scan import check_report_path

FAST = ["--no-detector", "--public-backends", "none"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_tone(path: Path, rate: int = 16000, seconds: float = 1.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)
    return path


@pytest.fixture()
def setup(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    clip = write_tone(folder / "x.wav")
    key = tmp_path / "org.key"
    assert invoke("watermark", "keygen", key).exit_code == 0
    (tmp_path / "linked.html").symlink_to(clip)
    os.link(clip, tmp_path / "hard.html")
    return {"root": tmp_path, "folder": folder, "clip": clip, "key": key}


def refused(args: list[object], report: Path, what: str, untouched: list[Path]) -> None:
    before = {p: p.read_bytes() for p in untouched}
    for command in (["scan"], ["audit"]):
        result = invoke(*command, *args, "--report", report, *FAST)
        assert result.exit_code == 1, result.output
        assert result.stderr.strip() == (
            f"Error: {report}: is {what}; refusing to overwrite it with the report"
        )
        assert result.stdout == ""  # refused before a single file was screened
        assert {p: p.read_bytes() for p in untouched} == before


def test_a_key_file_is_never_replaced_by_the_report(setup):
    key = setup["key"]
    refused([setup["clip"], "--key", key], key, "a --key file", [key])


def test_the_audit_log_is_never_replaced_even_before_it_exists(setup):
    log = setup["root"] / "clash.jsonl"
    refused([setup["clip"], "--audit-log", log], log, "the --audit-log", [])
    assert not log.exists()  # the scan did not start, so nothing was logged either


def test_an_input_is_never_replaced_also_inside_a_folder_or_through_a_link(setup):
    folder, clip, root = setup["folder"], setup["clip"], setup["root"]
    inside = f"an input in the folder {folder}"
    refused([folder], clip, inside, [clip])
    refused([folder], root / "linked.html", inside, [clip])
    refused([folder], root / "hard.html", inside, [clip])
    refused([clip], clip, "one of the inputs", [clip])


def test_an_existing_file_is_replaced_only_if_it_is_an_earlier_report(setup):
    root, clip = setup["root"], setup["clip"]
    notes = root / "notes.txt"
    notes.write_text("minutes of the audit meeting")
    for command in ("scan", "audit"):
        result = invoke(command, clip, "--report", notes, *FAST)
        assert result.exit_code == 1
        assert "already exists and is not an audioguard report" in result.stderr
    assert notes.read_text() == "minutes of the audit meeting"

    report = root / "report.html"
    for command in ("scan", "audit", "scan"):
        result = invoke(command, clip, "--report", report, *FAST)
        assert result.exit_code == 0, result.output
        assert "audioguard audit report" in report.read_text()


def test_a_new_report_costs_no_second_listing_of_the_input_folders(setup, monkeypatch):
    """A report that does not exist yet cannot be a file in a scanned folder, so the check
    need not list them before the scan lists them again; an existing one still is checked."""
    listed: list[object] = []
    original = audio_io.iter_audio_paths

    def counting(paths, *args, **kwargs):
        listed.append(paths)
        return original(paths, *args, **kwargs)

    monkeypatch.setattr(audio_io, "iter_audio_paths", counting)
    check_report_path(str(setup["root"] / "new.html"), [str(setup["folder"])])
    assert listed == []
    with pytest.raises(click.ClickException, match="is an input in the folder"):
        check_report_path(str(setup["root"] / "hard.html"), [str(setup["folder"])])
    assert listed
