"""``audioguard scan`` end to end on real clips: decisions, JSON lines, order, exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from click.testing import CliRunner

from guard.cli import cli
from guard.cli_scan import human_line
from policies import head_hash, verify_log

# The public backends cost seconds per run; one test below runs them as the CLI does by default.
FAST = ["--public-backends", "none"]

MARKED_PAYLOAD = "c0ffee01"


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def close_to(value):
    """``value`` with every float replaced by pytest.approx, at any depth, to compare against."""
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-3, abs=1e-4)
    if isinstance(value, dict):
        return {k: close_to(v) for k, v in value.items() if k not in ("message", "trace")}
    if isinstance(value, list):
        return [close_to(v) for v in value]
    return value


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, samples_dir):
    """A folder of uploads: one clip marked with our keyed mark, two untouched clips."""
    root = tmp_path_factory.mktemp("scan")
    key = root / "org.key"
    assert invoke("watermark", "keygen", key).exit_code == 0
    folder = root / "uploads"
    folder.mkdir()
    marked = folder / "b_marked.flac"
    embedded = invoke(
        "watermark",
        "embed",
        samples_dir / "speech" / "warzone_tutorial_tut73.flac",
        marked,
        "--key",
        key,
        "--payload",
        MARKED_PAYLOAD,
    )
    assert embedded.exit_code == 0, embedded.output
    shutil.copy(samples_dir / "music" / "drascula_track6.flac", folder / "a_music.flac")
    shutil.copy(samples_dir / "sfx" / "etr_mud_slide.flac", folder / "c_sfx.flac")
    return {"key": key, "folder": folder, "marked": marked}


def test_keyed_mark_is_labelled_per_upload_screening(uploads):
    result = invoke("scan", uploads["folder"], "--key", uploads["key"], "--json", *FAST)
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert [line["path"] for line in lines] == [
        str(uploads["folder"] / name) for name in ("a_music.flac", "b_marked.flac", "c_sfx.flac")
    ]
    by_name = {line["path"].rsplit("/", 1)[-1]: line for line in lines}
    marked = by_name["b_marked.flac"]
    assert marked["decision"] == "label"
    assert marked["matched_rules"] == ["known-ai-watermark"]
    assert marked["policy"]["name"] == "upload-screening"
    (keyed,) = [w for w in marked["watermarks"] if w["backend"] == "keyed"]
    assert keyed["detected"] and keyed["payload"] == MARKED_PAYLOAD and keyed["key_id"] == "org"
    assert marked["sha256"] == hashlib.sha256(uploads["marked"].read_bytes()).hexdigest()
    for name in ("a_music.flac", "c_sfx.flac"):
        line = by_name[name]
        assert "known-ai-watermark" not in line["matched_rules"]
        assert not any(w["detected"] for w in line["watermarks"])
        assert set(line) >= {"path", "decision", "synthetic_probability", "segments", "sha256"}
    # music holds no voice: the detector abstains instead of calling it synthetic
    assert by_name["a_music.flac"]["synthetic_probability"] is None
    assert by_name["a_music.flac"]["decision"] == "allow"


@pytest.mark.parametrize(
    ("fail_on", "status"), [(None, 0), ("label", 3), ("review", 0), ("block", 0)]
)
def test_fail_on_gates_on_the_decision(uploads, fail_on, status):
    gate = ["--fail-on", fail_on] if fail_on else []
    result = invoke("scan", uploads["marked"], "--key", uploads["key"], "--json", *FAST, *gate)
    assert json_lines(result.stdout)[0]["decision"] == "label"
    assert result.exit_code == status


def test_bad_inputs_get_an_error_line_and_exit_1(tmp_path, uploads):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    missing = tmp_path / "missing.flac"
    args = [broken, uploads["marked"], missing, "--key", uploads["key"], "--json", *FAST]
    result = invoke("scan", *args, "--fail-on", "label")
    assert result.exit_code == 1  # a file that could not be screened outranks the gate
    lines = json_lines(result.stdout)
    assert [line["path"] for line in lines] == [str(broken), str(uploads["marked"]), str(missing)]
    assert set(lines[0]) == {"path", "error"} and "broken.wav" in lines[0]["error"]
    assert "does not exist" in lines[2]["error"]
    assert lines[1]["decision"] == "label"
    assert "Traceback" not in result.output


def test_parallel_scan_prints_the_same_lines_in_input_order(tmp_path, uploads, samples_dir):
    folder = tmp_path / "many"
    shutil.copytree(samples_dir / "speech", folder / "speech")
    shutil.copy(samples_dir / "music" / "drascula_track6.flac", folder / "music.flac")
    shutil.copy(uploads["marked"], folder / "marked.flac")
    args = [folder, "--key", uploads["key"], "--json", *FAST]
    one = json_lines(invoke("scan", *args, "--workers", "1").stdout)
    three = json_lines(invoke("scan", *args, "--workers", "3").stdout)
    assert len(one) == 5
    assert [line["path"] for line in one] == sorted(line["path"] for line in one)
    # Same verdicts, scores and marks: the threads share one set of models safely. Floats
    # may differ in the last digits, since torch splits the cores differently per worker.
    for a, b in zip(three, one, strict=True):
        assert {k: v for k, v in a.items() if k not in ("message", "trace")} == close_to(b)
    assert [line["decision"] for line in one].count("label") == 1


def test_default_scan_runs_the_public_watermark_checks(uploads):
    result = invoke("scan", uploads["marked"], "--key", uploads["key"], "--json")
    (line,) = json_lines(result.stdout)
    assert [w["backend"] for w in line["watermarks"]] == ["keyed", "audioseal", "perth"]
    assert not any(w["detected"] for w in line["watermarks"][1:])


def test_human_output_is_one_line_per_file_and_a_tally(uploads):
    result = invoke("scan", uploads["folder"], "--key", uploads["key"], *FAST)
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith(f"{uploads['marked']}: LABEL [known-ai-watermark]")
    assert f"keyed:org payload {MARKED_PAYLOAD}" in lines[1]
    assert "3 file(s):" in result.stderr and "1 label" in result.stderr


def test_policy_file_reads_caller_metadata(tmp_path, uploads):
    policy = tmp_path / "uploader.yaml"
    policy.write_text(
        "name: uploader-ban\nversion: 7\ndefault: allow\nrules:\n"
        "  - id: banned-uploader\n"
        '    when: meta.uploader == "mallory"\n'
        "    action: block\n"
        '    message: "uploads by {meta.uploader} are blocked"\n'
    )
    base = ["scan", uploads["marked"], "--policy", policy, "--json", *FAST, "--fail-on", "block"]
    blocked = invoke(*base, "--meta", '{"uploader": "mallory"}')
    (line,) = json_lines(blocked.stdout)
    assert blocked.exit_code == 3
    assert line["decision"] == "block" and line["matched_rules"] == ["banned-uploader"]
    assert line["message"] == "uploads by mallory are blocked"
    assert line["policy"] == {"name": "uploader-ban", "version": 7}
    allowed = invoke(*base, "--meta", '{"uploader": "alice"}')
    assert allowed.exit_code == 0 and json_lines(allowed.stdout)[0]["decision"] == "allow"


@pytest.mark.parametrize("meta", ["not json", "[1, 2]", '{"a": ' * 5000 + "1" + "}" * 5000])
def test_bad_meta_is_a_usage_error(uploads, meta):
    result = CliRunner().invoke(cli, ["scan", str(uploads["marked"]), "--meta", meta, *FAST])
    assert result.exit_code == 2
    assert "--meta" in result.output


def test_an_empty_folder_fails_instead_of_passing_the_gate(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    result = CliRunner().invoke(cli, ["scan", str(tmp_path), "--fail-on", "block", *FAST])
    assert result.exit_code == 1
    assert f"{tmp_path}: is a folder with no WAV, FLAC, OGG or MP3 file in it" in result.output


@pytest.mark.parametrize("command", [["scan"], ["audit"]])
def test_a_report_that_cannot_be_written_stops_before_the_scan(tmp_path, uploads, command):
    report = tmp_path / "missing" / "r.html"
    result = CliRunner().invoke(
        cli, [*command, str(uploads["marked"]), "--report", str(report), "--json", *FAST]
    )
    assert result.exit_code == 1
    assert result.stdout == ""  # nothing was screened
    assert f"{report}: cannot write the report there" in result.output
    assert ".part" not in result.output


def test_an_audit_log_that_cannot_be_written_stops_before_the_scan(tmp_path, uploads):
    log = tmp_path / "missing" / "audit.jsonl"
    files = [str(uploads["marked"]), str(uploads["marked"])]
    result = CliRunner().invoke(cli, ["scan", *files, "--audit-log", str(log), "--json", *FAST])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.output.count("cannot write the audit log") == 1
    assert f"{log}: cannot write the audit log" in result.output


def test_a_bad_policy_stops_the_scan_with_one_sentence(tmp_path, uploads):
    policy = tmp_path / "broken.yaml"
    policy.write_text("name: x\nversion: 1\ndefault: maybe\nrules: []\n")
    result = CliRunner().invoke(cli, ["scan", str(uploads["marked"]), "--policy", str(policy)])
    assert result.exit_code == 1
    assert "broken.yaml" in result.output and "Traceback" not in result.output


def test_audit_log_records_every_decision_and_verifies(tmp_path, uploads):
    log = tmp_path / "decisions.jsonl"
    args = [uploads["folder"], "--key", uploads["key"], "--audit-log", log, "--json", *FAST]
    assert invoke("scan", *args, "--workers", "2").exit_code == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3
    (labelled,) = [r for r in records if r["decision"] == "label"]
    assert labelled["sha256"] == hashlib.sha256(uploads["marked"].read_bytes()).hexdigest()
    assert verify_log(log).ok
    verified = invoke("audit", "verify", log)
    assert verified.exit_code == 0, verified.output
    report = tmp_path / "scan.html"
    assert invoke("scan", *args, "--report", report).exit_code == 0
    assert head_hash(log) in report.read_text()


def test_scan_signs_its_audit_log_with_the_key_given(tmp_path, uploads):
    key, log = tmp_path / "audit.key", tmp_path / "signed.jsonl"
    assert invoke("audit", "keygen", key).exit_code == 0
    public = f"{key}.pub"
    args = [uploads["folder"], "--audit-log", log, "--json", *FAST]
    assert invoke("scan", *args, "--audit-signing-key", key).exit_code == 0
    verified = invoke("audit", "verify", log, "--public-key", public)
    assert verified.exit_code == 0 and "every record signed" in verified.output
    unsigned = tmp_path / "unsigned.jsonl"
    assert invoke("scan", uploads["folder"], "--audit-log", unsigned, *FAST).exit_code == 0
    assert invoke("audit", "verify", unsigned, "--public-key", public).exit_code == 1
    alone = invoke("scan", uploads["folder"], "--audit-signing-key", key, *FAST)
    assert alone.exit_code == 2 and "give --audit-log too" in alone.output
    for wrong, problem in ((public, "not a PEM private key"), (tmp_path / "none.key", "cannot")):
        bad = invoke("scan", *args[:3], "--audit-signing-key", wrong, "--no-detector", *FAST)
        assert bad.exit_code == 1 and problem in bad.output, bad.output
        assert "Traceback" not in bad.output


def test_scan_reports_the_probability_detect_prints(uploads):
    """The policy decides on the figure a person sees, not on digits `detect` rounds away."""
    marked = uploads["marked"]
    (scanned,) = json_lines(invoke("scan", marked, "--json", *FAST).stdout)
    (detected,) = json_lines(invoke("detect", marked, "--json").stdout)
    assert scanned["synthetic_probability"] == detected["synthetic_probability"]
    assert scanned["segments"] == detected["segments"]


def test_a_file_name_cannot_forge_a_result_line(tmp_path, uploads):
    folder = tmp_path / "names"
    folder.mkdir()
    shutil.copy(uploads["marked"], folder / "b.flac")
    forged = "a.flac: ALLOW no rule matched\n\x1b[1Aevil.flac"
    shutil.copy(uploads["marked"], folder / forged)
    (folder / "c\nbroken.wav").write_bytes(b"RIFF not really a wave file")

    result = invoke("scan", folder, "--key", uploads["key"], *FAST)

    lines = result.stdout.splitlines()
    assert len(lines) == 2  # one per decoded file, each on its own line
    assert lines[0].startswith(str(folder / "a.flac: ALLOW no rule matched\\n\\x1b[1Aevil.flac"))
    assert "LABEL" in lines[0]
    assert result.stderr.splitlines()[0] == (
        f"error: {folder}/c\\nbroken.wav: is not a WAV, FLAC, OGG or MP3 file, "
        "or its header is damaged"
    )
    json_paths = [
        line["path"] for line in json_lines(invoke("scan", folder, *FAST, "--json").stdout)
    ]
    assert str(folder / forged) in json_paths  # JSON keeps the real name


def test_a_watermark_check_that_could_not_run_is_said_not_no_marks(tmp_path):
    # AudioSeal cannot judge half a second (its null is of 1 s windows); the line said
    # "no marks" as if it had been checked and found clean.
    short = tmp_path / "short.wav"
    t = np.arange(8000) / 16000
    sf.write(short, 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    args = [short, "--no-detector", "--public-backends", "audioseal"]

    text = invoke("scan", *args)
    as_json = invoke("scan", *args, "--json")

    (line,) = text.stdout.splitlines()
    assert "audioseal not checked (" in line and "needs at least 1 s" in line
    assert "no marks;" not in line and not line.endswith("no marks")
    assert "1 with a watermark check that could not run" in text.stderr
    # The file was screened (the policy decided on what could be checked): the exit status
    # and the JSON line keep their meaning; the finding carries the reason.
    assert text.exit_code == as_json.exit_code == 0
    (scanned,) = json_lines(as_json.stdout)
    assert scanned["decision"] == "allow"
    (finding,) = scanned["watermarks"]
    assert finding["backend"] == "audioseal" and not finding["detected"]
    assert "1 s" in finding["error"]


def test_a_marked_file_resampled_just_under_8_khz_is_still_read(tmp_path, uploads):
    # Detection refused rates under 8 kHz, so resampling a marked upload to 7.9 kHz hid the
    # keyed mark from scan (allow, "not checked") although the mark survives it.
    data, rate = sf.read(uploads["marked"], dtype="float32")
    low = tmp_path / "low.wav"
    low_rate = torchaudio.functional.resample(torch.from_numpy(data.T.copy()), rate, 7900)
    sf.write(low, low_rate.T.numpy(), 7900)

    result = invoke("scan", low, "--key", uploads["key"], "--no-detector", *FAST, "--json")

    (scanned,) = json_lines(result.stdout)
    (keyed,) = scanned["watermarks"]
    assert keyed["detected"] and keyed["payload"] == MARKED_PAYLOAD and "error" not in keyed
    assert scanned["decision"] == "label"


def test_human_line_names_every_check_that_did_not_run_beside_the_marks_found():
    result = {
        "path": "a.wav",
        "decision": "label",
        "matched_rules": ["known-ai-watermark"],
        "message": "AI",
        "synthetic_probability": None,
        "watermarks": [
            {"backend": "keyed", "key_id": "k1", "detected": True, "payload": "deadbeef"},
            {"backend": "audioseal", "detected": False, "error": "needs at least 1 s"},
        ],
    }
    line = human_line(result)
    assert line.endswith(
        "marks: keyed:k1 payload deadbeef; audioseal not checked (needs at least 1 s)"
    )
    clean = {**result, "watermarks": [{"backend": "perth", "detected": False, "p_value": 0.5}]}
    assert human_line(clean).endswith("; no marks")
