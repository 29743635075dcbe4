"""The auditor's report: its numbers, its escaping of hostile names, and how a browser shows it."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from guard.cli import cli
from guard.report import is_report, render_report, report_path_problem, summarize, write_report
from policies import head_hash

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
FAST = ["--public-backends", "none"]
HOSTILE = "<script>alert(1)</script>.wav"
VERSIONS = {"policy": {"name": "p", "version": 1}, "model": None, "watermark_backends": []}


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, samples_dir):
    """``audit DIR`` over real clips: a marked one, a hostile name, a broken file, an audit log."""
    root = tmp_path_factory.mktemp("audit")
    key = root / "org.key"
    assert invoke("watermark", "keygen", key).exit_code == 0
    folder = root / "incoming"
    # A file name cannot hold "/", so the hostile name spans a folder and a file.
    hostile = folder / "<script>alert(1)<" / "script>.wav"
    hostile.parent.mkdir(parents=True)
    shutil.copy(samples_dir / "sfx" / "freedesktop_alarm_clock.flac", folder / "alarm.flac")
    shutil.copy(samples_dir / "music" / "drascula_track6.flac", folder / "a\" onload='x' &.flac")
    embed = invoke(
        "watermark",
        "embed",
        samples_dir / "speech" / "fillets_society_stebet0.flac",
        folder / "marked.flac",
        "--key",
        key,
        "--payload",
        "0badf00d",
    )
    assert embed.exit_code == 0, embed.output
    with open(hostile, "wb") as out:
        subprocess.run(
            ["sox", samples_dir / "speech" / "warzone_tutorial_tut73.flac", "-t", "wav", "-"],
            stdout=out,
            check=True,
        )
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    log, report = root / "audit.jsonl", root / "report.html"
    result = invoke(
        "audit", folder, "--report", report, "--key", key, "--audit-log", log, "--json", *FAST
    )
    return {"result": result, "report": report, "log": log, "folder": folder, "root": root}


def test_audit_json_summary_matches_the_scan(audited):
    result = audited["result"]
    assert result.exit_code == 1  # broken.wav could not be screened; the report lists it
    summary = json.loads(result.stdout)
    assert summary["files"] == 5 and summary["errors"] == 1 and summary["screened"] == 4
    assert summary["decisions"]["label"] == 1
    assert sum(summary["decisions"].values()) == 4
    assert summary["watermarks"] == {"files_marked": 1, "by_backend": {"keyed:org": 1}}
    assert summary["policy"]["name"] == "upload-screening"
    assert summary["audit_log"]["head_hash"] == head_hash(audited["log"])
    assert len(audited["log"].read_text().splitlines()) == 4
    histogram = summary["synthetic_probability"]
    assert sum(histogram["histogram"]["counts"]) == histogram["scored"]
    assert histogram["scored"] == 2  # the two speech clips; music and the alarm hold no voice
    assert summary["report"] == str(audited["report"])


def test_report_escapes_hostile_names_and_cites_versions(audited):
    page = audited["report"].read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.wav" in page
    assert "a&quot; onload=&#x27;x&#x27; &amp;.flac" in page
    anchor = head_hash(audited["log"])
    assert f"audioguard audit verify {audited['log']} --anchor {anchor}" in page
    assert invoke("audit", "verify", audited["log"], "--anchor", anchor).exit_code == 0
    assert "upload-screening version" in page
    assert page.count('<tr class="file"') == 5


def test_summary_bins_scores_and_counts_every_action():
    results = [
        _verdict("a", "allow", 0.0),
        _verdict("b", "allow", 0.05),
        _verdict("c", "block", 0.95),
        _verdict("d", "review", 1.0),
        _verdict("e", "allow", None),
        {"path": "f", "error": "f: is empty (0 bytes)"},
    ]
    summary = summarize(results, VERSIONS, inputs=["x"])
    assert summary["decisions"] == {"allow": 3, "label": 0, "review": 1, "block": 1}
    scores = summary["synthetic_probability"]
    assert scores["histogram"]["counts"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert scores["scored"] == 4 and scores["mean"] == 0.5
    assert summary["errors"] == 1 and summary["audit_log"] is None


def test_overlapping_windows_are_drawn_on_separate_lanes():
    segments = [
        {"start": s, "end": s + 1.0, "synthetic_probability": p}
        for s, p in [(0.0, 0.1), (0.5, 0.9), (1.0, 0.2), (1.5, 0.8)]
    ]
    page = render_report([_verdict("x.wav", "allow", 0.5, segments)], summarize([], VERSIONS))
    rects = DomSummary.of(page).segment_rects
    assert len(rects) == 4
    assert {y for _, y in rects} == {"0.0", "11.0"}  # two lanes, half-overlapping windows
    assert [x for x, y in rects if y == "0.0"] == ["0.0", "160.0"]


def _verdict(path, decision, p, segments=()):
    return {
        "path": path,
        "decision": decision,
        "matched_rules": [],
        "message": "",
        "synthetic_probability": p,
        "segments": list(segments),
        "watermarks": [],
        "sha256": "0" * 64,
        "duration": 2.0,
    }


# ---------------------------------------------------------------------------------------------
# Where a report may be written


def _report_at(path: Path) -> Path:
    return write_report(path, [_verdict("a.wav", "allow", 0.1)], summarize([], VERSIONS))


def test_report_path_refuses_each_file_the_scan_uses_also_through_links(tmp_path):
    key, audio = tmp_path / "org.key", tmp_path / "in" / "x.wav"
    audio.parent.mkdir()
    key.write_bytes(b"secret")
    audio.write_bytes(b"RIFF")
    (tmp_path / "key.html").symlink_to(key)
    os.link(audio, tmp_path / "hard.html")
    log = tmp_path / "audit.jsonl"  # not there yet: the scan creates it, then the report ate it
    protected = [("a --key file", key), ("one of the inputs", audio), ("the --audit-log", log)]
    cases = {
        key: "a --key file",
        tmp_path / "key.html": "a --key file",
        tmp_path / "hard.html": "one of the inputs",
        tmp_path / "in" / ".." / "audit.jsonl": "the --audit-log",
    }
    for report, what in cases.items():
        assert report_path_problem(report, protected) == (
            f"{report}: is {what}; refusing to overwrite it with the report"
        )
    assert key.read_bytes() == b"secret" and audio.read_bytes() == b"RIFF"


def test_report_path_replaces_only_an_earlier_report(tmp_path):
    notes = tmp_path / "notes.html"
    notes.write_text("<!DOCTYPE html><title>my notes</title>")
    assert report_path_problem(notes) == (
        f"{notes}: already exists and is not an audioguard report; refusing to overwrite it "
        "(name a new file, or remove it first)"
    )
    earlier = _report_at(tmp_path / "earlier.html")
    assert is_report(earlier) and not is_report(notes)
    assert report_path_problem(earlier) is None
    assert report_path_problem(tmp_path / "new.html") is None
    _report_at(earlier)  # replacing an earlier report is fine
    # A file that appeared while the scan ran is refused at the end too.
    with pytest.raises(OSError, match="is not an audioguard report"):
        _report_at(notes)
    assert notes.read_text() == "<!DOCTYPE html><title>my notes</title>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.html", "notes.html"]


def test_report_shows_a_name_that_is_not_utf8_with_the_byte_escaped(tmp_path):
    # The page was written with strict UTF-8: a finished scan failed at the last step.
    odd = os.fsdecode(b"nb/bad\xffname.wav")
    summary = summarize([], VERSIONS, inputs=[odd], audit_log=os.fsdecode(b"log\xfe.jsonl"))
    assert summary["inputs"] == ["nb/bad\\xffname.wav"]
    json.dumps(summary, ensure_ascii=False).encode("utf-8")  # valid UTF-8 for `audit --json`
    page = write_report(tmp_path / "r.html", [_verdict(odd, "allow", 0.2)], summary).read_bytes()
    assert page.decode("utf-8").count("nb/bad\\xffname.wav") == 2  # the inputs and the row
    assert "log\\xfe.jsonl" in page.decode("utf-8")


# ---------------------------------------------------------------------------------------------
# A real browser


class DomSummary(HTMLParser):
    """What the test needs from a page: file rows, decision counts, scripts, segment rects."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str] = []
        self.file_rows = 0
        self.counts: dict[str, int] = {}
        self.scripts = 0
        self.segment_rects: list[tuple[str, str]] = []
        self.text: list[str] = []
        self._count_row: str | None = None

    @classmethod
    def of(cls, page: str) -> DomSummary:
        parser = cls()
        parser.feed(page)
        return parser

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append(a.get("id", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "tr" and a.get("class") == "file" and self.tables[-1:] == ["files"]:
            self.file_rows += 1
        elif tag == "tr" and a.get("class") == "count":
            self._count_row = a["data-decision"]
        elif tag == "rect" and a.get("class") == "segment":
            self.segment_rects.append((a["x"], a["y"]))

    def handle_data(self, data):
        self.text.append(data)
        if self._count_row and data.strip().isdigit():
            self.counts[self._count_row] = int(data)
            self._count_row = None


def chromium(*args: str) -> subprocess.CompletedProcess:
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    return subprocess.run(
        ["chromium", "--headless=new", "--disable-gpu", *sandbox, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def png_pixels(path: Path) -> np.ndarray:
    """Decode a PNG to (height, width, 3) with ffmpeg, which the project already needs."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    width, height = (int(v) for v in probe.stdout.strip().split(","))
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(audited):
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "report.html"
    shutil.copy(audited["report"], page)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    profile = audited["root"] / "chromium-profile"
    url = page.resolve().as_uri()
    common = [f"--user-data-dir={profile}", "--window-size=1200,1600"]
    chromium(*common, f"--screenshot={shot}", url)
    dom = DomSummary.of(chromium(*common, "--dump-dom", url).stdout)

    assert "files" in dom.tables and "decision-counts" in dom.tables
    assert dom.file_rows == 5
    summary = json.loads(audited["result"].stdout)
    assert dom.counts == {**summary["decisions"], "error": 1}
    assert dom.scripts == 0
    assert any(HOSTILE in t for t in dom.text)  # shown as text, not run

    pixels = png_pixels(shot)
    assert pixels.shape == (1600, 1200, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, badges and drawings, not a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.01

    def area(rgb) -> int:
        return int((np.abs(pixels.astype(int) - rgb).max(axis=2) <= 4).sum())

    assert area((0x15, 0x65, 0xC0)) > 100  # the "label" badges are drawn
    assert area((0x6A, 0x1B, 0x9A)) > 100  # the watermark lane of the marked file's timeline


@pytest.mark.parametrize("name", [b"audit.jsonl", b"it's a log.jsonl", b"bad\xffname.jsonl"])
def test_the_verify_command_runs_on_the_log_it_names_when_pasted_into_a_shell(tmp_path, name):
    """The report shows a non-UTF-8 name escaped (``bad\\xffname``); pasted as that, the
    command would name another file, so the command spells the byte in bash's own quoting."""
    log = os.fsencode(tmp_path) + b"/" + name
    summary = summarize([], VERSIONS, audit_log=os.fsdecode(log), head_hash="ab" * 32)
    command = summary["audit_log"]["verify_command"]
    assert command.startswith("audioguard audit verify ") and command.isprintable()
    assert html.escape(command) in render_report([], summary)
    argument = subprocess.run(
        ["bash", "-c", f'set -- {command}; printf %s "$4"'], capture_output=True, check=True
    ).stdout
    assert argument == log
