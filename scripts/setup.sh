#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run audioguard: system packages, a virtualenv in
# .venv with the pinned torch pair, and the project itself (editable, with dev tools).
# Safe to run again: it skips the pip step when pyproject.toml has not changed since last time.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install_system_packages.sh

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi

stamp=.venv/.audioguard-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --editable '.[dev]'
    echo "$wanted" > "$stamp"
fi

# The detector corpus's Debian packages (real speech, transcripts), unpacked once so that the
# corpus test builds offline; a warm cache makes this a few stamp reads.
.venv/bin/python -c 'from pathlib import Path
from detectors.corpus.build import fetch_sources
fetch_sources(Path(".cache/detector-sources"))'
