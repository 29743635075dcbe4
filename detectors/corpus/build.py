"""Build the detector training corpus from Debian packages: ``build_corpus(OUT)``.

Layout: ``OUT/manifest.jsonl`` (see `manifest.py`), ``OUT/audio/<split>/<family>/<id>.flac``
(16 kHz mono, 24-bit so the noise floor survives), ``OUT/licenses/`` (the copyright file of
every package the corpus draws on) and ``OUT/corpus.json`` (recipe, package versions, counts).
Downloaded packages are kept in ``OUT/.sources`` (or ``cache_dir``), so a rebuild downloads
nothing, and a finished corpus with the same recipe is returned as it is.

The same seed gives the same manifest and the same audio: every input list is sorted, every
clip is planned in the parent process with its own seed, and workers only render plans.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from detectors.corpus.manifest import manifest_path, write_manifest
from detectors.corpus.plan import ClipPlan, plan_corpus
from detectors.corpus.render import render
from detectors.corpus.sources import discover_speakers, fetch_real, files_used
from detectors.corpus.synth import VOICES
from detectors.corpus.texts import TEXT_PATTERNS, fetch_texts, text_pools

RECIPE_VERSION = 3
"""Bump when anything that changes the audio changes, so an old build is not reused."""
DEFAULT_CLIPS_PER_SOURCE = 120
"""13 real packages -> about 1500 real clips, and as many synthetic: about 3000 clips of 2-6 s."""
GENERATOR_PACKAGES = ("espeak-ng", "espeak-ng-data", "flite", "festival")
GENERATOR_PACKAGES_BY_VOICE = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
}


def _limit_threads() -> None:
    torch.set_num_threads(1)


def render_all(
    plans: list[ClipPlan],
    render_one: Callable[[ClipPlan], dict[str, object]],
    *,
    workers: int,
    progress: bool,
    desc: str,
) -> list[dict[str, object]]:
    """Render plans in ``workers`` processes (spawned: never fork a process running torch)."""
    bar = partial(tqdm, total=len(plans), desc=desc, unit="clip", disable=not progress)
    if workers <= 1:
        threads = torch.get_num_threads()
        _limit_threads()
        try:
            return [render_one(p) for p in bar(plans)]
        finally:
            torch.set_num_threads(threads)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_limit_threads,
    ) as pool:
        return list(bar(pool.map(render_one, plans, chunksize=4)))


def copy_licenses(out_dir: Path, cache_dir: Path, packages: Iterable[str]) -> None:
    """Each package's Debian copyright file, from the cache or the installed system."""
    target = out_dir / "licenses"
    target.mkdir(parents=True, exist_ok=True)
    for package in sorted(set(packages)):
        for root in (cache_dir / package, Path("/")):
            found = root / "usr/share/doc" / package / "copyright"
            if found.exists():
                shutil.copyfile(found, target / f"{package}.txt")
                break


def _summary(rows: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Clip counts by split, family, label, language, gender and kind of band."""
    keys = ("split", "family", "label", "language", "gender", "channel")
    return {
        key: dict(sorted(Counter(str(r[key]).split(":")[0] for r in rows).items())) for key in keys
    }


def fetch_sources(cache_dir: Path) -> dict[str, str]:
    """Download and unpack every package the corpus reads (once; later calls are offline).

    ``scripts/setup.sh`` calls this, so that building a corpus in a test needs no network.
    """
    return {**fetch_real(cache_dir, TEXT_PATTERNS), **fetch_texts(cache_dir)}


def make_recipe(
    version: int, seed: int, per_source: int, versions: dict[str, str]
) -> dict[str, object]:
    """Everything that decides a build's audio; a cached build is reused only if it matches."""
    return {
        "version": version,
        "seed": seed,
        "clips_per_source": per_source,
        "packages": dict(sorted(versions.items())),
    }


def finished(out_dir: Path, recipe: dict[str, object]) -> bool:
    """Whether ``out_dir`` already holds a complete build of ``recipe``."""
    info = out_dir / "corpus.json"
    if not info.exists() or not manifest_path(out_dir).exists():
        return False
    if json.loads(info.read_text()).get("recipe") != recipe:
        return False
    lines = manifest_path(out_dir).read_text().splitlines()
    return all((out_dir / json.loads(line)["path"]).exists() for line in lines)


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """Versions of the installed Debian packages that synthesised the audio, for provenance."""
    versions = {}
    for package in sorted(set(packages)):
        query = ["dpkg-query", "-W", "-f", "${Version}", package]
        found = subprocess.run(query, capture_output=True, text=True, check=False)
        versions[package] = found.stdout.strip() if found.returncode == 0 else "not installed"
    return versions


def write_build(
    out_dir: Path,
    rows: list[dict[str, object]],
    recipe: dict[str, object],
    seconds: float,
    generators: Iterable[str],
    real_files: dict[str, object],
) -> Path:
    manifest = write_manifest(out_dir, rows)
    info = {
        "recipe": recipe,
        "real_files": real_files,
        "generators": installed_versions(generators),
        "build_seconds": round(seconds, 1),
        "counts": _summary(rows),
    }
    (out_dir / "corpus.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    return manifest


def build_corpus(
    out_dir: Path,
    *,
    seed: int = 0,
    clips_per_source: int | None = None,
    progress: bool = False,
    workers: int = 2,
    cache_dir: Path | None = None,
) -> Path:
    """Build (or find already built) the training corpus in ``out_dir``; return the manifest.

    ``clips_per_source`` real clips come from each real package (fewer where a package has
    little speech), and each split gets as many synthetic clips as real ones.
    """
    began = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    cache = Path(cache_dir).resolve() if cache_dir else out_dir / ".sources"
    versions = fetch_sources(cache)
    per_source = clips_per_source or DEFAULT_CLIPS_PER_SOURCE
    recipe = make_recipe(RECIPE_VERSION, seed, per_source, versions)
    if finished(out_dir, recipe):
        return manifest_path(out_dir)
    speakers = discover_speakers(cache, workers, progress)
    plans = plan_corpus(
        speakers, list(VOICES), text_pools(cache), seed=seed, clips_per_source=per_source
    )
    shutil.rmtree(out_dir / "audio", ignore_errors=True)
    rows = render_all(
        plans, partial(render, out_dir=out_dir), workers=workers, progress=progress, desc="corpus"
    )
    voices = {p.voice.name for p in plans if p.voice}
    generators = [*GENERATOR_PACKAGES, *(GENERATOR_PACKAGES_BY_VOICE.get(v, "") for v in voices)]
    generators = [g for g in generators if g]
    copy_licenses(out_dir, cache, [*versions, *generators])
    return write_build(
        out_dir, rows, recipe, time.perf_counter() - began, generators, files_used(speakers, cache)
    )
