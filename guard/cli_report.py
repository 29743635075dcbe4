"""``audioguard audit DIR --report FILE.html``: scan a folder and write the auditor's report.

Same engine, options and per-file errors as ``scan``; what differs is the output: one HTML
file to hand on (counts by decision, score histogram, a timeline per file, watermark
findings, policy and model versions, the audit log's head hash) and, with ``--json``, the
summary of that report as one JSON object instead of a line per file.

Exit status: 0 when every file was screened, 1 when some file could not be (the report is
written anyway and lists it) or the scan could not start, 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from guard.audio import printable_name
from guard.cli_policy import REPORT_COMMAND
from guard.cli_scan import (
    build_guard,
    check_report_path,
    exit_status,
    guard_options,
    report_summary,
    run_scan,
)
from guard.progress import say
from guard.report import write_report


@click.command(REPORT_COMMAND)
@click.argument("paths", metavar="DIR...", nargs=-1, required=True)
@click.option(
    "--report",
    "report_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the self-contained HTML report; an existing file there must be an "
    "earlier report.",
)
@guard_options
@click.option("--json", "as_json", is_flag=True, help="Print the report's summary as JSON.")
def audit_report(
    paths: tuple[str, ...],
    report_path: str,
    policy: str,
    keys: tuple[str, ...],
    audit_log: str | None,
    audit_signing_key: str | None,
    no_detector: bool,
    public_backends: tuple[str, ...],
    workers: int | None,
    meta: dict[str, Any],
    as_json: bool,
) -> None:
    """Scan folders (or files) and write an HTML report an auditor can hand on."""
    check_report_path(report_path, paths, keys, audit_log, audit_signing_key)
    guard = build_guard(policy, keys, audit_log, no_detector, public_backends, audit_signing_key)
    results = run_scan(paths, guard=guard, workers=workers, meta=meta, quiet=as_json)
    summary = report_summary(guard, results, paths, audit_log)
    write_report(report_path, results, summary)
    if as_json:
        click.echo(json.dumps({**summary, "report": printable_name(report_path)}))
    else:
        for result in results:
            if "error" in result:
                say(f"error: {result['error']}", err=True)
        counts = ", ".join(f"{n} {a}" for a, n in summary["decisions"].items())
        click.echo(f"{summary['files']} file(s): {counts}; {summary['errors']} failed")
        if audit_log:
            say(f"audit log {audit_log}, head hash {summary['audit_log']['head_hash']}")
        say(f"wrote the report to {report_path}")
    sys.exit(exit_status(results, None))
