"""Keep the decoder libraries' own console chatter off the user's terminal.

libsndfile decodes MP3 through libmpg123, which writes warnings such as "Warning: Xing
stream size off by more than 1%" or "Note: Illegal Audio-MPEG-Header" straight to file
descriptor 2. Python cannot catch those, so under ``--json`` they interleave with our output
and without it they read like errors for files that decoded fine. While a decoder call runs,
descriptor 2 is pointed at a temporary file; afterwards the decoder's lines go to the
``guard.audio`` logger (shown with ``--debug``) and anything else that was written meanwhile,
say by another thread of the HTTP service, is passed on to the real stderr unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LOG = logging.getLogger("guard.audio")

_DECODER_LINE = re.compile(rb"^(Warning|Note|Error): |^\[src/libmpg123/|^\[[\w/.-]*mpg123[\w/.-]*:")
_LOCK = threading.Lock()
STDERR_FD = 2  # where C libraries write, whatever sys.stderr has become


@contextmanager
def decoder_messages(path: object) -> Iterator[None]:
    """Route what native code writes to stderr inside the block to the log, naming ``path``."""
    with _LOCK, tempfile.TemporaryFile() as capture:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(STDERR_FD)
        os.dup2(capture.fileno(), STDERR_FD)
        try:
            yield
        finally:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(saved, STDERR_FD)
            os.close(saved)
            capture.seek(0)
            _pass_on(capture.read(), path)


def _pass_on(captured: bytes, path: object) -> None:
    others = []
    for line in captured.splitlines(keepends=True):
        if _DECODER_LINE.match(line):
            LOG.debug("%s: decoder says: %s", path, line.decode(errors="replace").rstrip())
        else:
            others.append(line)
    if others:
        os.write(STDERR_FD, b"".join(others))
