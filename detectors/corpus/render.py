"""Turn one `ClipPlan` into a 16 kHz FLAC file and its manifest row.

Both classes take the same path: speech segments (decoded files or synthesised utterances) are
resampled to 16 kHz, trimmed and joined; re-synthesis families then pass the joined speech
through their vocoder; the channel, augmentation and noise floor follow. All randomness comes
from the plan's seed, so a clip is the same whichever worker renders it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from detectors.augment import random_augment
from detectors.corpus import resynth
from detectors.corpus.audio_files import read_mono
from detectors.corpus.neutralise import (
    RATE,
    add_noise_floor,
    apply_channel,
    join_segments,
    limit_peak,
    speech_fraction,
    to_rate,
    trim_silence,
)
from detectors.corpus.plan import ClipPlan
from detectors.corpus.synth import synthesize

MIN_SPEECH_FRACTION = 0.2
"""Segments with less of their frames near their peak are clicks or tones, not speech."""


def _usable(audio: np.ndarray) -> np.ndarray | None:
    trimmed = trim_silence(audio)
    return trimmed if trimmed.size and speech_fraction(trimmed) >= MIN_SPEECH_FRACTION else None


def _segments(plan: ClipPlan) -> list[np.ndarray]:
    """Trimmed speech segments: every synthesised utterance, or recordings until enough."""
    if plan.voice is not None and plan.prosody is not None:
        spoken = synthesize(plan.voice, list(plan.texts), plan.dialect, plan.prosody)
        return [s for s in (_usable(to_rate(a, rate)) for a, rate in spoken) if s is not None]
    segments: list[np.ndarray] = []
    for path in plan.recordings:  # the plan lists spares for silent files: decode only as needed
        segment = _usable(read_mono(path, RATE))
        if segment is not None:
            segments.append(segment)
        if sum(s.shape[0] for s in segments) >= plan.content_seconds * RATE:
            break
    return segments


def speech(plan: ClipPlan, rng: np.random.Generator) -> np.ndarray:
    """The clip's speech before its channel: joined segments, re-synthesised if planned so."""
    content = join_segments(_segments(plan), plan.content_seconds, rng)
    if plan.family == "world":
        return resynth.world(content, plan.semitones)
    if plan.family == "griffinlim":
        return resynth.griffin_lim(content, plan.semitones, seed=plan.seed)
    if plan.family == "lpc":
        return resynth.lpc(content, plan.semitones, rng)
    return content


def render(plan: ClipPlan, out_dir: Path) -> dict[str, object]:
    """Write the clip under ``out_dir`` and return its manifest row."""
    rng = np.random.default_rng(plan.seed)
    audio = apply_channel(speech(plan, rng), plan.channel)
    augmented = "none"
    if plan.augment:
        audio, augmented = random_augment(audio, rng)
    audio = limit_peak(add_noise_floor(audio, plan.channel.floor_db, rng))
    target = out_dir / plan.path
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), audio, RATE, subtype="PCM_24")
    return {
        "id": plan.id,
        "path": plan.path,
        "label": plan.label,
        "family": plan.family,
        "source": plan.source,
        "speaker": plan.speaker,
        "language": plan.language,
        "gender": plan.gender,
        "split": plan.split,
        "duration": round(audio.shape[0] / RATE, 4),
        "augment": augmented,
        "channel": plan.channel.describe(),
    }
