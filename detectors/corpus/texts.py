"""What the synthetic voices say: transcripts that the real-speech packages ship themselves.

Reading the same kind of text as the real speakers keeps content from separating the classes:
the asterisk packages list every prompt's words, Fish Fillets ships its dialogue in every
language it was dubbed into, and KLettres names its letters and syllables. Isolated words (what
KTuberling's speakers say) are taken from those texts.
"""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from pathlib import Path

from detectors.corpus.debian import fetch_package
from detectors.corpus.sources import COPYRIGHT, LANGUAGES

TEXT_PACKAGES = tuple(f"asterisk-core-sounds-{lang}" for lang in ("en", "es", "fr", "it", "ru"))
"""The asterisk prompt transcripts; their audio is in the ``-wav`` packages."""
TEXT_PATTERNS = (
    "usr/share/doc/*/core-sounds-*.txt.gz",
    "usr/share/games/fillets-ng/script/*/dialogs_*.lua",
    "usr/share/klettres/*/sounds.xml",
)
STYLES = ("prompt", "dialog", "letters", "words")

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_DIALOG_ID = re.compile(rf"dialogId\(\s*{_QUOTED}\s*,\s*{_QUOTED}\s*,\s*{_QUOTED}", re.S)
_DIALOG_STR = re.compile(rf"dialogStr\(\s*{_QUOTED}", re.S)
_SOUND_NAME = re.compile(r'<sound\s+name="([^"]+)"')
_WORD = re.compile(r"[^\W\d_]{3,}")
LATIN = re.compile(r"[A-Za-z]")
_LETTERS = {"ru": re.compile(r"[А-Яа-яЁё]")}
"""A transcript line must contain its language's letters: the Russian list has English lines."""


def fetch_texts(cache_dir: Path) -> dict[str, str]:
    """Unpack the transcript packages; return package -> version."""
    patterns = (*TEXT_PATTERNS, COPYRIGHT)
    return {p: fetch_package(p, cache_dir / p, patterns) for p in TEXT_PACKAGES}


def _clean(text: str) -> str:
    text = text.replace("\\n", " ").replace('\\"', '"')
    # notes, not words: "[beep]", "(1 second of silence)", "<beep descending>"
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>", " ", text)
    return " ".join(text.split())


def prompt_texts(cache_dir: Path) -> dict[str, list[str]]:
    """Language -> the asterisk prompts' transcripts, bracketed notes removed."""
    pools: dict[str, list[str]] = defaultdict(list)
    for path in sorted(
        cache_dir.glob("asterisk-core-sounds-*/usr/share/doc/*/core-sounds-*.txt.gz")
    ):
        lang = path.name.removeprefix("core-sounds-").removesuffix(".txt.gz")
        with gzip.open(path, "rt", encoding="utf-8-sig") as lines:
            listed = [line for line in lines if not line.startswith(";") and ":" in line]
        for line in listed:
            text = _clean(line.split(":", 1)[1])
            if _LETTERS.get(lang, LATIN).search(text):
                pools[lang].append(text)
    return pools


def _dialogs(cache_dir: Path) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = defaultdict(list)
    script = cache_dir / "fillets-ng-data/usr/share/games/fillets-ng/script"
    for path in sorted(script.glob("*/dialogs_*.lua")):
        lang = path.stem.removeprefix("dialogs_")
        if lang not in LANGUAGES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found = (
            [m[2] for m in _DIALOG_ID.findall(text)] if lang == "en" else _DIALOG_STR.findall(text)
        )
        pools[lang] += [t for t in map(_clean, found) if t]
    return pools


def _letters(cache_dir: Path) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = defaultdict(list)
    for path in sorted(cache_dir.glob("klettres-data/usr/share/klettres/*/sounds.xml")):
        lang = path.parent.name.split("_")[0]
        if lang in LANGUAGES:
            names = _SOUND_NAME.findall(path.read_text(encoding="utf-8", errors="replace"))
            pools[lang] += [n if len(n) == 1 else n.lower() for n in names]
    return pools


def text_pools(cache_dir: Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """(language, style) -> sorted unique texts, every style filled for every language.

    A style a language lacks borrows from the language's other styles, so a synthetic voice
    always speaks the language of the real clip it stands in for.
    """
    prompts, dialogs, letters = prompt_texts(cache_dir), _dialogs(cache_dir), _letters(cache_dir)
    pools: dict[tuple[str, str], tuple[str, ...]] = {}
    for lang in LANGUAGES:
        sentences = prompts[lang] + dialogs[lang]
        letters_of = _LETTERS.get(lang, LATIN)
        words = sorted(
            {w.lower() for t in sentences for w in _WORD.findall(t) if letters_of.match(w)}
        )
        own = {"prompt": prompts[lang], "dialog": dialogs[lang], "letters": letters[lang]}
        own["words"] = words
        for style in STYLES:
            texts = own[style] or next((own[s] for s in STYLES if own[s]), [])
            if not texts:
                raise ValueError(f"no text in {lang}: were the transcript packages fetched?")
            pools[lang, style] = tuple(sorted(set(texts)))
    return pools
