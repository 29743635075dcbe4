"""The Perth backend on real audio: round trip, no false alarms, shapes, segments, distortion.

PerthNet's weights ship inside the resemble-perth wheel, so these run offline. The clips are
the bundled ``samples/`` (read with soundfile); none of them is in the calibration corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torchaudio.functional import resample

pytest.importorskip("perth", reason="resemble-perth is not installed")

from watermark.backends.perth_backend import PerthBackend  # noqa: E402
from watermark.types import Detection  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SPEECH_16K = SAMPLES / "speech" / "fillets_society_stebet0.flac"
SPEECH_16K_OTHER = SAMPLES / "speech" / "warzone_tutorial_tut73.flac"
SPEECH_8K = SAMPLES / "speech" / "allison_vm_instructions_8k.flac"
MUSIC_STEREO_44K = SAMPLES / "music" / "singularity_awakening_44k_stereo.flac"


def _read(path: Path) -> tuple[torch.Tensor, int]:
    if not path.exists():
        pytest.skip(f"bundled sample {path.name} is missing")
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


@pytest.fixture(scope="module")
def backend() -> PerthBackend:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return PerthBackend()


@pytest.fixture(scope="module")
def marked_speech(backend: PerthBackend):
    audio, rate = _read(SPEECH_16K)
    return audio, rate, backend.embed(audio, rate, payload=None)


def test_embed_then_detect_finds_the_mark_with_a_small_p_value(backend, marked_speech):
    _, rate, result = marked_speech
    found = backend.detect(result.audio, rate)
    assert isinstance(found, Detection)
    assert found.backend == "perth"
    assert found.detected
    assert found.payload is None
    assert found.p_value < backend.threshold
    assert found.p_value > 0.0  # never exactly zero: it comes from a finite null
    assert result.verification.detected


PERTH_MUSIC_FALSE_ALARMS = {"drascula_track6", "singularity_awakening_44k_stereo"}
"""Known limitation, measured in perth_calibration.json: PerthNet's decoder scores 7.6% of
unmarked music stretches 0.9 or more, as high as marked audio, so at the p < 0.05 that marked
speech needs, tonal music is flagged too. Strict: if Perth stops flagging them, we want to know."""


def _sample_param(path: Path):
    if path.stem in PERTH_MUSIC_FALSE_ALARMS:
        reason = "PerthNet scores this unmarked music like marked audio (see calibration json)"
        return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=reason))
    return path


@pytest.mark.parametrize(
    "path",
    [_sample_param(p) for p in sorted(SAMPLES.glob("*/*.flac"))],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_unmarked_samples_are_not_detected(backend, path):
    audio, rate = _read(path)
    found = backend.detect(audio, rate)
    assert not found.detected, f"false alarm on {path.name}: p = {found.p_value:.3g}"
    assert found.segments == ()


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_unmarked_noise_is_not_detected(backend, kind):
    rng = np.random.default_rng(7)
    noise = rng.standard_normal(16_000 * 6)
    if kind == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum /= np.sqrt(np.maximum(np.arange(spectrum.shape[0]), 1))
        noise = np.fft.irfft(spectrum, noise.shape[0])
    audio = torch.from_numpy((0.1 * noise / noise.std()).astype(np.float32))[None]
    assert not backend.detect(audio, 16_000).detected


def _tone(kind: str, rate: int = 16_000, seconds: float = 5.0) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    phase = {
        "dc": 0 * t + np.pi / 2,
        "sine 100 Hz": 2 * np.pi * 100 * t,
        "sine 2 kHz": 2 * np.pi * 2000 * t,
        "sweep 50 Hz-2 kHz": 2 * np.pi * (50 * t + 195 * t**2),
    }[kind]
    return (0.3 * torch.sin(phase)).float()[None]


@pytest.mark.parametrize("kind", ["dc", "sine 100 Hz", "sine 2 kHz", "sweep 50 Hz-2 kHz"])
def test_a_pure_tone_or_dc_is_not_a_perth_mark(backend, kind):
    # PerthNet's decoder scored these 0.8-1.0, as high as marked speech: a test tone showed
    # "marks: perth" in scan (p 0.0005 for the 100 Hz sine, under the scan policy's 0.001).
    found = backend.detect(_tone(kind), 16_000)
    assert not found.detected and found.p_value == 1.0


def test_the_tone_rule_leaves_every_bundled_sample_as_perth_scored_it():
    from watermark.backends import perth_backend as pb

    for path in sorted(SAMPLES.glob("*/*.flac")):
        audio, rate = _read(path)
        mono = pb.mix_down(audio)
        n = int(mono.shape[-1] * pb.perth_rate() / rate)
        windows = pb._to_perth_rate(mono, rate, 0, n).unfold(0, 64_000, 32_000)
        assert float(pb._tone_share(windows).max()) < 0.99, path.name


def test_16k_mono_keeps_shape_rate_and_dtype(marked_speech):
    audio, rate, result = marked_speech
    assert result.audio.shape == audio.shape == (1, audio.shape[1])
    assert result.audio.dtype == torch.float32
    assert result.sample_rate == rate == 16_000
    assert result.marked_seconds == pytest.approx(audio.shape[1] / rate, abs=0.5)


def test_44k_stereo_keeps_shape_and_rate_and_leaves_high_band_alone(backend):
    audio, rate = _read(MUSIC_STEREO_44K)
    assert audio.shape[0] == 2 and rate == 44_100
    result = backend.embed(audio, rate, payload=None)
    assert result.audio.shape == audio.shape
    assert result.sample_rate == rate
    assert backend.detect(result.audio, rate).detected
    # the mark is computed at 32 kHz below 2 kHz and only its difference is added back,
    # so the spectrum above 4 kHz is (to float precision) the host's
    diff = np.fft.rfft((result.audio - audio).numpy(), axis=1)
    host = np.fft.rfft(audio.numpy(), axis=1)
    high = np.fft.rfftfreq(audio.shape[1], 1 / rate) > 4_000
    assert np.sum(np.abs(diff[:, high]) ** 2) < 1e-3 * np.sum(np.abs(host[:, high]) ** 2)


@pytest.mark.xfail(
    strict=True,
    reason="a marked 4 s stretch gets p of about 1e-2 (unmarked music reaches the same scores); "
    "times 16 stretches in an 18 s file that misses p < 0.05: Perth cannot localise a 5 s mark",
)
def test_segments_cover_a_marked_stretch_between_unmarked_audio(backend):
    before, rate = _read(SPEECH_16K_OTHER)
    middle, rate_middle = _read(SPEECH_16K)
    after, rate_after = _read(SPEECH_8K)
    assert rate == rate_middle == 16_000
    after = resample(after, rate_after, rate)
    marked = backend.embed(middle, rate, payload=None).audio
    spliced = torch.cat([before, marked, after], dim=1)
    start = before.shape[1] / rate
    end = start + marked.shape[1] / rate

    found = backend.detect(spliced, rate)

    assert found.detected
    covered = sum(max(0.0, min(s.end, end) - max(s.start, start)) for s in found.segments)
    assert covered >= 0.8 * (end - start)
    slack = 3.0  # a 4 s stretch passes once two of its three 2 s windows are mostly marked
    assert all(s.start >= start - slack and s.end <= end + slack for s in found.segments)


def test_marked_audio_differs_from_the_host_only_slightly(marked_speech):
    audio, _, result = marked_speech
    print(f"Perth SNR on {SPEECH_16K.name}: {result.snr_db:.1f} dB")
    assert result.snr_db > 10.0  # PerthNet's own level is about 14-16 dB
    assert torch.max(torch.abs(result.audio - audio)) < 0.5 * torch.max(torch.abs(audio))
    assert not torch.equal(result.audio, audio)


def test_a_gap_silent_but_for_a_dc_offset_is_left_alone(backend):
    """PerthNet marks every frame it finds loud; an inaudible offset must not make it so."""
    speech, rate = _read(SPEECH_16K_OTHER)
    offset = 0.02
    audio = torch.cat([speech, torch.zeros(1, 2 * rate), speech], dim=1) + offset
    result = backend.embed(audio, rate, payload=None)
    gap = result.audio[:, speech.shape[1] + rate // 4 : speech.shape[1] + 7 * rate // 4]
    assert (gap - offset).abs().max() < 1e-6  # was PerthNet's residual at -47 dBFS
    assert result.marked_seconds < 2 * speech.shape[1] / rate + 0.5


def test_too_short_input_is_refused_with_a_sentence(backend):
    from watermark.types import WatermarkError

    with pytest.raises(WatermarkError, match="at least"):
        backend.detect(torch.zeros(1, 100), 16_000)


# ---------------------------------------------------------------------------------------------
# Long files: the file-level test must not lose power as marked audio gets longer, and must stay
# honest (a p-value below t at most a share t of the time on unmarked audio of any length).


def _stretches(scores: np.ndarray):
    from watermark.backends.perth_backend import WindowScores

    return WindowScores(np.arange(len(scores), dtype=np.float64), np.asarray(scores), 4.0)


MARKED_STRETCH_SCORE = 1.0003
"""A typical marked 4 s stretch (the median marked speech window in perth_calibration.json): its
p-value on its own is about 4e-3, a Bonferroni over 13 or more stretches exceeds 0.05."""


@pytest.mark.parametrize("minutes", [0.5, 1, 2, 5, 20])
def test_a_file_marked_throughout_is_detected_at_any_length(backend, minutes):
    from watermark.backends.perth_backend import scores_to_detection

    m = int(minutes * 60) - 3
    scores = np.full(m, MARKED_STRETCH_SCORE)
    scores[::7] = 0.2  # a few stretches (pauses, a cough) carry too little of the mark
    found = scores_to_detection(_stretches(scores), backend.null, 0.05, m + 3.0)
    assert found.detected and found.p_value < 0.05
    # the segments cover the file, not just the few stretches a Bonferroni would let through
    assert sum(s.end - s.start for s in found.segments) >= 0.9 * (m + 3.0)


def test_segments_of_a_long_file_cover_its_marked_minute_and_nothing_else(backend):
    from watermark.backends.perth_backend import scores_to_detection

    scores = np.zeros(117)  # a 2-minute file, unmarked but for 60 s in the middle
    scores[30:87] = MARKED_STRETCH_SCORE
    found = scores_to_detection(_stretches(scores), backend.null, 0.05, 120.0)
    assert found.detected
    assert [(s.start, s.end) for s in found.segments] == [(30.0, 90.0)]


def _null_stretch_p_values(null, rng: np.random.Generator, size: int) -> np.ndarray:
    """Stretch p-values drawn from the calibrated null: one of its stored top 10% of stretch
    scores, or (90% of the time) a score below them, which the null gives p = 1."""
    tail_p = np.array([null.p_value(float(s)) for s in null.tail_scores])
    top = rng.random(size) < len(null.tail_scores) / null.count
    return np.where(top, rng.choice(tail_p, size), 1.0)


@pytest.mark.parametrize("dependence", ["independent", "runs of 20 s", "one score throughout"])
@pytest.mark.parametrize("m", [20, 117, 297])
def test_file_p_values_stay_honest_on_null_stretches_however_they_depend(backend, dependence, m):
    from watermark.backends.perth_backend import file_p_value

    rng = np.random.default_rng(m)
    run = {"independent": 1, "runs of 20 s": 20, "one score throughout": m}[dependence]
    files = 4000
    draws = _null_stretch_p_values(backend.null, rng, files * -(-m // run))
    stretch_p = np.repeat(draws.reshape(files, -1), run, axis=1)[:, :m]
    p_values = np.array([file_p_value(row)[0] for row in stretch_p])
    for t in (0.05, 0.01):
        # at most t in expectation; 4 binomial standard deviations of slack
        assert np.mean(p_values < t) <= t + 4 * np.sqrt(t * (1 - t) / files), t


def test_a_long_marked_recording_embeds_verifies_and_is_found_throughout(backend):
    audio, rate = _read(SPEECH_16K)
    long = audio.repeat(1, 16)  # 83 s of speech; the old Bonferroni read it back at p 0.06
    result = backend.embed(long, rate, payload=None)  # verifies by reading the mark back
    found = result.verification
    seconds = long.shape[1] / rate
    assert found.detected and found.p_value < 0.05
    assert sum(s.end - s.start for s in found.segments) >= 0.8 * seconds
