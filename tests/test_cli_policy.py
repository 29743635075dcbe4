"""`audioguard policy check|explain` and `audioguard audit verify|keygen`, and the audit group."""

from __future__ import annotations

import json
import sys

import click
import pytest
from click.testing import CliRunner

from guard import cli as cli_module
from guard.cli import cli
from guard.cli_policy import REPORT_COMMAND, AuditGroup, audit
from policies import AuditLog, load_signing_key

SYNTHETIC = {
    "synthetic_probability": 0.9312,
    "segments": [{"start": 0.0, "end": 2.0, "synthetic_probability": 0.95}],
    "watermarks": [],
    "duration": 4.0,
    "speech_seconds": 3.8,
    "sample_rate": 16000,
    "channels": 1,
    "tags": [],
    "meta": {"uploader": "alice"},
}


@pytest.fixture()
def bad_policy(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nversion: 1\ndefault: allow\nrules:\n"
        "  - id: r1\n    when: 'true'\n    action: label\n"
        "  - id: r2\n    when: synthetic_prob >= 0.9\n    action: block\n"
    )
    return path


# --- policy check ----------------------------------------------------------------------------


def test_check_accepts_the_shipped_policies(run):
    out = run("policy", "check", "upload-screening", "generator-output", "audit-strict")
    assert out.exit_code == 0, out.output
    assert out.stdout.count(": ok (") == 3


def test_check_names_file_rule_and_problem_and_exits_1(run, bad_policy):
    out = run("policy", "check", "upload-screening", str(bad_policy))
    assert out.exit_code == 1
    assert f'error: {bad_policy}: rule "r2": unknown fact "synthetic_prob"' in out.stderr
    assert "upload-screening: ok" in out.stdout


def test_check_rejects_a_condition_that_is_never_true_or_false(run, tmp_path):
    path = tmp_path / "sum.yaml"
    path.write_text(
        "name: sum\nversion: 1\ndefault: allow\nrules:\n"
        "  - id: never\n    when: '1 + 2'\n    action: block\n"
    )
    out = run("policy", "check", str(path))
    assert out.exit_code == 1
    assert out.stdout == ""
    assert out.stderr == (
        f'error: {path}: rule "never": condition must give true or false, but this one gives int\n'
    )


def test_check_rejects_a_condition_that_is_a_bare_number_fact(run, tmp_path):
    path = tmp_path / "nonbool.yaml"
    path.write_text(
        "name: t\nversion: 1\ndefault: allow\nrules:\n"
        "  - id: a\n    when: synthetic_probability\n    action: block\n"
    )
    out = run("policy", "check", str(path), "upload-screening")
    assert out.exit_code == 1
    assert out.stderr == (
        f'error: {path}: rule "a": condition must give true or false, but this one gives double\n'
    )
    assert "upload-screening: ok" in out.stdout


def test_check_says_a_folder_is_not_a_policy_file(run, tmp_path):
    out = run("policy", "check", str(tmp_path), "upload-screening")
    assert out.exit_code == 1
    assert out.stderr == f"error: {tmp_path}: is a folder, not a policy file\n"


def test_check_json_gives_one_line_per_policy(run, bad_policy):
    out = run("policy", "check", "--json", "audit-strict", str(bad_policy))
    good, bad = (json.loads(line) for line in out.stdout.splitlines())
    assert good["name"] == "audit-strict" and good["on_error"] == "review"
    assert bad["path"] == str(bad_policy) and len(bad["problems"]) == 1
    assert out.exit_code == 1


# --- policy explain -----------------------------------------------------------------------


def test_explain_shows_every_rule_its_result_and_the_values_read(run):
    out = run("policy", "explain", "upload-screening", "--facts", json.dumps(SYNTHETIC))
    assert out.exit_code == 0, out.output
    text = out.stdout
    for rule_id in (
        "known-ai-watermark",
        "disclosed-synthetic-voice",
        "undisclosed-synthetic-voice",
        "possible-synthetic-voice",
        "synthetic-segment",
    ):
        assert f". {rule_id}: " in text
    assert "3. undisclosed-synthetic-voice: TRUE -> block  <- decides" in text
    assert "4. possible-synthetic-voice: true (action review; an earlier rule decided)" in text
    assert "synthetic_probability = 0.9312" in text
    assert "meta.ai_disclosed: not given" in text
    assert text.rstrip().endswith(
        "decision: block (rule undisclosed-synthetic-voice): likely synthetic voice (0.93) "
        "with no AI watermark or disclosure"
    )


def test_explain_shows_runtime_errors_in_the_trace(run, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "name: p\nversion: 2\ndefault: allow\nrules:\n"
        "  - id: score\n    when: synthetic_probability >= 0.9\n    action: block\n"
    )
    facts = {**SYNTHETIC, "synthetic_probability": None}
    out = run("policy", "explain", str(policy), "--facts", json.dumps(facts))
    assert "1. score: error, does not match: '>=' not supported" in out.stdout
    assert "decision: allow (default)" in out.stdout


@pytest.mark.parametrize("form", ["@{}", "{}"])
def test_explain_json_reads_facts_from_a_file(run, tmp_path, form):
    facts_file = tmp_path / "facts.json"
    facts_file.write_text(json.dumps({**SYNTHETIC, "extra": 1}))
    out = run("policy", "explain", "audit-strict", "--facts", form.format(facts_file), "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["action"] == "block"
    assert result["matched_rules"] == ["undisclosed-synthetic-voice"]
    assert len(result["trace"]) == 8
    assert result["trace"][1]["reads"]["synthetic_probability"] == 0.9312
    assert result["policy"] == {"name": "audit-strict", "version": 2}
    assert result["unknown_facts"] == ["extra"]


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "the JSON given: facts must be a JSON object"),
        ('"uploader"', "the JSON given: facts must be a JSON object"),
        ('{"a": [1, 2]', "not valid JSON"),
        ("missing.json", "missing.json: cannot read facts"),
        ('{"synthetic_probability": NaN}', "the JSON given: NaN is not a number facts can hold"),
        ('{"duration": Infinity}', "the JSON given: Infinity is not a number facts can hold"),
        ('{"duration": -Infinity}', "the JSON given: -Infinity is not a number facts can hold"),
        # Python's own sentence, naming sys.set_int_max_str_digits, reached the user
        ('{"meta": {"n": ' + "9" * 5000 + "}}", "the JSON given: facts hold a number too long"),
        ('{"duration": 1e999}', 'the JSON given: fact "duration" must be a finite number'),
        ('{"synthetic_probability": 95}', '"synthetic_probability" must be a number from 0 to 1'),
    ],
)
def test_explain_rejects_facts_it_cannot_use(run, facts, message):
    out = run("policy", "explain", "upload-screening", "--facts", facts)
    assert out.exit_code == 2
    assert message in out.stderr


def test_explain_reads_a_file_whose_name_is_also_json(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "1").write_text(json.dumps(SYNTHETIC))
    out = run("policy", "explain", "upload-screening", "--facts", "1", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["action"] == "block"


def test_explain_of_an_invalid_policy_is_one_error_through_main(monkeypatch, capsys, bad_policy):
    monkeypatch.setattr(
        sys, "argv", ["audioguard", "policy", "explain", str(bad_policy), "--facts", "{}"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {bad_policy}: rule "r2": unknown fact')
    assert "Traceback" not in err


# --- audit verify / keygen ---------------------------------------------------------------------


def fill(path, n=4, key=None):
    log = AuditLog(path, signing_key=key)
    return [log.append({"sha256": f"{i:064x}", "decision": "allow"}) for i in range(n)]


def test_verify_prints_the_head_hash_of_a_good_log(run, tmp_path):
    log = tmp_path / "audit.jsonl"
    stored = fill(log)
    out = run("audit", "verify", str(log))
    assert out.exit_code == 0
    assert f"ok, 4 records, head {stored[-1]['hash']}" in out.stdout


def test_verify_an_empty_log_says_it_has_no_head_yet(run, tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    out = run("audit", "verify", str(log))
    assert out.exit_code == 0
    assert out.stdout == (
        f"{log}: ok, empty log (no records yet, so no head hash); signatures not checked\n"
    )
    as_json = json.loads(run("audit", "verify", str(log), "--json").stdout)
    assert (as_json["ok"], as_json["records"], as_json["head_hash"]) == (True, 0, None)


def test_verify_exits_1_and_names_the_first_bad_record(run, tmp_path):
    log = tmp_path / "audit.jsonl"
    fill(log)
    lines = log.read_text().splitlines(keepends=True)
    del lines[1]
    log.write_text("".join(lines))
    out = run("audit", "verify", str(log))
    assert out.exit_code == 1
    assert "record 2 missing before line 2: dropped" in out.stdout
    as_json = json.loads(run("audit", "verify", str(log), "--json").stdout)
    assert (as_json["ok"], as_json["first_bad"], as_json["records"]) == (False, 2, 1)


def test_keygen_then_verify_signatures(run, tmp_path):
    key = tmp_path / "audit.key"
    out = run("audit", "keygen", str(key))
    assert out.exit_code == 0 and (tmp_path / "audit.key.pub").exists()
    log = tmp_path / "audit.jsonl"
    fill(log, key=load_signing_key(key))
    out = run("audit", "verify", str(log), "--public-key", str(tmp_path / "audit.key.pub"))
    assert out.exit_code == 0 and "every record signed by the given key" in out.stdout
    unsigned = tmp_path / "unsigned.jsonl"
    fill(unsigned)
    out = run("audit", "verify", str(unsigned), "--public-key", str(tmp_path / "audit.key.pub"))
    assert out.exit_code == 1 and "line 1: not signed" in out.stdout


def test_verify_a_torn_log_names_the_torn_line(run, tmp_path):
    log = tmp_path / "audit.jsonl"
    fill(log, 2)
    with log.open("ab") as handle:
        handle.write(b'{"seq":3,')
    out = run("audit", "verify", str(log))
    assert out.exit_code == 1 and "line 3 is torn" in out.stdout


@pytest.mark.parametrize("anchor", ["zz", "ab" * 31, "ab" * 33, "g" * 64, ""])
def test_verify_refuses_an_anchor_that_is_not_a_hash(run, tmp_path, anchor):
    log = tmp_path / "audit.jsonl"
    fill(log)
    out = run("audit", "verify", str(log), "--anchor", anchor)
    assert out.exit_code == 2
    assert "--anchor" in out.stderr
    assert "must be the 64 hex digits of a record hash" in out.stderr
    assert "cut off" not in out.output


def test_verify_takes_an_anchor_in_capitals(run, tmp_path):
    log = tmp_path / "audit.jsonl"
    stored = fill(log)
    out = run("audit", "verify", str(log), "--anchor", stored[-1]["hash"].upper())
    assert out.exit_code == 0, out.output


# --- the audit group: `audit verify LOG` and `audit DIR --report FILE` side by side ----------


def test_the_real_audit_group_is_an_audit_group_with_verify():
    assert isinstance(cli.commands["audit"], AuditGroup)
    assert cli.commands["audit"] is audit
    assert {"verify", "keygen"} <= set(audit.commands)


@pytest.fixture()
def audit_group():
    """A fresh AuditGroup with a stand-in report command, wired the way the hook says."""

    @click.group(cls=AuditGroup, context_settings={"ignore_unknown_options": True})
    def group() -> None:
        pass

    @group.command()
    @click.argument("log")
    def verify(log: str) -> None:
        click.echo(f"verify {log}")

    def attach_report():
        @group.command(REPORT_COMMAND)
        @click.argument("paths", nargs=-1, required=True)
        @click.option("--report", "report_file", required=True)
        def report(paths, report_file) -> None:
            click.echo(f"report {list(paths)} -> {report_file}")

    return group, attach_report


def test_without_a_report_command_an_unknown_argument_is_an_unknown_command(audit_group, tmp_path):
    group, _ = audit_group
    out = CliRunner().invoke(group, [str(tmp_path), "--report", "r.html"])
    assert out.exit_code == 2 and "No such command" in out.output


@pytest.mark.parametrize(
    "args",
    [
        ["{dir}", "--report", "r.html"],
        ["--report", "r.html", "{dir}"],
        [REPORT_COMMAND, "{dir}", "--report", "r.html"],
    ],
)
def test_audit_dir_runs_the_report_command(audit_group, tmp_path, args):
    group, attach_report = audit_group
    attach_report()
    out = CliRunner().invoke(group, [a.format(dir=tmp_path) for a in args])
    assert out.exit_code == 0, out.output
    assert out.output == f"report ['{tmp_path}'] -> r.html\n"


def test_subcommands_and_typos_still_win_over_the_report(audit_group):
    group, attach_report = audit_group
    attach_report()
    assert CliRunner().invoke(group, ["verify", "log.jsonl"]).output == "verify log.jsonl\n"
    typo = CliRunner().invoke(group, ["verfy", "log.jsonl"])
    assert typo.exit_code == 2 and "Did you mean 'verify'" in typo.output


@pytest.mark.parametrize("facts", ["", "   ", "@"])
def test_explain_says_an_empty_facts_argument_is_empty(run, facts):
    out = run("policy", "explain", "upload-screening", "--facts", facts)
    assert out.exit_code == 2
    assert "the facts argument is empty" in out.stderr
    assert "Is a directory" not in out.stderr
