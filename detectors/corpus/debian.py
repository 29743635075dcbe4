"""Fetch files from Debian packages: ``apt-get download`` + ``dpkg-deb -x``, nothing else.

Corpora in this project are cut from free Debian packages so that anyone can rebuild them
without a model hub. A package is unpacked once into a folder that keeps only the files a
caller asked for (the .deb and the rest of its tree are thrown away), with a stamp that
records the package version and the patterns, so a second call does no work.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterable
from pathlib import Path

STAMP = ".done"


def matches(rel: str, patterns: Iterable[str], exclude: Iterable[str] = ()) -> bool:
    """Whether a package path matches a pattern (``*`` crosses ``/``) and no exclusion."""
    return any(fnmatch.fnmatch(rel, p) for p in patterns) and not any(
        fnmatch.fnmatch(rel, e) for e in exclude
    )


def _download(package: str, into: Path) -> None:
    """``apt-get download``; on a machine whose package lists are missing, update them once."""
    for attempt in range(2):
        fetched = subprocess.run(
            ["apt-get", "download", "-qq", package], cwd=into, capture_output=True, text=True
        )
        if fetched.returncode == 0:
            return
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
    raise RuntimeError(
        f"apt-get download {package} failed ({fetched.stderr.strip()}); "
        "run `apt-get update` and check that a Debian mirror is reachable"
    )


def fetch_package(
    package: str, dest: Path, patterns: tuple[str, ...], archives: Iterable[str] = ()
) -> str:
    """Unpack the files of ``package`` that match ``patterns`` into ``dest``; return its version.

    ``archives`` names zip files inside the package (Quake-style ``.pk3``, Warzone's ``.wz``)
    whose members ``patterns`` reach through ``ARCHIVE.d/``. Cached: a folder whose stamp
    lists the same patterns is returned as it is.
    """
    stamp = dest / STAMP
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded["patterns"] == list(patterns):
            return recorded["version"]
    with tempfile.TemporaryDirectory(prefix=f"deb-{package}-") as tmp:
        work = Path(tmp)
        _download(package, work)
        (deb,) = work.glob("*.deb")
        root = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        version = urllib.parse.unquote(deb.name.split("_")[1])
        for archive in archives:
            with zipfile.ZipFile(root / archive) as zf:
                wanted = [m for m in zf.namelist() if matches(f"{archive}.d/{m}", patterns)]
                zf.extractall(root / f"{archive}.d", wanted)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and matches(rel, patterns):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
    stamp.write_text(json.dumps({"version": version, "patterns": list(patterns)}))
    return version
