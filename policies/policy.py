"""Policies: a YAML file of ordered CEL rules that turns facts into one decision with a trace.

```yaml
name: upload-screening
version: 1
default: allow            # action when no rule matches
on_error: skip            # optional: skip (default) or an action, see below
rules:                    # first match wins
  - id: known-ai-watermark
    when: watermarks.exists(w, w.detected)
    action: label         # allow | label | review | block
    message: "AI-generated audio ({watermarks})"
```

Everything is checked when the file loads, so a policy that loads is one that can run: unknown
keys, missing or duplicate rule ids, unknown actions, a condition that is not a string, CEL
syntax errors, operators on types they are not defined for, and facts or message
placeholders that are not among :data:`KNOWN_FACTS`. Each problem names the file, the rule and
what is wrong, and :class:`PolicyError` carries all of them at once.

A condition that fails *at run time* (``synthetic_probability >= 0.9`` when no detector ran
and the fact is null, or ``meta.uploader`` when the caller passed no uploader) never raises:
the rule's trace records the error. What the error means is the policy's choice, because it
depends on what the policy protects: ``on_error: skip`` (the default) treats the rule as not
matching, which suits screening where a missing signal should not block; ``on_error: review``
(or any action) makes an erroring rule match with that action, which suits an audit that must
not pass what it could not check. Either way the trace says so.

All rules are evaluated, not only up to the first match, so ``policy explain`` and the trace of
every decision show what each rule made of the facts; the first matching rule still decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from policies.cel_engine import (
    KNOWN_FACTS,
    Condition,
    ConditionError,
    EvaluationError,
    compile_condition,
    facts_to_cel,
    lookup,
    unknown_fact_message,
)

ACTIONS = ("allow", "label", "review", "block")
ON_ERROR_SKIP = "skip"
POLICY_DIR = Path(__file__).resolve().parent

_POLICY_KEYS = ("name", "version", "description", "default", "on_error", "rules")
_RULE_KEYS = ("id", "when", "action", "message", "description")
# "{fact}" or "{meta.uploader}"; "{{" and "}}" are literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*(?:\.\w+)*)\}")
_MAX_LISTED = 5


class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` holds one sentence per thing wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Rule:
    id: str
    when: str
    action: str
    message: str
    condition: Condition = field(repr=False, compare=False)


@dataclass(frozen=True)
class RuleTrace:
    """What one rule made of the facts: its result and the fact values its condition reads."""

    id: str
    when: str
    action: str
    result: bool | Literal["error"]
    error: str | None
    reads: dict[str, Any]
    missing: list[str]
    matched: bool  # this rule decided (first match)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "when": self.when,
            "action": self.action,
            "result": self.result,
            "error": self.error,
            "reads": self.reads,
            "missing": self.missing,
            "matched": self.matched,
        }


@dataclass(frozen=True)
class Decision:
    action: str
    matched_rules: list[str]
    message: str
    trace: list[RuleTrace]
    policy_name: str
    policy_version: int | str

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "matched_rules": list(self.matched_rules),
            "message": self.message,
            "policy": {"name": self.policy_name, "version": self.policy_version},
            "trace": [t.to_dict() for t in self.trace],
        }


@dataclass(frozen=True)
class Policy:
    name: str
    version: int | str
    default: str
    rules: tuple[Rule, ...]
    source: str
    on_error: str = ON_ERROR_SKIP

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Load a policy file, or a shipped policy by name (``"upload-screening"``)."""
        path = Path(path)
        if not path.exists() and path.name == str(path) and path.suffix == "":
            path = builtin_policy_path(path.name)
        return cls.from_yaml(_read_policy_text(path), source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<policy>") -> Policy:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid"
            raise PolicyError([f"{source}: not valid YAML{where}: {problem}"]) from None
        except RecursionError:  # PyYAML composes nested collections by recursion
            raise PolicyError([f"{source}: the YAML is nested too deeply to read"]) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<policy>") -> Policy:
        """Validate and compile; every problem found is reported, not just the first."""
        if not isinstance(data, Mapping):
            raise PolicyError([f"{source}: a policy is a mapping with name, version, rules"])
        problems: list[str] = []

        def bad(problem: str) -> None:
            problems.append(f"{source}: {problem}")

        for key in data:
            if key not in _POLICY_KEYS:
                bad(f'unknown key "{key}" (allowed: {", ".join(_POLICY_KEYS)})')
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            bad('"name" must be a non-empty string')
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int | str):
            bad('"version" must be a number or a string')
        default = data.get("default")
        if default not in ACTIONS:
            bad(f'"default" must be one of {", ".join(ACTIONS)} (got {default!r})')
        on_error = data.get("on_error", ON_ERROR_SKIP)
        if on_error != ON_ERROR_SKIP and on_error not in ACTIONS:
            bad(f'"on_error" must be skip or one of {", ".join(ACTIONS)} (got {on_error!r})')
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            bad('"rules" must be a list')
            raw_rules = []
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for number, raw in enumerate(raw_rules, 1):
            rule, rule_problems = _parse_rule(raw, number, seen)
            for problem in rule_problems:
                bad(problem)
            if rule is not None:
                rules.append(rule)
        if problems:
            raise PolicyError(problems)
        return cls(
            name=name.strip(),
            version=version,
            default=default,
            rules=tuple(rules),
            source=source,
            on_error=on_error,
        )

    def decide(self, facts: Mapping[str, Any]) -> Decision:
        """Evaluate every rule on ``facts``; the first that matches decides.

        Runtime errors in a condition never raise (see the module docstring); a fact value that
        cannot be a CEL value at all (an object, not JSON-like data) or that no rule can judge
        soundly (a NaN score, see :func:`policies.cel_engine.check_fact`) is the caller's bug
        and raises :class:`PolicyError`.
        """
        try:
            activation = facts_to_cel(facts)
        except (TypeError, ValueError) as exc:
            raise PolicyError([f"{self.source}: {exc}"]) from None
        trace: list[RuleTrace] = []
        winner: Rule | None = None
        winner_action = self.default
        winner_error: str | None = None
        for rule in self.rules:
            error = None
            result: bool | Literal["error"]
            try:
                result = rule.condition.evaluate(activation)
            except EvaluationError as exc:
                result, error = "error", str(exc)
            matches = result is True or (error is not None and self.on_error != ON_ERROR_SKIP)
            decides = winner is None and matches
            if decides:
                winner = rule
                winner_action = rule.action if error is None else self.on_error
                winner_error = error
            reads, missing = _read_facts(facts, rule.condition.reads)
            trace.append(
                RuleTrace(
                    id=rule.id,
                    when=rule.when,
                    action=rule.action,
                    result=result,
                    error=error,
                    reads=reads,
                    missing=missing,
                    matched=decides,
                )
            )
        if winner is None:
            message = f"no rule matched; default action: {self.default}"
        elif winner_error is not None:
            message = (
                f'rule "{winner.id}" could not be evaluated ({winner_error}); '
                f"on_error: {self.on_error}"
            )
        else:
            message = render_message(winner.message, facts)
        return Decision(
            action=winner_action,
            matched_rules=[winner.id] if winner else [],
            message=message,
            trace=trace,
            policy_name=self.name,
            policy_version=self.version,
        )


def _read_policy_text(path: Path) -> str:
    """The policy file's text, or a PolicyError that says in words why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{path}: no such policy file"]) from None
    except IsADirectoryError:
        raise PolicyError([f"{path}: is a folder, not a policy file"]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PolicyError([f"{path}: cannot read the policy ({reason})"]) from None
    except UnicodeDecodeError:
        raise PolicyError([f"{path}: cannot read the policy (not UTF-8 text)"]) from None


def builtin_policy_path(name: str) -> Path:
    """The file of a policy that ships with audioguard, by name (``"upload-screening"``)."""
    path = POLICY_DIR / f"{name}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in POLICY_DIR.glob("*.yaml")))
        raise PolicyError([f'"{name}": no such policy file or shipped policy (shipped: {shipped})'])
    return path


def render_message(template: str, facts: Mapping[str, Any]) -> str:
    """Fill ``{fact}`` / ``{meta.uploader}`` placeholders with readable values."""

    def fill(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]
        path = match.group(1)
        found, value = lookup(facts, path)
        return format_fact(path, value) if found else "unknown"

    return _PLACEHOLDER.sub(fill, template)


def format_fact(path: str, value: Any) -> str:
    """A fact value as a person reads it: 0.93, not 0.930000123; marks and segments summarised."""
    if path == "watermarks" and isinstance(value, list):
        found = [w for w in value if isinstance(w, Mapping) and w.get("detected")]
        return "; ".join(_watermark(w) for w in found) if found else "no watermark detected"
    if path == "segments" and isinstance(value, list):
        return _listing([_segment(s) for s in value]) if value else "no segments"
    return _format_value(value)


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return _listing([_format_value(v) for v in value]) if value else "none"
    return str(value)


def _number(value: float) -> str:
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2g}"  # p-values: 1e-09, 3.2e-07
    return f"{value:.2f}".rstrip("0").rstrip(".")  # 0.93, 12.5, 3


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _watermark(mark: Mapping[str, Any]) -> str:
    details = []
    if mark.get("payload"):
        details.append(f"payload {mark['payload']}")
    if isinstance(mark.get("p_value"), int | float):
        details.append(f"p-value {_number(float(mark['p_value']))}")
    return ", ".join([f"{mark.get('backend', 'unknown')} mark", *details])


def _segment(segment: Any) -> str:
    if not isinstance(segment, Mapping):
        return _format_value(segment)
    span = f"{_format_value(segment.get('start'))}-{_format_value(segment.get('end'))} s"
    probability = segment.get("synthetic_probability")
    return f"{span}: {_format_value(probability)}" if probability is not None else span


def _read_facts(facts: Mapping[str, Any], paths: Sequence[str]) -> tuple[dict[str, Any], list]:
    reads: dict[str, Any] = {}
    missing: list[str] = []
    for path in paths:
        found, value = lookup(facts, path)
        if found:
            reads[path] = value
        else:
            missing.append(path)
    return reads, missing


def _yaml_kind(value: Any) -> str:
    """What a YAML value is, in a policy author's words."""
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _parse_rule(raw: Any, number: int, seen: dict[str, int]) -> tuple[Rule | None, list[str]]:
    """One rule, or None and the sentences that say what is wrong with it."""
    if not isinstance(raw, Mapping):
        return None, [f"rule #{number}: a rule is a mapping with id, when, action, message"]
    problems: list[str] = []
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        label = f"rule #{number}"
        problems.append(f'{label}: missing "id" (a non-empty string)')
    else:
        label = f'rule "{rule_id}"'
        if rule_id in seen:
            label = f'rule "{rule_id}" (#{number})'
            problems.append(f"{label}: duplicate id (rule #{seen[rule_id]} has it too)")
        seen.setdefault(rule_id, number)
    for key in raw:
        if key not in _RULE_KEYS:
            problems.append(f'{label}: unknown key "{key}" (allowed: {", ".join(_RULE_KEYS)})')
    action = raw.get("action")
    if action not in ACTIONS:
        problems.append(f'{label}: unknown action "{action}" (allowed: {", ".join(ACTIONS)})')
    when = raw.get("when")
    if isinstance(when, bool):  # YAML reads an unquoted `when: true` as a boolean
        when = "true" if when else "false"
    condition = None
    if when is None or (isinstance(when, str) and not when.strip()):
        problems.append(f'{label}: missing "when" (a CEL expression)')
    elif not isinstance(when, str):
        problems.append(
            f'{label}: "when" must be a CEL expression string, got {_yaml_kind(when)} '
            f"({when!r}); quote it if it is meant as one"
        )
    else:
        try:
            condition = compile_condition(when)
        except ConditionError as exc:
            problems.append(f"{label}: {exc}")
    message = raw.get("message", rule_id)
    if not isinstance(message, str):
        problems.append(f'{label}: "message" must be a string')
    else:
        for placeholder in filter(None, _PLACEHOLDER.findall(message)):
            fact = placeholder.split(".")[0]
            if fact not in KNOWN_FACTS:
                problems.append(
                    f"{label}: message placeholder {{{placeholder}}}: {unknown_fact_message(fact)}"
                )
    if problems or condition is None:
        return None, problems
    return Rule(id=rule_id, when=when, action=action, message=message, condition=condition), []
