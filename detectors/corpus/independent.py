"""A small evaluation set from speech and generators that the training corpus never uses.

Evaluation only: nothing here may be trained or tuned on. Real speech comes from games whose
voices are recorded people (Hedgewars' voice packs in English, Spanish, Polish, Russian and
Ukrainian; Warzone 2100's briefings and unit messages); synthetic speech from festival voices
of two other synthesis methods, unpacked from Debian without installing them: the HTS
(statistical parametric) US English voice ``cmu_us_slt_arctic_hts`` and the unit-selection
Russian voice ``msu_ru_nsh_clunits``. No mbrola, pico or RHVoice voice is in Debian main.
Clips get the same channel neutralisation as the corpus, and the same augmentation share.
"""

from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path

from detectors.corpus.build import copy_licenses, finished, make_recipe, render_all, write_build
from detectors.corpus.debian import fetch_package, matches
from detectors.corpus.manifest import manifest_path
from detectors.corpus.plan import plan_corpus
from detectors.corpus.render import render
from detectors.corpus.sources import (
    COPYRIGHT,
    Speaker,
    estimate_gender,
    files_used,
    heard_recordings,
)
from detectors.corpus.synth import Voice
from detectors.corpus.texts import LATIN, STYLES, fetch_texts, prompt_texts

RECIPE_VERSION = 2
SPLIT = "eval"
DEFAULT_CLIPS_PER_SOURCE = 60

_WZ = "usr/share/games/warzone2100/base.wz"
_HEDGEHOGS = "usr/share/games/hedgewars/Data/Sounds/voices/"
REAL_PACKAGES = {
    "hedgewars-data": (f"{_HEDGEHOGS}*.ogg",),
    "warzone2100-data": (f"{_WZ}.d/audio/tutorial/*.ogg", f"{_WZ}.d/audio/memressp/*.ogg"),
}
NOT_SPEECH = (
    "*/Robot/*",  # a vocoded robot voice
    "*/Singer/*",  # sung
    *(f"*/{grunt}*" for grunt in ("Firepunch", "Jump", "Laugh", "Ooff", "Ow", "Poison", "Hmm")),
)
_HEDGEHOG_LANGUAGES = {"Default_es": "es", "Default_pl": "pl", "Default_uk": "uk"}
_HEDGEHOG_LANGUAGES |= dict.fromkeys(("Default_ru", "Russian", "Russian_pl"), "ru")

VOICE_PACKAGES = {
    "festvox-us-slt-hts": ("us", "cmu_us_slt_arctic_hts", "female", "en"),
    "festvox-ru": ("russian", "msu_ru_nsh_clunits", "male", "ru"),
}


def _speaker_key(package: str, rel: str) -> tuple[str, str] | None:
    """(speaker id, language) of a file, or None if it is not speech."""
    parts = rel.split("/")
    if package == "hedgewars-data":
        pack = parts[-2]
        return f"{package}:{pack}", _HEDGEHOG_LANGUAGES.get(pack, "en")
    return f"{package}:{parts[-2] if parts[-2] == 'tutorial' else 'messages'}", "en"


def _speakers(cache: Path, workers: int, progress: bool) -> list[Speaker]:
    candidates: list[tuple[tuple[str, str, str], Path]] = []
    for package, patterns in REAL_PACKAGES.items():
        root = cache / package
        for path in sorted(root.rglob("*.ogg")):
            rel = path.relative_to(root).as_posix()
            key = _speaker_key(package, rel) if matches(rel, patterns, NOT_SPEECH) else None
            if key:
                candidates.append(((package, *key), path))
    found = heard_recordings(candidates, cache, workers, progress)
    return [
        Speaker(speaker, package, SPLIT, lang, estimate_gender(tuple(recs)), "prompt", tuple(recs))
        for (package, speaker, lang), recs in sorted(found.items())
    ]


def voice_texts(prompts: dict[str, list[str]]) -> dict[tuple[str, str], tuple[str, ...]]:
    """(language, style) -> what the two festival voices read: the asterisk prompts, every
    style alike. The Russian voice's letter-to-sound rules stop festival on a token with no
    letters it knows, so its lines lose ellipses and get a space after every full stop
    ("теста.Чтобы"), and lines with Latin letters ("www.asterisk.org") are left out."""
    spaced = (re.sub(r"\.(?=\S)", ". ", re.sub(r"\.{2,}|…", " ", t)) for t in prompts["ru"])
    russian = tuple(" ".join(t.split()) for t in spaced if t.strip(" .") and not LATIN.search(t))
    return {
        (lang, style): russian if lang == "ru" else tuple(prompts[lang])
        for lang in ("en", "ru")
        for style in STYLES
    }


def _voices(cache: Path) -> list[Voice]:
    voices = []
    for package, (folder, name, gender, lang) in VOICE_PACKAGES.items():
        location = cache / package / "usr/share/festival/voices" / folder / name
        voices.append(
            Voice("festival", name, name, gender, SPLIT, (lang,), 16_000, location=str(location))
        )
    return voices


def _fetch(cache: Path) -> dict[str, str]:
    versions = {}
    for package, patterns in REAL_PACKAGES.items():
        archives = [_WZ] if package == "warzone2100-data" else []
        versions[package] = fetch_package(
            package, cache / package, (*patterns, COPYRIGHT), archives
        )
    for package in VOICE_PACKAGES:
        versions[package] = fetch_package(package, cache / package, ("usr/share/*",))
    return {**versions, **fetch_texts(cache)}


def build_independent_eval(
    out_dir: Path,
    *,
    seed: int = 0,
    clips_per_source: int | None = None,
    progress: bool = False,
    workers: int = 2,
    cache_dir: Path | None = None,
) -> Path:
    """Build the independent evaluation set (split "eval") like `build_corpus`; return its
    manifest path.

    Each real clip has a synthetic counterpart: a Russian clip gets the Russian voice, an
    English one the English voice, and the rest (Spanish, Polish, Ukrainian) either voice.
    """
    began = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    cache = Path(cache_dir).resolve() if cache_dir else out_dir / ".sources"
    versions = _fetch(cache)
    per_source = clips_per_source or DEFAULT_CLIPS_PER_SOURCE
    recipe = make_recipe(RECIPE_VERSION, seed, per_source, versions)
    if finished(out_dir, recipe):
        return manifest_path(out_dir)
    pools = voice_texts(prompt_texts(cache))
    speakers = _speakers(cache, workers, progress)
    plans = plan_corpus(
        speakers, _voices(cache), pools, seed=seed, clips_per_source=per_source, resynth_share=0.0
    )
    rows = render_all(
        plans,
        partial(render, out_dir=out_dir),
        workers=workers,
        progress=progress,
        desc="independent eval",
    )
    copy_licenses(out_dir, cache, [*versions, "festival"])
    seconds = time.perf_counter() - began
    return write_build(out_dir, rows, recipe, seconds, ["festival"], files_used(speakers, cache))
