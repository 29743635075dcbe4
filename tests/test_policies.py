"""Policies: loading and validation, first-match decisions, runtime errors, traces, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies import ACTIONS, KNOWN_FACTS, Policy, PolicyError, builtin_policy_path
from policies.policy import POLICY_DIR

SHIPPED = ("upload-screening", "generator-output", "audit-strict")


def facts(**overrides):
    """A complete set of facts for a clean, human, unmarked clip; override what a test needs."""
    base = {
        "synthetic_probability": 0.05,
        "segments": [{"start": 0.0, "end": 2.0, "synthetic_probability": 0.05}],
        "watermarks": [
            {"backend": "audioseal", "detected": False, "p_value": 0.4, "payload": None},
            {"backend": "perth", "detected": False, "p_value": 0.7, "payload": None},
        ],
        "duration": 4.0,
        "speech_seconds": 3.5,
        "sample_rate": 16000,
        "channels": 1,
        "tags": [],
        "meta": {"uploader": "alice"},
    }
    return {**base, **overrides}


KEYED_MARK = {"backend": "keyed", "detected": True, "p_value": 1e-9, "payload": "00ff"}


def write_policy(tmp_path: Path, rules: str, header: str = "", name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"name: test\nversion: 1\ndefault: allow\n{header}rules:\n{rules}")
    return path


def rule(rule_id: str, when: str, action: str = "block", message: str = "m") -> str:
    return (
        f"  - id: {rule_id}\n    when: {json.dumps(when)}\n    action: {action}\n"
        f"    message: {json.dumps(message)}\n"
    )


# --- the shipped policies ------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policies_load_by_name_and_by_path(name):
    by_name = Policy.load(name)
    by_path = Policy.load(builtin_policy_path(name))
    assert by_name.name == name
    assert [r.id for r in by_name.rules] == [r.id for r in by_path.rules]
    assert by_name.rules and all(r.action in ACTIONS for r in by_name.rules)


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(PolicyError, match="upload-screening") as err:
        Policy.load("upload-screenin")
    assert "no such policy" in str(err.value)


def test_upload_screening_first_match_wins():
    policy = Policy.load("upload-screening")
    marked_and_synthetic = policy.decide(facts(synthetic_probability=0.97, watermarks=[KEYED_MARK]))
    assert marked_and_synthetic.action == "label"
    assert marked_and_synthetic.matched_rules == ["known-ai-watermark"]
    assert "keyed mark, payload 00ff, p-value 1e-09" in marked_and_synthetic.message

    synthetic = policy.decide(facts(synthetic_probability=0.9312))
    assert (synthetic.action, synthetic.matched_rules) == ("block", ["undisclosed-synthetic-voice"])
    assert "(0.93)" in synthetic.message

    doubtful = policy.decide(facts(synthetic_probability=0.7))
    assert doubtful.action == "review"

    disclosed = policy.decide(facts(synthetic_probability=0.97, meta={"ai_disclosed": True}))
    assert disclosed.matched_rules == ["disclosed-synthetic-voice"]

    clean = policy.decide(facts())
    assert (clean.action, clean.matched_rules) == ("allow", [])


def test_upload_screening_without_a_detector_judges_on_watermarks_alone():
    policy = Policy.load("upload-screening")
    decision = policy.decide(facts(synthetic_probability=None, segments=[]))
    assert decision.action == "allow"
    assert all(t.result is False for t in decision.trace)  # null is handled, not an error


@pytest.mark.parametrize(
    ("verified", "marks", "action", "rule_id"),
    [
        (True, [], "allow", "verified-mark"),
        (False, [KEYED_MARK], "block", "verification-failed"),
        (None, [KEYED_MARK], "allow", "verified-mark"),
        (
            None,
            [{"backend": "perth", "detected": True, "p_value": 1e-4, "payload": None}],
            "block",
            "no-verified-mark",
        ),
        (None, [], "block", "no-verified-mark"),
    ],
)
def test_generator_output_blocks_whatever_lacks_a_verified_mark(verified, marks, action, rule_id):
    given = facts(watermarks=marks)
    if verified is not None:
        given["mark_verified"] = verified
    decision = Policy.load("generator-output").decide(given)
    assert (decision.action, decision.matched_rules) == (action, [rule_id])


def test_audit_strict_reviews_what_it_cannot_check():
    policy = Policy.load("audit-strict")
    no_detector = facts(synthetic_probability=None, speech_seconds=None)
    assert policy.decide(no_detector).matched_rules == ["no-detector-score"]
    music = facts(synthetic_probability=None, speech_seconds=0.0, segments=[])
    assert policy.decide(music).action == "allow"
    perth_hint = facts(watermarks=[{"backend": "perth", "detected": True, "p_value": 0.03}])
    assert policy.decide(perth_hint).matched_rules == ["public-watermark-hint"]
    unchecked = {"backend": "audioseal", "detected": False, "p_value": 1.0, "error": "too short"}
    assert policy.decide(facts(watermarks=[unchecked])).matched_rules == ["watermark-check-failed"]
    missing_duration = facts()
    del missing_duration["duration"]
    decision = policy.decide(missing_duration)
    assert (decision.action, decision.matched_rules) == ("review", ["too-short-to-judge"])
    assert "could not be evaluated" in decision.message
    assert policy.decide(facts()).action == "allow"


# --- validation at load time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "header", "expected"),
    [
        (
            rule("r1", "true") + rule("r2", "synthetic_prob >= 0.9"),
            "",
            'x.yaml: rule "r2": unknown fact "synthetic_prob" '
            '(did you mean "synthetic_probability"?',
        ),
        (
            rule("r1", "true") + rule("r1", "true"),
            "",
            'x.yaml: rule "r1" (#2): duplicate id (rule #1 has it too)',
        ),
        (rule("r1", "true", action="deny"), "", 'x.yaml: rule "r1": unknown action "deny"'),
        (rule("r1", "synthetic_probability >= "), "", 'x.yaml: rule "r1": bad CEL expression'),
        (
            rule("r1", 'meta.uploader.lowerAscii() == "a"'),
            "",
            'x.yaml: rule "r1": unknown function lowerAscii()',
        ),
        (
            rule("r1", "watermarks.exists(w, w.detected) && w.p_value < 0.1"),
            "",
            'x.yaml: rule "r1": unknown fact "w"',
        ),
        (
            rule("r1", "true", message="by {meta.uploader}, {uploadr}"),
            "",
            'x.yaml: rule "r1": message placeholder {uploadr}: unknown fact "uploadr"',
        ),
        (rule("r1", "true") + "    acton: block\n", "", 'x.yaml: rule "r1": unknown key "acton"'),
        (rule("r1", "true"), "colour: red\n", 'x.yaml: unknown key "colour"'),
        (rule("r1", "true"), "on_error: panic\n", 'x.yaml: "on_error" must be skip or one of'),
        ("  - when: 'true'\n    action: block\n", "", 'x.yaml: rule #1: missing "id"'),
    ],
)
def test_load_errors_name_the_file_the_rule_and_the_problem(tmp_path, rules, header, expected):
    path = write_policy(tmp_path, rules, header)
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert any(p.startswith(str(tmp_path)) and expected in p for p in err.value.problems), str(
        err.value
    )


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_policy(
        tmp_path, rule("a", "nope > 1") + rule("b", "true", action="deny") + rule("a", "1 +")
    )
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert len(err.value.problems) == 4  # unknown fact, unknown action, duplicate id, syntax


def test_a_folder_is_not_a_policy_file(tmp_path):
    with pytest.raises(PolicyError) as err:
        Policy.load(tmp_path)
    assert err.value.problems == [f"{tmp_path}: is a folder, not a policy file"]


def test_bad_default_and_bad_yaml_are_errors(tmp_path):
    bad_default = tmp_path / "d.yaml"
    bad_default.write_text("name: t\nversion: 1\ndefault: deny\nrules: []\n")
    with pytest.raises(PolicyError, match='"default" must be one of'):
        Policy.load(bad_default)
    not_yaml = tmp_path / "y.yaml"
    not_yaml.write_text("name: t\nrules: [\n")
    with pytest.raises(PolicyError, match=r"y\.yaml: not valid YAML \(line \d+\)"):
        Policy.load(not_yaml)


def test_conditions_are_cel_not_python(tmp_path):
    path = write_policy(tmp_path, rule("r1", "__import__('os').system('true') == 0"))
    with pytest.raises(PolicyError, match="unknown function __import__"):
        Policy.load(path)


def test_an_unquoted_boolean_condition_is_accepted(tmp_path):
    path = write_policy(tmp_path, "  - id: all\n    when: true\n    action: review\n")
    assert Policy.load(path).decide({}).action == "review"


@pytest.mark.parametrize(
    ("when", "gives"),
    [
        ("1 + 2", "int"),
        ("synthetic_probability", "double"),
        ("speech_seconds", "double"),
        ("channels", "int"),
        ("meta", "map"),
        ("watermarks", "list"),
        ("synthetic_probability * 2.0", "double"),
        ("sample_rate / 2", "int"),
        ("-duration", "double"),
        ("-meta.score", "the result of -"),
        ("duration + 1", "double"),  # celpy adds an int to a double
        ('"block"', "string"),
        ("[true]", "list"),
        ('{"a": true}', "map"),
        ("size(tags)", "int"),
        ("watermarks.filter(w, w.detected)", "list"),
        ('tags.size() > 0 ? 1 : "x"', "int or string"),
    ],
)
def test_a_condition_that_can_never_be_true_or_false_is_a_load_error(tmp_path, when, gives):
    with pytest.raises(PolicyError) as err:
        Policy.load(write_policy(tmp_path, rule("never", when)))
    assert err.value.problems == [
        f'{tmp_path / "x.yaml"}: rule "never": condition must give true or false, '
        f"but this one gives {gives}"
    ]


@pytest.mark.parametrize(
    "when",
    [
        "meta.flag",
        "tags.size() > 0 ? meta.flag : false",
        "dyn(meta.flag)",
        "(duration > 1) == true",
        '!has(meta.uploader) || meta.uploader.startsWith("a")',
        "watermarks.exists(w, w.detected)",
        "mark_verified",
        "tags.size() > 0 ? mark_verified : false",
    ],
)
def test_a_condition_whose_type_depends_on_the_facts_loads(tmp_path, when):
    policy = Policy.load(write_policy(tmp_path, rule("maybe", when)))
    assert policy.rules[0].when == when


# --- evaluation -------------------------------------------------------------------------------


def test_a_runtime_error_is_traced_and_does_not_match_by_default(tmp_path):
    policy = Policy.load(write_policy(tmp_path, rule("score", "synthetic_probability >= 0.9")))
    decision = policy.decide(facts(synthetic_probability=None))
    assert (decision.action, decision.matched_rules) == ("allow", [])
    (trace,) = decision.trace
    assert trace.result == "error"
    assert "null" in trace.error and ">=" in trace.error
    assert trace.reads == {"synthetic_probability": None}


def test_on_error_action_makes_an_erroring_rule_decide(tmp_path):
    policy = Policy.load(
        write_policy(
            tmp_path,
            rule("score", "synthetic_probability >= 0.9") + rule("later", "true", "block"),
            header="on_error: review\n",
        )
    )
    decision = policy.decide(facts(synthetic_probability=None))
    assert (decision.action, decision.matched_rules) == ("review", ["score"])
    assert 'rule "score" could not be evaluated' in decision.message


def test_a_condition_that_is_not_boolean_is_an_error(tmp_path):
    policy = Policy.load(write_policy(tmp_path, rule("r1", "meta.score")))
    (trace,) = policy.decide(facts(meta={"score": 0.5})).trace
    assert (trace.result, trace.error) == ("error", "condition gave double, not true or false")


@pytest.mark.parametrize(
    ("fact", "value", "problem"),
    [
        ("synthetic_probability", float("nan"), "must be a number from 0 to 1, got nan"),
        ("synthetic_probability", 95, "must be a number from 0 to 1, got 95"),
        ("synthetic_probability", -0.5, "must be a number from 0 to 1, got -0.5"),
        ("duration", float("inf"), "must be a finite number, got inf"),
        ("speech_seconds", float("-inf"), "must be a finite number, got -inf"),
    ],
)
def test_a_fact_outside_its_range_is_the_callers_error(tmp_path, fact, value, problem):
    """NaN compares false with everything, so a NaN score would silently pass every rule."""
    policy = Policy.load(write_policy(tmp_path, rule("score", "synthetic_probability >= 0.9")))
    with pytest.raises(PolicyError) as err:
        policy.decide(facts(**{fact: value}))
    assert err.value.problems == [f'{tmp_path / "x.yaml"}: fact "{fact}" {problem}']


@pytest.mark.parametrize(
    ("value", "action"), [(None, "allow"), (0, "allow"), (0.5, "allow"), (1, "block")]
)
def test_a_score_from_0_to_1_or_null_is_accepted(tmp_path, value, action):
    policy = Policy.load(write_policy(tmp_path, rule("score", "synthetic_probability >= 0.9")))
    assert policy.decide(facts(synthetic_probability=value)).action == action


def test_a_missing_fact_is_an_error_naming_it(tmp_path):
    policy = Policy.load(write_policy(tmp_path, rule("r1", "channels > 1")))
    (trace,) = policy.decide({}).trace
    assert trace.error == 'fact "channels" was not given'


def test_trace_covers_every_rule_with_the_values_read(tmp_path):
    rules = (
        rule("by-uploader", 'meta.uploader == "mallory"', "block")
        + rule("marked", "watermarks.exists(w, w.detected)", "label")
        + rule("long", "duration > 3", "review")
        + rule("generator", 'has(meta.generator) && meta.generator == "x"', "block")
    )
    policy = Policy.load(write_policy(tmp_path, rules))
    decision = policy.decide(facts(watermarks=[KEYED_MARK]))
    assert [t.id for t in decision.trace] == ["by-uploader", "marked", "long", "generator"]
    assert [t.result for t in decision.trace] == [False, True, True, False]
    assert [t.matched for t in decision.trace] == [False, True, False, False]
    assert decision.trace[0].reads == {"meta.uploader": "alice"}
    assert decision.trace[1].reads == {"watermarks": [KEYED_MARK]}
    assert decision.trace[3].missing == ["meta.generator"]
    assert decision.action == "label"
    json.dumps(decision.to_dict())  # the trace is plain JSON data


def test_integer_facts_compare_with_decimal_thresholds(tmp_path):
    policy = Policy.load(
        write_policy(tmp_path, rule("r1", "synthetic_probability >= 0.9 && duration > 2.5"))
    )
    assert policy.decide(facts(synthetic_probability=1, duration=3)).action == "block"


def test_a_fact_that_is_not_data_is_the_callers_error(tmp_path):
    policy = Policy.load(write_policy(tmp_path, rule("r1", "true")))
    with pytest.raises(PolicyError, match='fact "meta": cannot use a object'):
        policy.decide(facts(meta={"uploader": object()}))


def test_messages_fill_placeholders_readably(tmp_path):
    template = (
        "{synthetic_probability} by {meta.uploader} via {meta.generator}; {watermarks}; "
        "{segments}; {{literal}}; {tags}; {channels}"
    )
    policy = Policy.load(write_policy(tmp_path, rule("r1", "true", message=template)))
    segments = [{"start": 0.0, "end": 2.5, "synthetic_probability": 0.912}]
    marks = [KEYED_MARK, {"backend": "perth", "detected": False, "p_value": 0.5}]
    message = policy.decide(
        facts(synthetic_probability=0.9312, segments=segments, watermarks=marks, tags=["a", "b"])
    ).message
    assert message == (
        "0.93 by alice via unknown; keyed mark, payload 00ff, p-value 1e-09; 0-2.5 s: 0.91; "
        "{literal}; a, b; 1"
    )


def test_known_facts_match_the_design():
    assert set(KNOWN_FACTS) == {
        "synthetic_probability",
        "segments",
        "watermarks",
        "duration",
        "sample_rate",
        "channels",
        "tags",
        "meta",
        "mark_verified",
        "speech_seconds",
    }


def test_policy_dir_is_the_package_folder():
    assert {p.stem for p in POLICY_DIR.glob("*.yaml")} >= set(SHIPPED)
