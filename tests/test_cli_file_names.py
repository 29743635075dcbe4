"""A file name that is not UTF-8 (legal on Linux) is read, judged and shown like any other.

soundfile encoded the name strictly as UTF-8, so such a file stopped ``detect`` and
``watermark detect`` with an error that named no file, before the files after it were read,
and ``scan --report`` scanned everything and then failed to write the page. Every output
shows the odd byte escaped (``\\xff``) and stays valid UTF-8.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from guard.cli import cli, main

FAST = ["--no-detector", "--public-backends", "none"]


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_tone(path: str | Path, rate: int = 16000, seconds: float = 1.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(os.fsencode(path), 0.3 * np.sin(2 * np.pi * 440 * t), rate)


@pytest.fixture()
def folder(tmp_path):
    """``nb/`` with a.wav, bad<0xff>name.wav and z.wav, in that order."""
    nb = tmp_path / "nb"
    nb.mkdir()
    for name in (b"a.wav", b"bad\xffname.wav", b"z.wav"):
        write_tone(os.fsdecode(os.fsencode(nb) + b"/" + name))
    return nb


def json_paths(stdout_bytes: bytes) -> list[dict]:
    lines = [json.loads(line) for line in stdout_bytes.decode("utf-8").splitlines()]
    assert all("error" not in line for line in lines), lines
    return [line["path"] for line in lines]


def expected(nb: Path) -> list[str]:
    return [f"{nb}/a.wav", f"{nb}/bad\\xffname.wav", f"{nb}/z.wav"]


def test_detect_and_watermark_detect_read_every_file_and_escape_the_name(folder, tmp_path):
    key = tmp_path / "org.key"
    assert invoke("watermark", "keygen", key).exit_code == 0
    for command in (["detect"], ["watermark", "detect", "--key", key]):
        result = invoke(*command, folder, "--json")
        assert result.exit_code == 0, result.output
        assert json_paths(result.stdout_bytes) == expected(folder)
    plain = invoke("watermark", "detect", "--key", key, folder)
    assert plain.exit_code == 0, plain.output
    assert f"{folder}/bad\\xffname.wav: no keyed mark" in plain.stdout


def test_scan_writes_the_report_and_json_lines_with_the_name_escaped(folder, tmp_path):
    report = tmp_path / "nb.html"
    result = invoke("scan", folder, "--json", "--report", report, *FAST)
    assert result.exit_code == 0, result.output
    assert json_paths(result.stdout_bytes) == expected(folder)
    page = report.read_bytes().decode("utf-8")
    assert f"{folder}/bad\\xffname.wav" in page

    plain = invoke("scan", folder, *FAST)
    assert plain.exit_code == 0, plain.output
    assert f"{folder}/bad\\xffname.wav: ALLOW" in plain.stdout


def test_a_file_with_such_a_name_that_fails_is_named_and_the_others_still_run(folder, tmp_path):
    broken = os.fsdecode(os.fsencode(folder) + b"/broken\xfe.wav")
    Path(broken).write_bytes(b"RIFF not really a wave file")
    key = tmp_path / "org.key"
    assert invoke("watermark", "keygen", key).exit_code == 0
    for command in (["watermark", "detect", "--key", key], ["scan", *FAST]):
        result = invoke(*command, folder, "--json")
        assert result.exit_code == 1, result.output
        lines = [json.loads(line) for line in result.stdout_bytes.decode("utf-8").splitlines()]
        assert [line["path"] for line in lines] == [
            f"{folder}/a.wav",
            f"{folder}/bad\\xffname.wav",
            f"{folder}/broken\\xfe.wav",
            f"{folder}/z.wav",
        ]
        assert lines[2]["error"].startswith(f"{folder}/broken\\xfe.wav: is not a WAV")
        assert "error" not in lines[3]


def run_main(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    """The console script itself (its error handling is outside the click group)."""
    monkeypatch.setattr("sys.argv", ["audioguard", *(str(a) for a in args)])
    with pytest.raises(SystemExit) as stop:
        main()
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_key_file_names_are_escaped_in_errors_and_messages(tmp_path, monkeypatch, capsys):
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/a\xff"))
    odd.mkdir()
    (tmp_path / "b").mkdir()
    shown = f"{tmp_path}/a\\xff"
    result = invoke("watermark", "keygen", odd / "org.key")
    assert result.exit_code == 0 and f"wrote a new key to {shown}/org.key" in result.output
    assert invoke("watermark", "keygen", tmp_path / "b" / "org.key").exit_code == 0
    sample = tmp_path / "tone.wav"
    write_tone(sample)

    code, _, err = run_main(
        monkeypatch, capsys, "watermark", "detect", sample, "--key", odd / "x.key"
    )
    assert code == 1 and f"error: {shown}/x.key: key file not found" in err
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "scan",
        sample,
        *FAST,
        "--key",
        odd / "org.key",
        "--key",
        tmp_path / "b" / "org.key",
    )
    assert code == 1 and f"the keys {shown}/org.key and {tmp_path}/b/org.key" in err
    assert "\udcff" not in err
