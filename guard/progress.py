"""What multi-file commands show while they work: progress bars and per-file errors.

Under ``--json``, in CI, or when stderr is a pipe, a bar would corrupt logs or machine output;
a file that fails is a ``{"path", "error"}`` line under ``--json`` and a sentence otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import click
from tqdm import tqdm

T = TypeVar("T")


def progress(items: list[T], *, quiet: bool = False, label: str = "files") -> Iterator[T]:
    show = not quiet and len(items) > 1 and sys.stderr.isatty() and not os.environ.get("CI")
    iterable: Iterable[T] = tqdm(items, unit=label, file=sys.stderr) if show else items
    yield from iterable


def emit_error(path: Path, exc: Exception, as_json: bool) -> None:
    """Report one input that could not be processed; the command goes on with the others."""
    if as_json:
        click.echo(json.dumps({"path": str(path), "error": str(exc)}))
    else:
        click.echo(f"error: {exc}", err=True)
