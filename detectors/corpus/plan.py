"""Decide every clip of the corpus before any audio is made, so that workers cannot change it.

The plan fixes, per clip: where its speech comes from (real files, a voice and its texts, or
real files to re-synthesise), how long it is and what channel it gets. It also does the
matching that keeps the classes alike apart from synthesis:

- each split gets as many synthetic clips as real ones, and every synthetic clip stands in for
  one real clip of the same split: same language, same kind of text, and a voice of the same
  gender or one whose pitch is moved into that gender's range, so the language, content and
  pitch mix match;
- re-synthesised clips carry the real speakers of their split;
- durations, padding, loudness, tilt and band limits are drawn from one distribution for both
  classes, and exactly the same share of each class goes through the telephone band (the
  8 kHz material of either class is always narrow-band, the rest is topped up to that share).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detectors.corpus.neutralise import TELEPHONE_RATE, Channel, draw_channel
from detectors.corpus.resynth import FAMILIES as RESYNTH_FAMILIES
from detectors.corpus.sources import Speaker
from detectors.corpus.synth import ESPEAK_DIALECTS, Prosody, Voice

SPLITS = ("train", "val", "test")
CLIP_SECONDS = (2.0, 6.0)
RESYNTH_SHARE = 0.12
"""Share of each split's synthetic clips for each of WORLD, Griffin-Lim and LPC."""
ENGLISH_ENGINES = {"espeak-ng": 0.2, "flite": 0.45, "festival": 0.35}
"""How English synthetic clips are shared between engines (other languages: espeak-ng only)."""
GENDER_F0_HZ = {"female": 200.0, "male": 115.0}
"""Where a voice of the other gender stands in for a real clip, its pitch is moved here."""
AUGMENT_SHARE = 0.35
EXTRA_TELEPHONE = 0.05
"""Narrow-band share above the larger class's forced share, so both classes get topped up."""


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render one clip; pickled to a worker."""

    id: str
    split: str
    label: str
    family: str
    source: str
    speaker: str
    language: str
    gender: str
    seconds: float
    channel: Channel
    augment: bool
    seed: int
    native_rate: int
    recordings: tuple[Path, ...] = ()
    semitones: float = 0.0
    voice: Voice | None = None
    dialect: str = ""
    texts: tuple[str, ...] = ()
    prosody: Prosody | None = None

    @property
    def path(self) -> str:
        return f"audio/{self.split}/{self.family}/{self.id}.flac"

    @property
    def content_seconds(self) -> float:
        return self.seconds - self.channel.lead_s - self.channel.tail_s


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for one purpose, independent of the order other purposes draw in."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _allocate(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` without exceeding ``caps``."""
    counts = [0] * len(weights)
    open_ = [i for i, c in enumerate(caps) if c > 0]
    remaining = total
    while remaining > 0 and open_:
        mass = sum(weights[i] for i in open_)
        shares = {i: remaining * weights[i] / mass for i in open_}
        given = {i: min(caps[i] - counts[i], int(shares[i])) for i in open_}
        if not any(given.values()):  # hand out the remainder by largest share, one each
            for i in sorted(open_, key=lambda i: (-shares[i], i))[:remaining]:
                given[i] = min(caps[i] - counts[i], 1)
        for i, n in given.items():
            counts[i] += n
            remaining -= n
        open_ = [i for i in open_ if counts[i] < caps[i]]
    return counts


class _Cursor:
    """Hands out a speaker's recordings in a seeded order, wrapping round when they run out."""

    def __init__(self, speaker: Speaker, seed: int) -> None:
        order = _rng(seed, "order", speaker.source, speaker.id).permutation(len(speaker.recordings))
        self.recordings = [speaker.recordings[i] for i in order]
        self.next = 0

    def take(self, seconds: float) -> tuple[tuple[Path, ...], int]:
        """Enough recordings for ``seconds`` of speech, plus two spare for silent files."""
        paths, rates, total = [], [], 0.0
        while total < 1.3 * seconds or len(paths) < 1:
            rec = self.recordings[self.next % len(self.recordings)]
            paths.append(rec.path)
            rates.append(rec.rate)
            total += 0.85 * rec.seconds + 0.35
            self.next += 1
        for k in range(2):
            rec = self.recordings[(self.next + k) % len(self.recordings)]
            paths.append(rec.path)
        return tuple(paths), min(rates)


def _channel(rng: np.random.Generator, native_rate: int) -> Channel:
    return draw_channel(rng, telephone=native_rate <= TELEPHONE_RATE, native_rate=native_rate)


def _real_counts(speakers: list[Speaker], clips_per_source: int) -> dict[str, int]:
    """Clips per speaker id+source: ``clips_per_source`` per package, shared by speech time.

    A speaker gives at most one clip per 1.5 s of recordings, so small speakers are not looped.
    """
    counts = {}
    for source in sorted({s.source for s in speakers}):
        own = [s for s in speakers if s.source == source]
        caps = [max(1, int(s.seconds / 1.5)) for s in own]
        for s, n in zip(
            own, _allocate(clips_per_source, [s.seconds for s in own], caps), strict=True
        ):
            counts[f"{s.source}/{s.id}"] = n
    return counts


class _Planner:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.numbers: dict[str, int] = defaultdict(int)
        self.cursors: dict[str, _Cursor] = {}

    def new_id(self, family: str) -> tuple[str, int]:
        self.numbers[family] += 1
        clip_id = f"{family}-{self.numbers[family]:05d}"
        return clip_id, int(_rng(self.seed, "clip", clip_id).integers(2**31))

    def cursor(self, speaker: Speaker) -> _Cursor:
        key = f"{speaker.source}/{speaker.id}"
        if key not in self.cursors:
            self.cursors[key] = _Cursor(speaker, self.seed)
        return self.cursors[key]

    def from_speaker(self, speaker: Speaker, family: str) -> ClipPlan:
        """A real clip, or (family other than "real") a re-synthesis of the speaker's speech."""
        clip_id, seed = self.new_id(family)
        rng = _rng(self.seed, "draw", clip_id)
        seconds = round(float(rng.uniform(*CLIP_SECONDS)), 3)
        recordings, rate = self.cursor(speaker).take(seconds)
        channel = _channel(rng, rate)
        real = family == "real"
        return ClipPlan(
            id=clip_id,
            split=speaker.split,
            label="real" if real else "synthetic",
            family=family,
            source=speaker.source if real else f"{family}:{speaker.source}",
            speaker=speaker.id,
            language=speaker.language,
            gender=speaker.gender,
            seconds=seconds,
            channel=channel,
            augment=bool(rng.random() < AUGMENT_SHARE),
            seed=seed,
            native_rate=rate,
            recordings=recordings,
            semitones=0.0 if real else round(float(rng.uniform(-4.0, 4.0)), 2),
        )

    def spoken(
        self, like: Speaker, voices: list[Voice], pools: dict[tuple[str, str], tuple[str, ...]]
    ) -> ClipPlan:
        """A text-to-speech clip standing in for a clip of ``like``."""
        rng = _rng(self.seed, "voice", like.split, like.id, str(sum(self.numbers.values())))
        voice = _choose_voice(voices, like, rng)
        clip_id, seed = self.new_id(voice.engine)
        rng = _rng(self.seed, "draw", clip_id)
        seconds = round(float(rng.uniform(*CLIP_SECONDS)), 3)
        language = like.language if like.language in voice.languages else voice.languages[0]
        pool = pools[language, like.style]
        texts: list[str] = []
        while sum(len(t) / 14 + 0.35 for t in texts) < 1.3 * seconds:
            texts.append(pool[int(rng.integers(len(pool)))])
        dialects = ESPEAK_DIALECTS[language] if voice.engine == "espeak-ng" else ("",)
        pitch = float(rng.uniform(-2.0, 2.0))
        gender = voice.gender
        if like.gender in GENDER_F0_HZ and like.gender != voice.gender and voice.f0_hz:
            pitch += 12 * np.log2(GENDER_F0_HZ[like.gender] / voice.f0_hz)
            gender = like.gender
        return ClipPlan(
            id=clip_id,
            split=like.split,
            label="synthetic",
            family=voice.engine,
            source=voice.source,
            speaker=voice.speaker,
            language=language,
            gender=gender,
            seconds=seconds,
            channel=_channel(rng, voice.rate),
            augment=bool(rng.random() < AUGMENT_SHARE),
            seed=seed,
            native_rate=voice.rate,
            voice=voice,
            dialect=str(dialects[int(rng.integers(len(dialects)))]),
            texts=tuple(texts),
            prosody=Prosody(
                stretch=round(float(rng.uniform(0.85, 1.2)), 3),
                pitch=round(pitch, 2),
            ),
        )


def _choose_voice(voices: list[Voice], like: Speaker, rng: np.random.Generator) -> Voice:
    """A voice of the split that speaks the language: engine first, then the same gender
    where that engine has it (flite and festival have few female voices; `spoken` moves the
    pitch of a voice of the other gender instead).

    Where no voice of the split speaks the language (only in the independent evaluation set,
    whose few voices speak two languages), any voice of the split will do.
    """
    in_split = [v for v in voices if v.split == like.split]
    if not in_split:
        raise ValueError(f"no voice in the {like.split} split")
    speaking = [v for v in in_split if like.language in v.languages] or in_split
    engines = sorted({v.engine for v in speaking})
    weights = np.array([ENGLISH_ENGINES.get(e, 1.0) for e in engines])
    engine = engines[int(rng.choice(len(engines), p=weights / weights.sum()))]
    own = [v for v in speaking if v.engine == engine]
    candidates = [v for v in own if v.gender == like.gender] or own
    return candidates[int(rng.integers(len(candidates)))]


def _stand_ins(
    real: list[ClipPlan], speakers: list[Speaker], voices: list[Voice], rng: np.random.Generator
) -> list[Speaker]:
    """The speakers of a split's real clips, one per clip, in the order synthetic clips take them.

    Shuffled, then languages that fewer engines speak first: re-synthesis takes from the front,
    so English clips go to text-to-speech, where flite and festival can speak them too.
    """
    by_id = {(s.source, s.id): s for s in speakers}
    engines = defaultdict(set)
    for voice in voices:
        for language in voice.languages:
            engines[language].add(voice.engine)
    shuffled = [by_id[real[i].source, real[i].speaker] for i in rng.permutation(len(real))]
    return sorted(shuffled, key=lambda s: len(engines[s.language]))


def _splits(items: list[ClipPlan]) -> list[str]:
    """The splits present, train/val/test first (an evaluation set has its own)."""
    present = {p.split for p in items}
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def _narrow_band(plans: list[ClipPlan], seed: int) -> list[ClipPlan]:
    """Give both classes of each split the same telephone share (see the module docstring)."""
    out = {p.id: p for p in plans}
    for split in _splits(plans):
        by_label = {
            label: [p for p in plans if p.split == split and p.label == label]
            for label in ("real", "synthetic")
        }
        if not all(by_label.values()):
            continue
        forced = {k: sum(p.channel.telephone for p in v) / len(v) for k, v in by_label.items()}
        share = min(1.0, max(forced.values()) + EXTRA_TELEPHONE)
        for label, group in by_label.items():
            free = [p for p in group if not p.channel.telephone]
            need = max(0, round(share * len(group)) - (len(group) - len(free)))
            order = _rng(seed, "telephone", split, label).permutation(len(free))
            for i in order[:need]:
                p = free[i]
                out[p.id] = replace(p, channel=replace(p.channel, telephone=True))
    return [out[p.id] for p in plans]


def plan_corpus(
    speakers: list[Speaker],
    voices: list[Voice],
    pools: dict[tuple[str, str], tuple[str, ...]],
    *,
    seed: int,
    clips_per_source: int,
    resynth_share: float = RESYNTH_SHARE,
) -> list[ClipPlan]:
    """Every clip of the corpus: real clips first, then their synthetic counterparts.

    ``resynth_share`` of each split's synthetic clips go to each re-synthesis family.
    """
    planner = _Planner(seed)
    counts = _real_counts(speakers, clips_per_source)
    plans = [
        planner.from_speaker(s, "real")
        for s in speakers
        for _ in range(counts[f"{s.source}/{s.id}"])
    ]
    for split in _splits(plans):
        real = [p for p in plans if p.split == split and p.label == "real"]
        in_split = [v for v in voices if v.split == split]
        stand_ins = iter(_stand_ins(real, speakers, in_split, _rng(seed, "like", split)))
        per_family = round(resynth_share * len(real))
        for family in RESYNTH_FAMILIES:
            plans += [planner.from_speaker(next(stand_ins), family) for _ in range(per_family)]
        spoken = len(real) - len(RESYNTH_FAMILIES) * per_family
        plans += [planner.spoken(next(stand_ins), voices, pools) for _ in range(spoken)]
    return _narrow_band(plans, seed)
