"""The ``audioguard`` command: a click group whose commands parse, call the library, format.

Errors a user can act on (a bad file, a missing key) become one sentence on stderr, or a
``{"path", "error"}`` line under ``--json``; tracebacks only appear with ``--debug``.
"""

from __future__ import annotations

import logging
import sys

import click

from guard.audio import AudioError, printable_name
from guard.cli_detect import detect, detectors
from guard.cli_policy import audit, policy
from guard.cli_report import audit_report
from guard.cli_scan import scan
from guard.cli_serve import serve
from guard.cli_watermark import watermark
from watermark.types import WatermarkError

USER_ERRORS = (AudioError, WatermarkError, OSError, ValueError)


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="audioguard")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Responsible-audio safety: keyed watermarks, detection and policies."""
    ctx.obj = {"debug": debug}
    if debug:
        show_debug_log()


cli.add_command(watermark)
cli.add_command(detect)
cli.add_command(detectors)
cli.add_command(scan)
cli.add_command(policy)
cli.add_command(audit)
audit.add_command(audit_report)  # `audit DIR --report FILE.html`, see AuditGroup
cli.add_command(serve)


def show_debug_log() -> None:
    """Our own loggers (``guard.*``, such as the decoders' warnings) to stderr, nobody else's."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("debug: %(message)s"))
    logger = logging.getLogger("guard")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def main() -> None:
    """Console-script entry point: turn user errors into one clear sentence and exit 1."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.message = printable_name(exc.message)  # file names may hold bytes that are not UTF-8
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        if debug:
            raise
        click.echo(f"error: {printable_name(str(exc))}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a user never sees a traceback without --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
        sys.exit(1)
