"""``audioguard scan``: screen files and folders with the Guard, one line per file, a CI gate.

Files are screened on a thread pool: decoding, the detector and the watermark backends spend
their time in libsndfile, torch and numpy, which release the GIL, and one Guard (one copy of
every model) serves all threads. Results are printed in input order whatever order they
finish in, so two runs over the same folder print the same lines.

Exit status, so a pipeline can gate on it:

- 0: every input was screened, and no decision reached ``--fail-on``;
- 1: an input could not be screened (its line says why; the others were), or the scan could
  not start (a bad policy, key or detector); this wins over 3, because a file nobody could
  screen may be the one that should have been blocked;
- 2: the command line itself is wrong (click's usage errors);
- 3: some file's decision was at or above ``--fail-on`` (e.g. ``--fail-on review`` fails on
  review and block).

A file on which one watermark check could not run (the keyed mark needs 8 kHz, AudioSeal a
second of audio) was still screened: the policy decided on what could be checked, and that
finding carries an ``error`` the policy can read (``watermarks.exists(w, has(w.error))``), so
whether an unchecked mark matters is the policy's call, and ``--fail-on`` gates on it. Such a
file does not change the exit status by itself; its line names the check and the reason, and
the tally counts it.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from guard import audio as audio_io
from guard.guard import Guard, GuardConfig, parse_meta
from guard.progress import progress, say
from guard.report import report_path_problem, summarize, write_report
from policies import ACTIONS, AuditLogError, PolicyError, head_hash
from watermark.registry import BACKENDS
from watermark.types import WatermarkError

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_FAIL_ON = 3

PUBLIC_BACKENDS = tuple(b for b in BACKENDS if b != "keyed")


# Per-file problems: reported on that file's line while the other files go on.
def default_workers() -> int:
    """The cores this process may run on (``taskset`` and cgroup CPU sets are honoured)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parse_public(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in PUBLIC_BACKENDS]
    if unknown:
        raise click.BadParameter(
            f"unknown backend {unknown[0]!r}; choose from {', '.join(PUBLIC_BACKENDS)} or 'none'"
        )
    return names


def _parse_meta(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict:
    if value is None:
        return {}
    try:
        return parse_meta(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def guard_options(command: Callable) -> Callable:
    """The options that build the Guard, shared by ``scan`` and ``audit DIR``."""
    options = [
        click.option(
            "--policy",
            default="upload-screening",
            show_default=True,
            help="A shipped policy name or a policy YAML file.",
        ),
        click.option(
            "--key",
            "keys",
            multiple=True,
            type=click.Path(dir_okay=False),
            help="Key file of a keyed watermark to look for (repeatable).",
        ),
        click.option(
            "--audit-log",
            type=click.Path(dir_okay=False),
            help="Append every decision to this hash-chained JSONL log.",
        ),
        click.option(
            "--audit-signing-key",
            type=click.Path(dir_okay=False),
            help="Ed25519 key from `audit keygen` that signs every record appended to "
            "--audit-log, so an auditor with its public key can tell who wrote the log.",
        ),
        click.option(
            "--no-detector",
            is_flag=True,
            help="Skip the synthetic-voice detector (synthetic_probability is null).",
        ),
        click.option(
            "--public-backends",
            default=",".join(PUBLIC_BACKENDS),
            show_default=True,
            callback=_parse_public,
            help="Public watermarks to look for, comma-separated, or 'none'.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help="Files screened at once [default: the cores available].",
        ),
        click.option(
            "--meta",
            callback=_parse_meta,
            metavar="JSON",
            help="Caller metadata for the policy (facts meta.*), a JSON object.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_guard(
    policy: str,
    keys: Sequence[str],
    audit_log: str | None,
    no_detector: bool,
    public: Sequence[str],
    audit_signing_key: str | None = None,
) -> Guard:
    """The Guard for these options; a setup problem becomes one sentence and exit 1."""
    if audit_signing_key and not audit_log:
        raise click.UsageError("--audit-signing-key signs the --audit-log: give --audit-log too")
    config = GuardConfig(
        policy=policy,
        keys=tuple(Path(k) for k in keys),
        use_detector=not no_detector,
        public_backends=tuple(public),
        audit_log=Path(audit_log) if audit_log else None,
        audit_signing_key=Path(audit_signing_key) if audit_signing_key else None,
    )
    try:
        return Guard(config)
    except (PolicyError, AuditLogError, WatermarkError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # DetectorError: the detector could not be built
        hint = " (use --no-detector to scan without it)" if config.use_detector else ""
        raise click.ClickException(f"{exc}{hint}") from exc


def check_report_path(
    report: str | None,
    paths: Sequence[str] = (),
    keys: Sequence[str] = (),
    audit_log: str | None = None,
    audit_signing_key: str | None = None,
) -> None:
    """Stop before scanning when the report could not be written at the end, or would
    replace a file the scan reads or writes: an input (a file in a named folder included), a
    key, the audit log or its signing key."""
    if not report:
        return
    # A report that does not exist yet is no file in a folder: list them only if it does.
    in_use = _files_in_use(paths, keys, audit_log, audit_signing_key, Path(report).exists())
    problem = report_path_problem(report, in_use)
    if problem:
        raise click.ClickException(problem)


def _files_in_use(
    paths: Sequence[str],
    keys: Sequence[str],
    audit_log: str | None,
    audit_signing_key: str | None,
    list_folders: bool = True,
) -> Iterator[tuple[str, str | Path]]:
    """``(what, file)`` for every file a scan with these options reads or writes (the files in
    the input folders only with ``list_folders``)."""
    if audit_log:
        yield "the --audit-log", audit_log
    if audit_signing_key:
        yield "the --audit-signing-key", audit_signing_key
    for key in keys:
        yield "a --key file", key
    for given in paths:
        yield "one of the inputs", given
        if list_folders and Path(given).is_dir():
            for found in audio_io.iter_audio_paths([given]):
                yield f"an input in the folder {audio_io.printable_name(given)}", found


def screen_one(guard: Guard, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """One file's scan line: the verdict, or the reason it could not be screened.

    Paths and messages are shown with :func:`guard.audio.printable_name`, so a file name that
    is not UTF-8 reaches JSON, the terminal and the report with its odd bytes escaped.
    """
    shown = audio_io.printable_name
    try:
        return {**guard.screen_file(path, meta).to_dict(), "path": shown(path)}
    except audio_io.AudioError as exc:
        return {"path": shown(path), "error": shown(str(exc))}
    except Exception as exc:  # noqa: BLE001 - one file's failure must not lose the others
        return {"path": shown(path), "error": shown(f"{path}: {exc}")}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads for the length of a scan, then back to what they were.

    With several files screened at once, each file's torch ops should get a share of the
    cores, not all of them: OpenMP teams that outnumber the cores spin against each other
    (measured: two workers on two cores, each with two torch threads, took about twice as
    long as with one thread each).
    Threads that torch starts later read this setting on their first parallel op.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def screen_paths(
    guard: Guard,
    paths: Sequence[Path],
    *,
    workers: int,
    meta: dict[str, Any] | None = None,
    quiet: bool = False,
) -> Iterator[dict[str, Any]]:
    """Scan lines in input order, each yielded as soon as it and every one before it is done."""
    meta = meta or {}
    if workers == 1 or len(paths) < 2:
        for path in progress(list(paths), quiet=quiet):
            yield screen_one(guard, path, meta)
        return
    with (
        torch_threads(max(1, default_workers() // workers)),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan") as pool,
    ):
        futures = [pool.submit(screen_one, guard, path, meta) for path in paths]
        try:
            for future in progress(futures, quiet=quiet):
                yield future.result()
        finally:  # stopped early (Ctrl-C, a bug): do not start the files still queued
            for future in futures:
                future.cancel()


def fails(decision: str, fail_on: str | None) -> bool:
    """Whether ``decision`` is at least as strict as ``fail_on``."""
    return fail_on is not None and ACTIONS.index(decision) >= ACTIONS.index(fail_on)


def exit_status(results: Sequence[dict[str, Any]], fail_on: str | None) -> int:
    if any("error" in r for r in results):
        return EXIT_INPUT_FAILED
    if any(fails(r["decision"], fail_on) for r in results):
        return EXIT_FAIL_ON
    return EXIT_OK


def run_scan(
    paths: Sequence[str],
    *,
    guard: Guard,
    workers: int | None,
    meta: dict[str, Any],
    quiet: bool,
    on_result: Callable[[dict[str, Any]], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Walk ``paths``, screen every file, hand each line to ``on_result`` in input order."""
    files = list(audio_io.iter_audio_paths(paths))
    results = []
    for result in screen_paths(
        guard, files, workers=workers or default_workers(), meta=meta, quiet=quiet
    ):
        on_result(result)
        results.append(result)
    return results


def report_summary(
    guard: Guard, results: Sequence[dict[str, Any]], inputs: Sequence[str], audit_log: str | None
) -> dict[str, Any]:
    """The summary for the report and ``audit --json``, citing the audit log's head hash."""
    return summarize(
        results,
        guard.versions(),
        inputs=inputs,
        audit_log=audit_log,
        head_hash=head_hash(audit_log) if audit_log else None,
    )


def _mark_name(finding: dict[str, Any]) -> str:
    """``keyed:KEY_ID`` for a keyed mark, the backend's name for a public one."""
    key_id = finding.get("key_id")
    return f"{finding['backend']}:{key_id}" if key_id else finding["backend"]


def unchecked(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The watermark checks that could not run on this file (each finding says why)."""
    return [w for w in result.get("watermarks", ()) if w.get("error")]


def human_line(result: dict[str, Any]) -> str:
    """One line a person reads: decision, rule and message, detector score, marks found, and
    every watermark check that could not run and why.

    A check that could not run (a keyed mark at a rate below 8 kHz, a clip too short for a
    public mark) is named, so "no marks" is never said of a check that was not done.
    """
    decision = result["decision"].upper()
    rules = f" [{', '.join(result['matched_rules'])}]" if result["matched_rules"] else ""
    message = f" {result['message']}" if result.get("message") else ""
    p = result["synthetic_probability"]
    score = f"synthetic {p:.2f}" if p is not None else "synthetic n/a"
    marks = [
        _mark_name(w) + (f" payload {w['payload']}" if w.get("payload") else "")
        for w in result["watermarks"]
        if w.get("detected")
    ]
    missed = [f"{_mark_name(w)} not checked ({w['error']})" for w in unchecked(result)]
    if marks:
        found = f"marks: {', '.join(marks)}"
    else:
        found = "no marks in the checks that ran" if missed else "no marks"
    return "; ".join([f"{result['path']}: {decision}{rules}{message}", score, found, *missed])


def tally_line(results: Sequence[dict[str, Any]]) -> str:
    counts = Counter(r.get("decision", "error") for r in results)
    parts = [f"{counts[a]} {a}" for a in ACTIONS]
    failed = f"; {counts['error']} could not be screened" if counts["error"] else ""
    partly = sum(1 for r in results if "error" not in r and unchecked(r))
    partial = f"; {partly} with a watermark check that could not run" if partly else ""
    return f"{len(results)} file(s): {', '.join(parts)}{failed}{partial}"


@click.command()
@click.argument("paths", nargs=-1, required=True)
@guard_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="Also write the auditor's HTML report (as `audit DIR --report`); an existing file "
    "there must be an earlier report.",
)
@click.option(
    "--fail-on",
    type=click.Choice(ACTIONS[1:]),
    help="Exit 3 when any decision is this strict or stricter (a CI gate).",
)
def scan(
    paths: tuple[str, ...],
    policy: str,
    keys: tuple[str, ...],
    audit_log: str | None,
    audit_signing_key: str | None,
    no_detector: bool,
    public_backends: tuple[str, ...],
    workers: int | None,
    meta: dict[str, Any],
    as_json: bool,
    report: str | None,
    fail_on: str | None,
) -> None:
    """Screen audio files and folders: detector, watermarks, policy decision per file.

    Without --policy the shipped upload-screening policy decides. Exit status: 0 all
    screened and none at or above --fail-on; 1 an input could not be screened (or the scan
    could not start); 2 usage error; 3 a decision at or above --fail-on. When both 1 and 3
    apply, the status is 1: a gate must not read "only a policy verdict" while a file went
    unscreened.
    """
    check_report_path(report, paths, keys, audit_log, audit_signing_key)
    guard = build_guard(policy, keys, audit_log, no_detector, public_backends, audit_signing_key)

    def emit(result: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(result))
            return
        with tqdm.external_write_mode():  # lift the progress bar over the line, then redraw it
            if "error" in result:
                say(f"error: {result['error']}", err=True)
            else:
                say(human_line(result))

    results = run_scan(
        paths, guard=guard, workers=workers, meta=meta, quiet=as_json, on_result=emit
    )
    if report:
        write_report(report, results, report_summary(guard, results, paths, audit_log))
    if not as_json:
        click.echo(tally_line(results), err=True)
        if report:
            say(f"wrote the report to {report}", err=True)
    sys.exit(exit_status(results, fail_on))
