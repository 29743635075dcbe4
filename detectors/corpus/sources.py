"""Real speech for the corpus: which Debian packages, who speaks in them, and in which split.

Only the packages in `REAL_SOURCES` give real speech; every other recording is reserved for
independent evaluation (`independent.py`). A *speaker* is one voice in one package: an asterisk
voice directory, a Fish Fillets character in one language, one language of KLettres or
KTuberling. Splits are fixed per package, so they are disjoint by source and by speaker
(Allison speaks both asterisk English and Spanish, so both packages are in one split), and each
split holds English (the language flite and festival speak), both genders, telephone and
wide-band material. Speaker gender comes from the package where it says so, otherwise from
the median pitch of a few of the speaker's files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyworld
import soundfile as sf

from detectors.corpus.audio_files import read_mono
from detectors.corpus.debian import fetch_package, matches
from detectors.corpus.heard_speech import CACHE_NAME, speech_files

K = TypeVar("K")

LANGUAGES = ("en", "es", "fr", "it", "ru", "cs", "nl", "de")
"""Languages with real speech here and an espeak-ng voice; other languages' files are left out."""

COPYRIGHT = "usr/share/doc/*/copyright"
ASTERISK = "usr/share/asterisk/sounds/*"
NOT_SPEECH = (
    "*/silence/*",
    "*beep*",
    "*tone*",
    "*/sound/share/*",
    "*/sound/linux/*",
    "*/sound/music/*",
    "*/sound/viking1/*",
    "*/sound/cancan/*",
)
"""Asterisk silences and tones, Fish Fillets effects and the levels with keyboard noise, music
or singing."""


@dataclass(frozen=True)
class RealSource:
    """One Debian package of recorded speech, the split it belongs to and how to read it."""

    package: str
    split: str
    layout: str
    """How paths name speakers and languages: asterisk, fillets, klettres or ktuberling."""
    style: str
    """What is said: prompt, dialog, letters or words; synthetic clips say the same kind."""
    patterns: tuple[str, ...]
    speaker: str = ""
    language: str = ""
    gender: str = ""
    """Set where the directory names do not say (the older asterisk prompt packages)."""


def _asterisk(package: str, split: str, **known: str) -> RealSource:
    return RealSource(package, split, "asterisk", "prompt", (ASTERISK,), **known)


_FILLETS = ("usr/share/games/fillets-ng/sound/*.ogg",)

REAL_SOURCES: tuple[RealSource, ...] = (
    _asterisk("asterisk-core-sounds-en-wav", "train"),
    _asterisk("asterisk-core-sounds-es-wav", "train"),
    _asterisk("asterisk-core-sounds-fr-wav", "train"),
    _asterisk("asterisk-core-sounds-it-wav", "test"),
    _asterisk("asterisk-core-sounds-ru-wav", "val"),
    _asterisk("asterisk-prompt-es-co", "train", speaker="July", language="es", gender="female"),
    _asterisk(
        "asterisk-prompt-fr-armelle", "test", speaker="Armelle", language="fr", gender="female"
    ),
    _asterisk("asterisk-prompt-it-menardi-wav", "train"),
    RealSource("fillets-ng-data", "test", "fillets", "dialog", _FILLETS),
    RealSource("fillets-ng-data-cs", "train", "fillets", "dialog", _FILLETS),
    RealSource("fillets-ng-data-nl", "train", "fillets", "dialog", _FILLETS),
    RealSource("klettres-data", "train", "klettres", "letters", ("usr/share/klettres/*.ogg",)),
    RealSource(
        "ktuberling-data",
        "val",
        "ktuberling",
        "words",
        ("usr/share/ktuberling/sounds/*.ogg", "usr/share/ktuberling/sounds/*.wav"),
    ),
)


@dataclass(frozen=True)
class Recording:
    """One file of real speech: where it is, its rate and its length."""

    path: Path
    rate: int
    seconds: float


@dataclass(frozen=True)
class Speaker:
    """One voice of one package, with its files in sorted order."""

    id: str
    source: str
    split: str
    language: str
    gender: str
    style: str
    recordings: tuple[Recording, ...]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.recordings)


_ASTERISK_VOICE = re.compile(r"^(?P<lang>[a-z]{2})_[A-Z]{2}_(?P<gender>[fm])_(?P<name>\w+)$")
_FILLETS_CHARACTER = re.compile(r"^[a-z0-9]+-(?P<char>[a-z]+)-")
_LANGUAGE_DIRS = {**{lang: lang for lang in LANGUAGES}, "en_GB": "en"}


def _who(source: RealSource, rel: str) -> tuple[str, str, str] | None:
    """(speaker id, language, gender or "") of a package file, or None if it is not used."""
    parts = rel.split("/")
    if source.layout == "asterisk":
        voice = _ASTERISK_VOICE.match(parts[4])
        if voice:
            gender = "female" if voice["gender"] == "f" else "male"
            return f"asterisk:{voice['name']}", voice["lang"], gender
        return f"asterisk:{source.speaker}", source.language, source.gender
    if source.layout == "fillets":
        character = _FILLETS_CHARACTER.match(parts[-1])
        lang = _LANGUAGE_DIRS.get(parts[-2])
        if not character or not lang:
            return None
        return f"{source.package}:{parts[-2]}:{character['char']}", lang, ""
    lang_dir = parts[3] if source.layout == "klettres" else parts[4]
    lang = _LANGUAGE_DIRS.get(lang_dir)
    return (f"{source.package}:{lang_dir}", lang, "") if lang else None


def recording(path: Path) -> Recording:
    """A file's rate and length, from its header (raw GSM has none, so from its size)."""
    if path.suffix == ".gsm":  # raw GSM 06.10: 33-byte frames of 20 ms at 8 kHz
        return Recording(path, 8_000, path.stat().st_size / 33 * 0.02)
    info = sf.info(str(path))
    return Recording(path, info.samplerate, info.duration)


def fetch_real(cache_dir: Path, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Unpack every real source (its audio, its licence and ``extra`` patterns such as
    transcripts) into ``cache_dir``; return package -> version."""
    return {
        s.package: fetch_package(s.package, cache_dir / s.package, (*s.patterns, *extra, COPYRIGHT))
        for s in REAL_SOURCES
    }


def estimate_gender(recordings: tuple[Recording, ...]) -> str:
    """Median F0 of up to 12 evenly spaced files: under 165 Hz male, up to 280 Hz female.

    Above that (children, cartoon voices) the pitch says nothing reliable, so "unknown".
    """
    step = max(1, len(recordings) // 12)
    f0: list[np.ndarray] = []
    for rec in recordings[::step][:12]:
        audio = read_mono(rec.path, 16_000).astype(np.float64)
        track, _ = pyworld.dio(audio, 16_000, f0_floor=60.0, f0_ceil=500.0)
        f0.append(track[track > 0])
    voiced = np.concatenate(f0) if f0 else np.zeros(0)
    if voiced.size == 0:
        return "unknown"
    median = float(np.median(voiced))
    return "male" if median < 165 else "female" if median <= 280 else "unknown"


def discover_speakers(cache_dir: Path, workers: int = 2, progress: bool = False) -> list[Speaker]:
    """Every speaker of every real source (already fetched), sorted by id.

    Only files in which the VAD hears speech count (`heard_speech`); a speaker left with
    none is dropped.
    """
    candidates: list[tuple[tuple[RealSource, tuple[str, str, str]], Path]] = []
    for source in REAL_SOURCES:
        root = cache_dir / source.package
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or not matches(rel, source.patterns, NOT_SPEECH):
                continue
            who = _who(source, rel)
            if who:
                candidates.append(((source, who), path))
    heard = heard_recordings(candidates, cache_dir, workers, progress)
    speakers = []
    for source in REAL_SOURCES:
        found = {who: recs for (src, who), recs in heard.items() if src == source}
        for (speaker_id, language, gender), recordings in sorted(found.items()):
            recs = tuple(recordings)
            speakers.append(
                Speaker(
                    id=speaker_id,
                    source=source.package,
                    split=source.split,
                    language=language,
                    gender=gender or estimate_gender(recs),
                    style=source.style,
                    recordings=recs,
                )
            )
    _check_splits(speakers)
    return sorted(speakers, key=lambda s: (s.source, s.id))


def heard_recordings(
    candidates: list[tuple[K, Path]], cache_dir: Path, workers: int, progress: bool
) -> dict[K, list[Recording]]:
    """The candidate files in which the VAD hears speech (`heard_speech`), as recordings
    grouped by their key, in candidate order; the measurements are cached in ``cache_dir``."""
    paths = [path for _, path in candidates]
    heard = speech_files(paths, cache_dir / CACHE_NAME, workers, progress)
    found: dict[K, list[Recording]] = defaultdict(list)
    for key, path in candidates:
        if path in heard:
            found[key].append(recording(path))
    return found


def files_used(speakers: list[Speaker], cache_dir: Path) -> dict[str, object]:
    """How many source files the speakers hold, and a digest of their names. The speech check
    decides per file with a threshold that another machine's arithmetic could tip, so two
    builds of one recipe can be checked to have used the same files."""
    names = sorted({os.path.relpath(r.path, cache_dir) for s in speakers for r in s.recordings})
    return {"count": len(names), "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def _check_splits(speakers: list[Speaker]) -> None:
    split_of: dict[str, str] = {}
    for speaker in speakers:
        if split_of.setdefault(speaker.id, speaker.split) != speaker.split:
            raise ValueError(f"speaker {speaker.id} would be in two splits")
