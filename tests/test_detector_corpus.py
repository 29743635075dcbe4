"""The detector corpus: neutralisation, augmentation, planning, rendering and the shortcut check.

Fast tests run the pure functions on bundled or generated audio and render a few planned clips
with espeak-ng and flite. The slow test builds a small corpus from the real Debian packages and
checks that trivial statistics cannot tell its classes apart.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from detectors import augment
from detectors.corpus import build_corpus, independent, load_manifest, resynth, shortcut_auc
from detectors.corpus import neutralise as nz
from detectors.corpus.build import render_all
from detectors.corpus.debian import matches
from detectors.corpus.plan import plan_corpus
from detectors.corpus.render import render
from detectors.corpus.shortcut import clip_features
from detectors.corpus.sources import REAL_SOURCES, Recording, Speaker, files_used
from detectors.corpus.synth import VOICES, Voice
from detectors.corpus.texts import STYLES, prompt_texts

RATE = nz.RATE
SOURCES = Path(__file__).resolve().parent.parent / ".cache" / "detector-sources"
"""Where ``scripts/setup.sh`` unpacks the corpus's Debian packages, so tests never download."""
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "speech"
needs_tts = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("flite")),
    reason="espeak-ng and flite are installed by scripts/install_system_packages.sh",
)


def speech(name: str = "fillets_society_stebet0.flac") -> np.ndarray:
    data, rate = sf.read(SAMPLES / name, dtype="float32", always_2d=True)
    return nz.to_rate(data.mean(axis=1), rate)


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    freqs, power = scipy.signal.welch(audio, RATE, nperseg=1024)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def f0_median(audio: np.ndarray) -> float:
    import pyworld

    f0, _ = pyworld.dio(audio.astype(np.float64), RATE, f0_floor=60.0, f0_ceil=800.0)
    return float(np.median(f0[f0 > 0]))


# --- neutralisation ------------------------------------------------------------------------


def test_trim_silence_cuts_the_ends_and_keeps_the_speech():
    voice = speech()[: RATE * 2]
    padded = np.concatenate([np.zeros(RATE // 2), voice, np.zeros(RATE)]).astype(np.float32)
    trimmed = nz.trim_silence(padded)
    assert abs(trimmed.shape[0] - nz.trim_silence(voice).shape[0]) < 0.05 * RATE
    assert nz.trim_silence(np.zeros(RATE, dtype=np.float32)).size == 0


def test_join_segments_gives_exactly_the_asked_length():
    rng = np.random.default_rng(0)
    short = [np.ones(RATE // 4, dtype=np.float32), np.ones(RATE // 3, dtype=np.float32)]
    assert nz.join_segments(short, 3.3, rng).shape[0] == round(3.3 * RATE)
    long = [speech()]
    assert nz.join_segments(long, 1.5, rng).shape[0] == round(1.5 * RATE)
    with pytest.raises(ValueError):
        nz.join_segments([np.zeros(0, dtype=np.float32)], 1.0, rng)


def test_telephone_band_removes_everything_above_4khz():
    noise = np.random.default_rng(1).standard_normal(RATE * 2).astype(np.float32)
    narrow = nz.telephone_band(noise)
    assert band_energy(narrow, 4_300, 8_000) < 5e-3 * band_energy(noise, 4_300, 8_000)
    assert band_energy(narrow, 500, 3_500) > 0.8 * band_energy(noise, 500, 3_500)


def test_eq_tilt_brightens_or_darkens():
    noise = np.random.default_rng(2).standard_normal(RATE).astype(np.float32)
    bright, dark = nz.eq_tilt(noise, 3.0), nz.eq_tilt(noise, -3.0)
    ratio = lambda x: band_energy(x, 4_000, 8_000) / band_energy(x, 100, 1_000)  # noqa: E731
    assert ratio(bright) > 4 * ratio(noise) > 16 * ratio(dark)


def test_channel_equalises_bright_and_dark_speech_to_the_drawn_slope():
    rng = np.random.default_rng(11)
    channel = nz.draw_channel(rng, telephone=False, native_rate=RATE)
    content = nz.trim_silence(speech())
    for tilt in (-3.0, 3.0):
        out = nz.apply_channel(nz.eq_tilt(content, tilt), channel)
        assert nz.spectral_slope(out) == pytest.approx(channel.slope_db_per_octave, abs=1.0)


def test_draw_channel_caps_the_band_at_the_material_rate():
    rng = np.random.default_rng(3)
    channels = [nz.draw_channel(rng, telephone=False, native_rate=11_025) for _ in range(50)]
    assert max(c.lowpass_hz for c in channels) <= 0.47 * 11_025 + 0.1
    assert all(0.1 <= c.lead_s <= 0.5 and 0.1 <= c.tail_s <= 0.5 for c in channels)


def test_channel_levels_pads_and_leaves_no_digital_zeros():
    rng = np.random.default_rng(4)
    channel = nz.draw_channel(rng, telephone=True, native_rate=8_000)
    content = nz.trim_silence(speech())
    out = nz.add_noise_floor(nz.apply_channel(content, channel), channel.floor_db, rng)
    assert out.shape[0] == content.shape[0] + round(channel.lead_s * RATE) + round(
        channel.tail_s * RATE
    )
    assert abs(nz.active_level_db(out) - channel.loudness_db) < 1.0
    assert np.count_nonzero(out == 0.0) == 0  # float32 noise: no exact zero at all
    lead = out[: round(channel.lead_s * RATE)]
    assert 20 * np.log10(np.sqrt(np.mean(lead**2))) < channel.floor_db + 3


# --- augmentation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(augment.CODECS))
def test_codec_round_trip_keeps_shape_and_alignment(name):
    clean = speech()[: RATE * 2]
    coded = augment.codec(clean, name, 64)
    assert coded.shape == clean.shape and coded.dtype == np.float32
    assert np.corrcoef(clean, coded)[0, 1] > 0.9
    assert not np.array_equal(clean, coded)


def test_add_noise_hits_the_snr():
    clean = speech()
    noisy = augment.add_noise(clean, 10.0, np.random.default_rng(5), "pink")
    snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert abs(snr - 10.0) < 0.5


def test_reverb_keeps_length_and_level_and_smears_time():
    click = np.zeros(RATE, dtype=np.float32)
    click[100] = 1.0
    wet = augment.reverb(click, 0.5, np.random.default_rng(6))
    assert wet.shape == click.shape
    assert np.isclose(np.mean(wet**2), np.mean(click**2), rtol=1e-3)
    assert np.count_nonzero(np.abs(wet[RATE // 10 :]) > 1e-4) > 100


def test_band_limit_and_gain():
    noise = np.random.default_rng(7).standard_normal(RATE).astype(np.float32) * 0.1
    low = augment.band_limit(noise, None, 3_000.0)
    assert band_energy(low, 5_000, 8_000) < 0.01 * band_energy(noise, 5_000, 8_000)
    assert np.max(np.abs(augment.gain(noise, 40.0))) == 1.0


def test_random_augment_is_seeded_and_keeps_type():
    clean = speech()[: RATE * 2]
    first, label = augment.random_augment(clean, np.random.default_rng(8))
    again, label_again = augment.random_augment(clean, np.random.default_rng(8))
    assert np.array_equal(first, again) and label == label_again
    assert 1 <= len(label.split("+")) <= 2
    tensor, _ = augment.random_augment(torch.from_numpy(clean)[None], np.random.default_rng(9))
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, clean.shape[0])


# --- re-synthesis --------------------------------------------------------------------------


def test_world_shifts_pitch_and_keeps_length():
    voice = speech()[: RATE * 3]
    up = resynth.world(voice, 12.0)
    assert up.shape == voice.shape
    assert 1.7 < f0_median(up) / f0_median(voice) < 2.3


def test_griffin_lim_and_lpc_are_seeded_and_keep_length():
    voice = speech()[: RATE * 2]
    gl = resynth.griffin_lim(voice, 2.0, seed=3)
    assert gl.shape == voice.shape and np.array_equal(gl, resynth.griffin_lim(voice, 2.0, seed=3))
    lpc = resynth.lpc(voice, -2.0, np.random.default_rng(0))
    assert lpc.shape == voice.shape and np.sqrt(np.mean(lpc**2)) > 1e-3
    assert 2 ** (-3 / 12) < f0_median(lpc) / f0_median(voice) < 2 ** (-1 / 12)


# --- shortcut statistics -------------------------------------------------------------------


def test_clip_features_measure_what_they_say():
    rng = np.random.default_rng(10)
    noise = rng.standard_normal(RATE).astype(np.float32) * 0.1
    clip = np.concatenate([np.zeros(RATE // 4, dtype=np.float32), noise])
    features = clip_features(clip, RATE)
    assert features["duration"] == pytest.approx(1.25)
    assert features["zero_fraction"] == pytest.approx(0.2, abs=0.01)
    assert features["leading_silence"] == pytest.approx(0.25, abs=0.011)
    dark = clip_features(augment.band_limit(noise, None, 2_000.0), RATE)
    assert dark["rolloff_hz"] < 3_000 < features["rolloff_hz"]


# --- package paths and transcripts ---------------------------------------------------------


def test_matches_crosses_folders_and_honours_exclusions():
    assert matches("usr/share/a/b/c.ogg", ("usr/share/*.ogg",))
    assert not matches("usr/share/a/silence/1.wav", ("usr/*",), ("*/silence/*",))


def test_prompt_texts_drop_notes_and_foreign_lines(tmp_path):
    doc = tmp_path / "asterisk-core-sounds-ru/usr/share/doc/asterisk-core-sounds-ru"
    doc.mkdir(parents=True)
    lines = "; header\nbeep: [beep]\nvm: Введите пароль. (pause)\nsilence/1: 1 second of silence\n"
    with gzip.open(doc / "core-sounds-ru.txt.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    assert prompt_texts(tmp_path)["ru"] == ["Введите пароль."]


# --- planning and rendering ----------------------------------------------------------------


def _fake_speakers(tmp_path: Path) -> list[Speaker]:
    """Three speakers, one per split, whose recordings are the bundled speech samples."""
    speakers = []
    for i, (split, lang, gender, rate) in enumerate(
        [
            ("train", "en", "female", 8_000),
            ("val", "en", "male", 16_000),
            ("test", "en", "male", 16_000),
        ]
    ):
        folder = tmp_path / f"pkg{i}"
        folder.mkdir()
        recs = []
        for j, sample in enumerate(sorted(SAMPLES.glob("*.flac"))):
            audio = speech(sample.name)[: RATE * 2]
            path = folder / f"{j}.wav"
            sf.write(path, nz.to_rate(audio, RATE, rate), rate)
            recs += [Recording(path, rate, 2.0)] * 4  # long enough for a few clips each
        speakers.append(Speaker(f"spk{i}", f"pkg{i}", split, lang, gender, "prompt", tuple(recs)))
    return speakers


def test_files_used_depend_on_the_files_not_on_where_the_cache_is(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    here = _fake_speakers(a)
    shutil.copytree(a, b)

    def moved(speaker: Speaker) -> Speaker:
        recs = tuple(replace(r, path=b / r.path.relative_to(a)) for r in speaker.recordings)
        return replace(speaker, recordings=recs)

    assert files_used(here, a) == files_used([moved(s) for s in reversed(here)], b)
    fewer = files_used([replace(here[0], recordings=here[0].recordings[4:]), *here[1:]], a)
    assert fewer["count"] == files_used(here, a)["count"] - 1  # each file is listed 4 times
    assert fewer["sha256"] != files_used(here, a)["sha256"]


def _pools() -> dict[tuple[str, str], tuple[str, ...]]:
    texts = ("Please enter your password.", "Thank you for calling.", "Goodbye.")
    return {("en", style): texts for style in STYLES}


def test_plan_matches_classes_within_each_split(tmp_path):
    speakers = _fake_speakers(tmp_path)
    plans = plan_corpus(speakers, list(VOICES), _pools(), seed=1, clips_per_source=8)
    assert plans == plan_corpus(speakers, list(VOICES), _pools(), seed=1, clips_per_source=8)
    assert plans != plan_corpus(speakers, list(VOICES), _pools(), seed=2, clips_per_source=8)
    for split in ("train", "val", "test"):
        own = [p for p in plans if p.split == split]
        by_label = Counter(p.label for p in own)
        assert by_label["real"] == by_label["synthetic"] > 0
        telephone = Counter(p.label for p in own if p.channel.telephone)
        assert telephone["real"] == telephone["synthetic"]
        assert {p.language for p in own} == {"en"}
    split_of = {}
    for p in plans:
        assert split_of.setdefault(p.speaker, p.split) == p.split
    assert len({p.id for p in plans}) == len(plans)
    assert all(p.channel.telephone for p in plans if p.native_rate <= 8_000)
    train_voices = {p.source for p in plans if p.voice and p.split == "train"}
    test_voices = {p.source for p in plans if p.voice and p.split == "test"}
    assert train_voices and test_voices and not train_voices & test_voices


@needs_tts
@pytest.mark.parametrize("family", ["espeak-ng", "flite", "real", "lpc"])
def test_render_is_deterministic_and_neutral(tmp_path, family):
    speakers = _fake_speakers(tmp_path)
    english = [v for v in VOICES if "en" in v.languages]
    plans = plan_corpus(speakers, english, _pools(), seed=3, clips_per_source=10)
    plan = next(p for p in plans if p.family == family)
    row = render(plan, tmp_path / "a")
    again = render(plan, tmp_path / "b")
    first, second = (tmp_path / d / plan.path for d in ("a", "b"))
    assert (
        hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    )
    assert row == again and row["family"] == family and row["path"] == plan.path
    info = sf.info(str(first))
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_24")
    assert info.duration == pytest.approx(plan.seconds, abs=0.01)
    audio, _ = sf.read(str(first))
    assert np.mean(audio == 0.0) < 1e-3  # 24-bit rounding of the noise floor hits 0 rarely
    lead = clip_features(audio, RATE)["leading_silence"]
    assert plan.channel.lead_s - 0.02 <= lead <= plan.channel.lead_s + 0.35


def test_workers_do_not_change_the_audio(tmp_path):
    speakers = _fake_speakers(tmp_path)
    plans = plan_corpus(speakers, list(VOICES), _pools(), seed=4, clips_per_source=10)
    chosen = [p for p in plans if p.family in ("real", "world", "griffinlim")][:4]
    rows = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rows[workers] = render_all(
            chosen, partial(render, out_dir=out), workers=workers, progress=False, desc=""
        )
    assert rows[1] == rows[2]
    for plan in chosen:
        assert (tmp_path / "w1" / plan.path).read_bytes() == (
            tmp_path / "w2" / plan.path
        ).read_bytes()


def test_independent_set_shares_no_source_or_voice_with_the_corpus():
    training = {s.package for s in REAL_SOURCES}
    assert not training & set(independent.REAL_PACKAGES)
    voices = {v.name for v in VOICES}
    assert not voices & {name for _, name, _, _ in independent.VOICE_PACKAGES.values()}


def test_the_russian_festival_voice_is_given_no_latin_letters():
    # festival's Russian letter-to-sound rules stop on "www.asterisk.org", on a leading "..."
    # and on "теста.Чтобы", and the whole build fails with them
    ru = ["Нажмите 1", "Сайт www.asterisk.org", "... для ...", "теста.Чтобы выйти", "..."]
    pools = independent.voice_texts({"en": ["Press 1"], "ru": ru})
    assert {pools["ru", style] for style in STYLES} == {("Нажмите 1", "для", "теста. Чтобы выйти")}
    assert pools["en", "dialog"] == ("Press 1",)


def test_espeak_voices_are_split_once_and_gendered():
    espeak = [v for v in VOICES if v.engine == "espeak-ng"]
    assert len({v.name for v in espeak}) == len(espeak)
    for split in ("train", "val", "test"):
        genders = {v.gender for v in espeak if v.split == split}
        assert genders == {"female", "male"}
    speakers: dict[str, set[str]] = {}
    for v in VOICES:
        speakers.setdefault(v.speaker, set()).add(v.split)
    assert all(len(splits) == 1 for splits in speakers.values())
    assert isinstance(VOICES[0], Voice)


# --- the real build ------------------------------------------------------------------------


@pytest.mark.slow
def test_small_corpus_from_debian_has_no_shortcut(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    stamps = [SOURCES / s.package / ".done" for s in REAL_SOURCES]
    assert all(s.exists() for s in stamps), "run scripts/setup.sh: it fetches the sources"
    manifest = build_corpus(out, seed=0, clips_per_source=25, workers=2, cache_dir=SOURCES)
    rows = load_manifest(out)
    assert manifest == out / "manifest.jsonl" and len(rows) > 500
    labels = Counter(r["label"] for r in rows)
    assert labels["real"] == labels["synthetic"]
    assert {r["family"] for r in rows} == {
        "real",
        "espeak-ng",
        "flite",
        "festival",
        "world",
        "griffinlim",
        "lpc",
    }
    for key in ("speaker", "source"):
        splits: dict[str, set[str]] = {}
        for r in rows:
            if r["label"] == "real":
                splits.setdefault(r[key], set()).add(r["split"])
        assert all(len(s) == 1 for s in splits.values()), key
    assert all(2.0 <= r["duration"] <= 6.0 for r in rows)
    assert (out / "licenses" / "klettres-data.txt").exists()
    assert shortcut_auc(out) <= 0.6
