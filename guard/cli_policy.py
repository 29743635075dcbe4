"""``audioguard policy ...`` and ``audioguard audit ...``: check and explain policies, verify logs.

``audit`` is an :class:`AuditGroup`: ``audit verify LOG`` and ``audit keygen KEYFILE`` are
subcommands, and ``audit DIR --report FILE.html`` is short for ``audit report DIR --report
FILE.html`` once a ``report`` command is registered (see :class:`AuditGroup`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from guard.audio import printable_name
from guard.guard import JsonNumberError, loads_strict
from policies import (
    KNOWN_FACTS,
    Decision,
    Policy,
    PolicyError,
    check_fact,
    generate_signing_key,
    load_public_key,
    verify_log,
)
from policies.policy import ON_ERROR_SKIP

REPORT_COMMAND = "report"
_VALUE_WIDTH = 100
_RECORD_HASH = re.compile(r"[0-9a-fA-F]{64}")


@click.group()
def policy() -> None:
    """Validate policies and explain their decisions."""


@policy.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per policy, one per line.")
def check(files: tuple[str, ...], as_json: bool) -> None:
    """Validate each policy FILE (or shipped policy name); exit 1 if any is invalid."""
    failed = False
    for file in files:
        try:
            loaded = Policy.load(file)
        except PolicyError as exc:
            failed = True
            if as_json:
                # a name that is not UTF-8 must not put a lone surrogate into the JSON
                problems = [printable_name(p) for p in exc.problems]
                found = {"path": printable_name(file), "error": printable_name(str(exc))}
                click.echo(json.dumps({**found, "problems": problems}))
            else:
                for problem in exc.problems:
                    click.echo(f"error: {problem}", err=True)
            continue
        if as_json:
            click.echo(json.dumps(_summary(printable_name(file), loaded)))
        else:
            click.echo(
                f"{file}: ok ({loaded.name} v{loaded.version}: {len(loaded.rules)} rules, "
                f"default {loaded.default}, on_error {loaded.on_error})"
            )
    if failed:
        sys.exit(1)


@policy.command()
@click.argument("file")
@click.option(
    "--facts",
    "facts_arg",
    required=True,
    help="The facts: a JSON object, @FILE, or the path of a JSON file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision and trace as JSON.")
def explain(file: str, facts_arg: str, as_json: bool) -> None:
    """Show what every rule of policy FILE makes of the facts, and the decision."""
    loaded = Policy.load(file)
    facts = _load_facts(facts_arg)
    decision = loaded.decide(facts)
    unknown = sorted(set(facts) - set(KNOWN_FACTS))
    if as_json:
        click.echo(json.dumps({**decision.to_dict(), "unknown_facts": unknown}))
        return
    if unknown:
        click.echo(
            f"note: facts no rule can read: {', '.join(unknown)} (known: {', '.join(KNOWN_FACTS)})",
            err=True,
        )
    _print_explanation(loaded, decision)


def _summary(file: str, loaded: Policy) -> dict[str, Any]:
    return {
        "path": file,
        "name": loaded.name,
        "version": loaded.version,
        "default": loaded.default,
        "on_error": loaded.on_error,
        "rules": [rule.id for rule in loaded.rules],
    }


def _load_facts(arg: str) -> dict[str, Any]:
    """``--facts`` as a JSON object given inline, as ``@FILE``, or as a file path."""
    if not arg.removeprefix("@").strip():  # "" would be read as the folder "."
        raise click.BadParameter(
            "the facts argument is empty; give a JSON object, @FILE or a path",
            param_hint="--facts",
        )
    if not _is_inline_json(arg):
        source = arg.removeprefix("@")
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise click.BadParameter(
                f"{source}: cannot read facts ({reason}); give a JSON object, @FILE or a path",
                param_hint="--facts",
            ) from None
    else:
        source, text = "the JSON given", arg
    try:
        return _parse_facts(text)
    except ValueError as exc:
        raise click.BadParameter(f"{source}: {exc}", param_hint="--facts") from None


def _parse_facts(text: str) -> dict[str, Any]:
    """The facts in ``text``; ``ValueError`` with a sentence (without the source) if unusable.

    Each fact is checked here as the policy will check it, so that a bad value is blamed on
    ``--facts`` rather than on the policy file.
    """
    try:
        facts = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:  # json decodes nested arrays and objects by recursion
        raise ValueError("facts are nested too deeply") from None
    except JsonNumberError as exc:
        if exc.constant is None:
            raise ValueError("facts hold a number too long to read") from None
        raise ValueError(f"{exc.constant} is not a number facts can hold") from None
    if not isinstance(facts, dict):
        raise ValueError("facts must be a JSON object")
    for name, value in facts.items():
        check_fact(name, value)
    return facts


def _is_inline_json(arg: str) -> bool:
    """Whether ``--facts`` is JSON text rather than a file to read.

    ``{...}`` always is. Other JSON (``[1, 2]``) is too unless a file has that name, so that
    the user hears that facts must be an object rather than that no such file exists.
    """
    if arg.startswith("@"):
        return False
    if arg.lstrip().startswith("{"):
        return True
    if os.path.exists(arg):
        return False
    try:
        json.loads(arg)
    except json.JSONDecodeError:
        return False
    return True


def _print_explanation(loaded: Policy, decision: Decision) -> None:
    click.echo(
        f"policy {loaded.name} v{loaded.version} ({loaded.source}): "
        f"{len(loaded.rules)} rules, first match wins, on_error {loaded.on_error}"
    )
    for number, rule in enumerate(decision.trace, 1):
        if rule.matched:
            verdict = f"{_result_word(rule.result)} -> {decision.action}  <- decides"
        elif rule.result == "error" and loaded.on_error == ON_ERROR_SKIP:
            verdict = "error, does not match"
        elif rule.result == "error":
            verdict = f"error (on_error {loaded.on_error}; an earlier rule decided)"
        elif rule.result is True:
            verdict = f"true (action {rule.action}; an earlier rule decided)"
        else:
            verdict = f"false (action {rule.action})"
        if rule.error:
            verdict += f": {rule.error}"
        click.echo(f"  {number}. {rule.id}: {verdict}")
        click.echo(f"       when: {rule.when}")
        for path, value in rule.reads.items():
            click.echo(f"       {path} = {_short_json(value)}")
        for path in rule.missing:
            click.echo(f"       {path}: not given")
    which = f"rule {decision.matched_rules[0]}" if decision.matched_rules else "default"
    click.echo(f"decision: {decision.action} ({which}): {decision.message}")


def _result_word(result: bool | str) -> str:
    return {True: "TRUE", False: "false"}.get(result, str(result))


def _short_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


class AuditGroup(click.Group):
    """A group where an unknown first argument is the folder of the ``report`` subcommand.

    ``audioguard audit verify LOG`` runs ``verify``; ``audioguard audit DIR --report FILE.html``
    runs ``audit report DIR --report FILE.html``. The report command lives in
    ``guard/cli_report.py`` and attaches with this hook, which ``guard/cli.py`` calls::

        from guard.cli_policy import REPORT_COMMAND, audit

        @audit.command(REPORT_COMMAND)
        @click.argument("paths", nargs=-1, required=True)
        @click.option("--report", "report_file", type=click.Path(dir_okay=False))
        @click.option("--json", "as_json", is_flag=True)
        def report(paths, report_file, as_json): ...

    Rerouting applies when the first
    argument is not a subcommand, unless it looks like a typo of one (``verfy``) and names no
    existing path; a folder literally named like a subcommand needs the explicit
    ``audit report verify``. The group ignores unknown options so that ``audit --report
    FILE.html DIR`` reaches the report command too.
    """

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and self._is_report_argument(ctx, args[0]):
            args = [REPORT_COMMAND, *args]
        return super().resolve_command(ctx, args)

    def _is_report_argument(self, ctx: click.Context, first: str) -> bool:
        if self.get_command(ctx, REPORT_COMMAND) is None or self.get_command(ctx, first):
            return False
        if first.startswith("-") or os.path.exists(first):
            return True
        return not difflib.get_close_matches(first, self.list_commands(ctx), n=1, cutoff=0.75)


@click.group(cls=AuditGroup, context_settings={"ignore_unknown_options": True})
def audit() -> None:
    """Audit logs and auditors' reports.

    `audit verify LOG` checks a decision log's hash chain (and signatures);
    `audit DIR --report FILE.html` scans DIR and writes an auditor's HTML report.
    """


@audit.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False),
    help="Ed25519 public key (PEM): every record must carry a valid signature by it.",
)
@click.option(
    "--anchor",
    metavar="HASH",
    callback=lambda _ctx, _param, value: _anchor_hash(value),
    help="A head hash recorded earlier (an auditor's report shows it); the log must contain it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def verify(log: str, public_key: str | None, anchor: str | None, as_json: bool) -> None:
    """Check LOG's hash chain; exit 1 and name the first bad record if it was tampered with."""
    key = load_public_key(public_key) if public_key else None
    result = verify_log(log, key, anchor=anchor)
    if as_json:
        click.echo(json.dumps({"path": printable_name(log), **result.to_dict()}))
    elif result.ok:
        signed = "every record signed by the given key" if key else "signatures not checked"
        repairs = f", {result.repairs} torn-record repair(s)" if result.repairs else ""
        contents = (
            f"{result.records} records, head {result.head_hash}"
            if result.records
            else "empty log (no records yet, so no head hash)"
        )
        click.echo(f"{log}: ok, {contents}; {signed}{repairs}")
    else:
        click.echo(f"{log}: FAILED after {result.records} good records: {result.problem}")
    if not result.ok:
        sys.exit(1)


def _anchor_hash(value: str | None) -> str | None:
    """``--anchor`` in the log's lower case; anything but a hash is a mistyped option, which
    must not be reported as records cut off the log."""
    if value is None:
        return None
    if not _RECORD_HASH.fullmatch(value):
        raise click.BadParameter(
            "must be the 64 hex digits of a record hash (the head hash that audit verify prints)"
        )
    return value.lower()


@audit.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
def keygen(keyfile: str) -> None:
    """Write a new Ed25519 key for signing audit logs to KEYFILE (0600) and KEYFILE.pub."""
    public = generate_signing_key(keyfile)
    click.echo(
        f"wrote a signing key to {keyfile} (mode 0600; keep it secret) and its public key to "
        f"{public} (give it to auditors: audit verify LOG --public-key {public})"
    )
