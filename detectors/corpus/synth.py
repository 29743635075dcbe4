"""Text-to-speech voices for the synthetic class: espeak-ng, flite and festival diphone voices.

Each voice is a *speaker* that sits in one split, like a real speaker. espeak-ng's voice
variants (``+f3``, ``+m7``, ``+klatt2``...) are its speakers and speak every corpus language;
flite and festival speak English. flite's ``kal``/``kal16`` and festival's ``kal_diphone`` are
built from the same recordings, so they count as one speaker. Engines run as subprocesses,
seeded by nothing: the same text and prosody give the same audio.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ESPEAK_DIALECTS = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"),
    "es": ("es", "es-419"),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "it": ("it",),
    "ru": ("ru", "ru-lv"),
    "cs": ("cs",),
    "nl": ("nl",),
    "de": ("de",),
}
"""Corpus language -> espeak-ng language voices; a clip draws one of them."""

_ESPEAK_FEMALE = (
    "f1 f2 f3 f4 f5 Alicia Andrea Annie anika aunty belinda grandma linda steph steph2 steph3"
)
_ESPEAK_MALE = (
    "m1 m2 m3 m4 m5 m6 m7 m8 Andy Denis Diogo Henrique Hugo Marco antonio michel miguel sandro "
    "travis victor john norbert pedro paul iven klatt klatt2 klatt3 klatt4"
)
"""Variants with a human pitch range; whispering, croaking and robot variants are left out."""
_ESPEAK_SPLITS = {
    **dict.fromkeys(("f3", "Andrea", "steph2", "m3", "m7", "Diogo", "klatt3", "paul"), "test"),
    **dict.fromkeys(("f5", "linda", "m6", "Hugo", "klatt4", "norbert"), "val"),
}


@dataclass(frozen=True)
class Prosody:
    """Per-clip speaking rate and pitch, drawn by the planner."""

    stretch: float
    """Duration multiplier: above 1 speaks slower."""
    pitch: float
    """Pitch offset in semitones from the voice's own."""


@dataclass(frozen=True)
class Voice:
    engine: str
    name: str
    speaker: str
    gender: str
    split: str
    languages: tuple[str, ...]
    rate: int
    f0_hz: float = 0.0
    """Median pitch as the engine speaks by default (flite and festival, which can move it)."""
    location: str = ""
    """For festival voices unpacked outside the system voice path: the voice's folder."""

    @property
    def source(self) -> str:
        return f"{self.engine}:{self.name}"


def _espeak_voices() -> list[Voice]:
    voices = []
    for gender, names in (("female", _ESPEAK_FEMALE), ("male", _ESPEAK_MALE)):
        for name in names.split():
            split = _ESPEAK_SPLITS.get(name, "train")
            langs = tuple(ESPEAK_DIALECTS)
            voices.append(
                Voice("espeak-ng", name, f"espeak-ng+{name}", gender, split, langs, 22_050)
            )
    return voices


VOICES: tuple[Voice, ...] = (
    *_espeak_voices(),
    Voice("flite", "kal", "kal", "male", "train", ("en",), 8_000, 88.0),
    Voice("flite", "kal16", "kal", "male", "train", ("en",), 16_000, 88.0),
    Voice("flite", "awb", "awb", "male", "train", ("en",), 16_000, 130.0),
    Voice("flite", "rms", "rms", "male", "val", ("en",), 16_000, 102.0),
    Voice("flite", "slt", "slt", "female", "test", ("en",), 16_000, 175.0),
    Voice("festival", "kal_diphone", "kal", "male", "train", ("en",), 16_000, 105.0),
    Voice("festival", "ked_diphone", "ked", "male", "test", ("en",), 16_000, 105.0),
)


def _run(command: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(command, input=stdin, text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def _read(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _espeak(voice: Voice, dialect: str, text: str, prosody: Prosody, out: Path) -> None:
    speed = round(170 / prosody.stretch)
    pitch = int(np.clip(round(50 + 6 * prosody.pitch), 0, 99))
    command = ["espeak-ng", "-v", f"{dialect}+{voice.name}", "-s", str(speed), "-p", str(pitch)]
    _run([*command, "-w", str(out), "--stdin"], stdin=text)


def _flite(voice: Voice, text: str, prosody: Prosody, out: Path) -> None:
    text_file = out.with_suffix(".txt")
    text_file.write_text(text, encoding="utf-8")
    settings = [
        f"duration_stretch={prosody.stretch:.3f}",
        f"int_f0_target_mean={voice.f0_hz * 2 ** (prosody.pitch / 12):.1f}",
    ]
    options = [arg for setting in settings for arg in ("--setf", setting)]
    _run(["flite", "-voice", voice.name, *options, "-f", str(text_file), "-o", str(out)])


def plain_text(text: str) -> str:
    """Letters, digits and plain punctuation only, so that no engine reads a symbol's name
    (festival's Russian letter-to-sound rules even stop at guillemets)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    kept = "".join(c if c.isalnum() or c in " .,!?;:'-" else " " for c in text)
    return re.sub(r"\s+([.,!?;:])", r"\1", " ".join(kept.split()))


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(voice: Voice, texts: list[str], prosody: Prosody, outs: list[Path]) -> None:
    """One festival process per clip: starting it costs more than synthesising a sentence."""
    lines = []
    if voice.location:
        root = Path(voice.location).parents[2]  # .../usr/share/festival
        lines += [
            f"(set! load-path (cons {_scheme_string(str(root))} load-path))",
            f'(voice-location "{voice.name}" {_scheme_string(voice.location + "/")} "")',
        ]
    lines.append(f"(voice_{voice.name})")
    lines.append(f"(Parameter.set 'Duration_Stretch {prosody.stretch:.3f})")
    if not voice.location:  # the diphone voices predict F0 with these linear-regression targets
        factor = 2 ** (prosody.pitch / 12)
        lines.append(
            f"(set! int_lr_params '((target_f0_mean {voice.f0_hz * factor:.1f}) "
            f"(target_f0_std {14 * factor:.1f}) (model_f0_mean 170) (model_f0_std 34)))"
        )
    for text, out in zip(texts, outs, strict=True):
        utterance = f"(utt.synth (Utterance Text {_scheme_string(text)}))"
        lines.append(f"(utt.save.wave {utterance} {_scheme_string(str(out))} 'riff)")
    script = outs[0].with_name("script.scm")
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(["festival", "-b", str(script)])


def synthesize(
    voice: Voice, texts: list[str], dialect: str, prosody: Prosody
) -> list[tuple[np.ndarray, int]]:
    """Speak each text as its own utterance; mono float32 at the engine's rate."""
    texts = [plain_text(t) for t in texts]
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        outs = [Path(tmp) / f"{i:03d}.wav" for i in range(len(texts))]
        if voice.engine == "festival":
            _festival(voice, texts, prosody, outs)
        for text, out in zip(texts, outs, strict=True):
            if voice.engine == "espeak-ng":
                _espeak(voice, dialect, text, prosody, out)
            elif voice.engine == "flite":
                _flite(voice, text, prosody, out)
        return [_read(out) for out in outs]
