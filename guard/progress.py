"""How multi-file commands walk their inputs: progress bars, per-file errors, the exit status.

Under ``--json``, in CI, or when stderr is a pipe, a bar would corrupt logs or machine output;
a file that fails is a ``{"path", "error"}`` line under ``--json`` and a sentence otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import click
import torch
from tqdm import tqdm

from guard import audio as audio_io

T = TypeVar("T")


def progress(items: list[T], *, quiet: bool = False, label: str = "files") -> Iterator[T]:
    show = not quiet and len(items) > 1 and sys.stderr.isatty() and not os.environ.get("CI")
    iterable: Iterable[T] = tqdm(items, unit=label, file=sys.stderr) if show else items
    yield from iterable


def one_line(text: str) -> str:
    """``text`` with every control character escaped (a newline shows as ``\\n``).

    File names may hold newlines and terminal escape codes. Printed raw, a crafted name could
    forge a result line for another file in what an auditor reads, or repaint the terminal;
    JSON output escapes them already. A byte of a file name that is not UTF-8 shows as
    ``\\xff`` (see :func:`guard.audio.printable_name`).
    """
    text = audio_io.printable_name(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def say(text: str, *, err: bool = False) -> None:
    """Print one line meant for a person (see :func:`one_line`)."""
    click.echo(one_line(text), err=err)


def emit_error(path: Path | str, problem: Exception | str, as_json: bool) -> None:
    """Report one input that could not be processed; the command goes on with the others."""
    if as_json:
        shown = audio_io.printable_name
        click.echo(json.dumps({"path": shown(path), "error": shown(str(problem))}))
    else:
        say(f"error: {problem}", err=True)


def each_audio_file(
    paths: Iterable[str],
    as_json: bool,
    analyse: Callable[[torch.Tensor, int], T],
    emit: Callable[[Path, T], None],
    errors: tuple[type[Exception], ...],
) -> None:
    """Decode every file under ``paths``, analyse and emit it; a file that fails ``errors``
    becomes an error line, the others still run, and the command exits 1 at the end.

    ``emit`` gets the path as it is shown (:func:`guard.audio.printable_name`), so a file name
    that is not UTF-8 reaches JSON and the terminal with its odd bytes escaped."""
    failed = False
    for path in progress(list(audio_io.iter_audio_paths(paths)), quiet=as_json):
        try:
            samples, info = audio_io.load(path)
            answer = analyse(samples, info.sample_rate)
        except (audio_io.AudioError, UnicodeError, *errors) as exc:
            failed = True
            # Decoding errors name their file already; a backend's (a rate too low, a clip
            # too short) do not, and among many inputs the reader must see which one failed.
            text = str(exc)
            emit_error(path, text if text.startswith(f"{path}:") else f"{path}: {text}", as_json)
            continue
        emit(Path(audio_io.printable_name(path)), answer)
    if failed:
        sys.exit(1)
