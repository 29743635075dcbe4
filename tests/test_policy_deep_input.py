"""Deeply nested input (policy YAML, CEL conditions, facts, audit-log lines) is one sentence
per input, never a RecursionError: a few kilobytes of brackets must not crash a check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies import AuditLog, Policy, PolicyError, verify_log

HEADER = "name: t\nversion: 1\ndefault: allow\nrules:\n"


def nested(depth: int) -> list:
    """A list ``depth`` levels deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def condition_policy(tmp_path: Path, when: str) -> Path:
    path = tmp_path / "deep.yaml"
    path.write_text(f"{HEADER}  - id: a\n    when: {json.dumps(when)}\n    action: block\n")
    return path


def test_yaml_nested_too_deeply_is_one_problem(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text(HEADER.replace("rules:\n", "rules: " + "[" * 10_000 + "]" * 10_000 + "\n"))
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert err.value.problems == [f"{path}: the YAML is nested too deeply to read"]


@pytest.mark.parametrize(
    "when",
    [
        "(" * 100 + "true" + ")" * 100,  # parses, but evaluating it would overflow the stack
        "(" * 3000 + "true" + ")" * 3000,  # too deep even to parse
        "[" * 60 + "]" * 60 + " == []",
        "string(" * 60 + "1" + ")" * 60 + ' == "1"',
    ],
)
def test_a_condition_nested_too_deeply_is_a_problem_of_its_rule(tmp_path, when):
    path = condition_policy(tmp_path, when)
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert err.value.problems == [f'{path}: rule "a": condition is nested too deeply']


@pytest.mark.parametrize(
    "when",
    [
        "(" * 12 + "true" + ")" * 12,
        "[" * 12 + "]" * 12 + " != []",
        "string(" * 12 + "1" + ")" * 12 + ' == "1"',
        " || ".join(["false"] * 32) + " || true",
        "watermarks.exists(w, " * 12 + "true" + ")" * 12 + " || true",
    ],
)
def test_the_nesting_cel_promises_loads_and_evaluates(tmp_path, when):
    """CEL implementations must take 12 nested calls, lists or brackets and 32 terms in a row."""
    policy = Policy.load(condition_policy(tmp_path, when))
    assert policy.decide({"watermarks": []}).action == "block"


def test_policy_check_goes_on_after_a_policy_nested_too_deeply(run, tmp_path):
    path = condition_policy(tmp_path, "(" * 3000 + "true" + ")" * 3000)
    out = run("policy", "check", str(path), "upload-screening")
    assert out.exit_code == 1
    assert out.stderr == f'error: {path}: rule "a": condition is nested too deeply\n'
    assert "upload-screening: ok" in out.stdout


@pytest.mark.parametrize("depth", [100, 5000])
def test_decide_refuses_a_fact_nested_too_deeply(tmp_path, depth):
    policy = Policy.load(condition_policy(tmp_path, "true"))
    too_deep = r'fact "meta" is nested too deeply \(at most 64 levels\)'
    with pytest.raises(PolicyError, match=too_deep):
        policy.decide({"meta": {"x": nested(depth)}})


@pytest.mark.parametrize("depth", [100, 100_000])
def test_explain_refuses_facts_nested_too_deeply(run, depth):
    facts = '{"meta": ' + "[" * depth + "]" * depth + "}"
    out = run("policy", "explain", "upload-screening", "--facts", facts)
    assert out.exit_code == 2
    assert "the JSON given: " in out.stderr and "nested too deeply" in out.stderr


def test_an_audit_line_nested_too_deeply_is_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append({"decision": "allow"})
    with path.open("a") as handle:
        handle.write("[" * 100_000 + "\n")
    result = verify_log(path)
    assert (result.ok, result.first_bad, result.records) == (False, 2, 1)
    assert result.problem == "line 2 is not JSON (nested too deeply): it was edited or inserted"


def test_audit_verify_of_a_line_nested_too_deeply_exits_1(run, tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("[" * 100_000 + "\n")
    out = run("audit", "verify", str(path))
    assert out.exit_code == 1
    assert "line 1 is not JSON (nested too deeply)" in out.stdout
