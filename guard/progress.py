"""Progress bars that appear only for a person watching a terminal.

Under ``--json``, in CI, or when stderr is a pipe, a bar would corrupt logs or machine output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: list[T], *, quiet: bool = False, label: str = "files") -> Iterator[T]:
    show = not quiet and len(items) > 1 and sys.stderr.isatty() and not os.environ.get("CI")
    iterable: Iterable[T] = tqdm(items, unit=label, file=sys.stderr) if show else items
    yield from iterable
