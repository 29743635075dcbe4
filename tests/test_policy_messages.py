"""What a policy author reads when a rule is wrong or cannot be evaluated: one plain sentence
in CEL's words (facts, types, operators), never celpy's Python classes or reprs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies import Policy, PolicyError

# Words that only Python or celpy internals would put into a message.
LEAKS = ("CELEvalError", "Type(", "<class", "NotImplemented", "Token(", "activation")


def load(tmp_path: Path, when, header: str = "") -> Policy:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: p\nversion: 1\ndefault: allow\n{header}rules:\n"
        f"  - id: r1\n    when: {json.dumps(when)}\n    action: block\n"
    )
    return Policy.load(path)


def load_error(tmp_path: Path, when) -> str:
    with pytest.raises(PolicyError) as err:
        load(tmp_path, when)
    (problem,) = err.value.problems
    return problem


def trace_error(tmp_path: Path, when: str, facts: dict) -> str:
    (trace,) = load(tmp_path, when).decide(facts).trace
    assert trace.result == "error"
    assert not any(leak in trace.error for leak in LEAKS), trace.error
    return trace.error


# --- a fact that was not given -----------------------------------------------------------------


def test_every_missing_fact_in_the_shipped_policy_is_named_the_same_way():
    decision = Policy.load("upload-screening").decide({})
    errors = {t.id: t.error for t in decision.trace if t.result == "error"}
    assert errors == {
        "known-ai-watermark": 'fact "watermarks" was not given',
        "undisclosed-synthetic-voice": 'fact "synthetic_probability" was not given',
        "possible-synthetic-voice": 'fact "synthetic_probability" was not given',
        "synthetic-segment": 'fact "segments" was not given',
    }


@pytest.mark.parametrize(
    "when",
    [
        "type(synthetic_probability) == double && synthetic_probability >= 0.9",
        "synthetic_probability >= 0.9 || synthetic_probability < 0.1",
        "synthetic_probability > 0.5 ? true : false",
    ],
)
def test_a_missing_fact_on_both_sides_of_a_logical_operator_is_named(tmp_path, when):
    assert trace_error(tmp_path, when, {}) == 'fact "synthetic_probability" was not given'


def test_a_missing_meta_field_is_named_by_its_path(tmp_path):
    error = trace_error(tmp_path, "meta.uploader == 'x'", {"meta": {}})
    assert error == 'fact "meta.uploader" was not given'


def test_an_error_in_a_rule_that_decides_is_one_sentence_in_the_decision(tmp_path):
    policy = load(tmp_path, "type(meta.x) == int && meta.y > 1", header="on_error: review\n")
    decision = policy.decide({"meta": {}})
    assert decision.action == "review"
    assert decision.message == (
        'rule "r1" could not be evaluated (fact "meta.x" was not given); on_error: review'
    )


# --- operators with no overload ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ('"a" * 10000000000 == ""', "'*' not supported between string and int"),
        ('"a" + 1 == "a1"', "'+' not supported between string and int"),
        ('-"a" == "a"', "'-' not supported for string"),
        ("synthetic_probability * 'x' == 1.0", "'*' not supported between double and string"),
        ("duration / 2 > 1.0", "'/' not supported between double and int (CEL does not convert"),
        ("1 < duration", "'<' not supported between int and double (CEL does not convert"),
    ],
)
def test_an_operator_that_can_never_evaluate_is_a_load_error(tmp_path, when, problem):
    message = load_error(tmp_path, when)
    assert message.startswith(f'{tmp_path / "p.yaml"}: rule "r1": ')
    assert f"can never be evaluated: {problem}" in message
    assert not any(leak in message for leak in LEAKS)


@pytest.mark.parametrize(
    "when",
    [
        "duration > 5",  # celpy compares a double with an int
        "duration / 2.0 > 1.0",
        "synthetic_probability == null",  # a fact may be null (no detector ran)
        "channels * 2 == sample_rate / 8000",
        '"ab" + "c" == "abc"',
        "meta.score * 2 > 1",  # meta's fields are only known at run time
    ],
)
def test_an_operator_that_can_evaluate_still_loads(tmp_path, when):
    assert load(tmp_path, when).rules[0].when == when


@pytest.mark.parametrize(
    ("when", "facts", "error"),
    [
        ('meta.a * 3 == ""', {"meta": {"a": "x"}}, "'*' not supported between string and int"),
        ("meta.a < 2", {"meta": {"a": "x"}}, "'<' not supported between string and int"),
        ("meta.a && meta.b", {"meta": {"a": 1, "b": 2}}, "'&&' not supported between int and int"),
        ("meta.a ? true : false", {"meta": {"a": "x"}}, "must be true or false, not string"),
        ("size(meta.a) == 2", {"meta": {"a": 1}}, "size() not supported for int"),
        ("meta.a / 0 == 2", {"meta": {"a": 1}}, "division by zero"),
        ("meta.a.exists(x, x)", {"meta": {"a": 1}}, "int object is not iterable"),
    ],
)
def test_a_runtime_type_error_reads_in_cel_terms(tmp_path, when, facts, error):
    assert error in trace_error(tmp_path, when, facts)


# --- a condition that is not a string ----------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_value", "kind"),
    [("0.5", "a number"), ("3", "a number"), ("[1]", "a list"), ("{a: 1}", "a mapping")],
)
def test_a_condition_that_is_not_a_string_says_what_it_is(tmp_path, yaml_value, kind):
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: p\nversion: 1\ndefault: allow\nrules:\n"
        f"  - id: r1\n    when: {yaml_value}\n    action: block\n"
    )
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    (problem,) = err.value.problems
    assert problem.startswith(
        f'{path}: rule "r1": "when" must be a CEL expression string, got {kind}'
    )


def test_a_missing_condition_is_still_called_missing(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nversion: 1\ndefault: allow\nrules:\n  - id: r1\n    action: block\n")
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert err.value.problems == [f'{path}: rule "r1": missing "when" (a CEL expression)']


# --- regular expressions -----------------------------------------------------------------------


@pytest.mark.parametrize("when", ['meta.uploader.matches("(")', 'matches(meta.uploader, "a(")'])
def test_a_literal_pattern_that_is_not_a_regex_is_a_load_error(tmp_path, when):
    problem = load_error(tmp_path, when)
    assert "is not a valid regular expression" in problem and "missing )" in problem


def test_a_pattern_from_the_facts_fails_in_one_sentence_and_nothing_else_on_stderr(tmp_path, capfd):
    when = "meta.uploader.matches(meta.pattern)"
    error = trace_error(tmp_path, when, {"meta": {"uploader": "x", "pattern": "("}})
    assert "not a valid regular expression" in error
    assert capfd.readouterr().err == ""  # RE2 logged its own line here


def test_good_patterns_still_match(tmp_path):
    policy = load(tmp_path, 'meta.uploader.matches("^bot-[0-9]+$")')
    assert policy.decide({"meta": {"uploader": "bot-42"}}).action == "block"
    assert policy.decide({"meta": {"uploader": "alice"}}).action == "allow"


def test_matches_on_a_number_is_still_an_error_not_a_match(tmp_path):
    error = trace_error(tmp_path, 'meta.x.matches("5")', {"meta": {"x": 5}})
    assert error == "matches() not supported for int"
