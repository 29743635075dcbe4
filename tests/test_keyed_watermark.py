"""The keyed watermark: round trips, keys, silence, edits, segments and honest p-values."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from conftest import read_sample

from guard import edits
from watermark import coding
from watermark.keyed import MAX_EXTRA_DB, KeyedBackend
from watermark.keyed_dsp import (
    Hypothesis,
    KeyedParams,
    SyncSpectra,
    align,
    align_untouched,
    codec_noise,
    cumulative_bins,
    derive_pattern,
    detector_features,
    inverse_stft,
    plan_mark,
    stft,
)
from watermark.offset import OFFSET_SECONDS
from watermark.types import Detection, WatermarkError, snr_db

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SPEECH = "speech/fillets_society_stebet0.flac"
MUSIC_STEREO = "music/singularity_awakening_44k_stereo.flac"
SFX = "sfx/hyperrogue_seen_kraken.flac"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def backend() -> KeyedBackend:
    return KeyedBackend(KEY)


@pytest.fixture(scope="module")
def marked_speech(backend):
    audio, rate = read_sample(SPEECH)
    return audio, backend.embed(audio, rate, "c0ffee01"), rate


@pytest.mark.parametrize(
    "clip", [SPEECH, MUSIC_STEREO, SFX, "speech/allison_vm_instructions_8k.flac"]
)
def test_round_trip_keeps_shape_and_reads_payload(backend, clip):
    audio, rate = read_sample(clip)
    result = backend.embed(audio, rate, "deadbeef")
    assert result.audio.shape == audio.shape
    assert result.sample_rate == rate
    # Fragile hosts are marked up to MAX_EXTRA_DB stronger than the base strength, never more.
    assert result.snr_db > KeyedParams().band_snr_db - MAX_EXTRA_DB - 1.0
    assert result.marked_seconds > 0.5 * audio.shape[1] / rate
    found = backend.detect(result.audio, rate)
    assert found.detected and found.p_value < 1e-6
    assert found.payload == "deadbeef"


def test_unmarked_audio_and_wrong_key_see_nothing(backend, marked_speech):
    original, result, rate = marked_speech
    assert not backend.detect(original, rate).detected
    stranger = KeyedBackend(OTHER_KEY).detect(result.audio, rate)
    assert not stranger.detected
    assert stranger.payload is None


def test_short_payload_is_zero_padded_and_bad_payload_refused(backend):
    audio, rate = read_sample(SPEECH)
    assert backend.embed(audio, rate, "7").verification.payload == "00000007"
    with pytest.raises(WatermarkError, match="hex"):
        backend.embed(audio, rate, "xyz")
    with pytest.raises(WatermarkError, match="32 bits"):
        backend.embed(audio, rate, "123456789")


def test_silence_gets_no_mark(backend):
    speech, rate = read_sample(SPEECH)
    gap = torch.zeros(1, 2 * rate)
    audio = torch.cat([speech, gap, speech], dim=1)
    result = backend.embed(audio, rate, "0badf00d")
    silent = result.audio[:, speech.shape[1] + rate // 4 : speech.shape[1] + 7 * rate // 4]
    assert torch.count_nonzero(silent) == 0
    assert result.marked_seconds <= 2 * speech.shape[1] / rate + 0.1
    with pytest.raises(WatermarkError, match="too quiet"):
        backend.embed(torch.zeros(1, 5 * rate), rate, "01")


def test_a_dc_offset_is_not_loudness(backend):
    """Cheap converters add a constant offset. It is inaudible, so a gap that is silent but
    for the offset stays unmarked, and a file that is nothing but offset is too quiet."""
    speech, rate = read_sample(SPEECH)
    gap = torch.zeros(1, 2 * rate)
    offset = 0.02
    audio = torch.cat([speech, gap, speech], dim=1) + offset
    result = backend.embed(audio, rate, "0badf00d")
    silent = result.audio[:, speech.shape[1] + rate // 4 : speech.shape[1] + 7 * rate // 4]
    assert torch.equal(silent, torch.full_like(silent, offset))
    assert result.marked_seconds <= 2 * speech.shape[1] / rate + 0.1
    assert backend.detect(result.audio, rate).payload == "0badf00d"
    with pytest.raises(WatermarkError, match="too quiet"):
        backend.embed(torch.full((1, 5 * rate), offset), rate, "01")


def test_noise_like_audio_is_retried_stronger(backend):
    """A 5.7 s mud-slide noise does not keep its mark at ~30 dB SNR; embed spends more, but
    never more than ``MAX_EXTRA_DB`` above the base strength."""
    audio, rate = read_sample("sfx/etr_mud_slide.flac")
    result = backend.embed(audio, rate, "deadbeef")
    assert result.verification.payload == "deadbeef"
    assert KeyedParams().band_snr_db - MAX_EXTRA_DB < result.snr_db < 29.5


@pytest.mark.parametrize(
    "clip", [SPEECH, MUSIC_STEREO, SFX, "speech/allison_vm_instructions_8k.flac"]
)
def test_mark_survives_white_noise_at_20_db(backend, clip):
    """Noise fills the quiet bins the mark favours; embed checks for that and marks stronger.

    Before the noise check, the 8 kHz voicemail (noise all in the marked band) was lost.
    """
    audio, rate = read_sample(clip)
    result = backend.embed(audio, rate, "deadbeef")
    for seed in (11, 12):
        noisy, noisy_rate = edits.white_noise(result.audio, rate, 20.0, seed)
        found = backend.detect(noisy, noisy_rate)
        assert found.detected, (seed, found)


def test_payload_reads_after_white_noise_at_20_db():
    """The payload, not only the mark, must survive the noise embed plans for.

    Before embed checked the coded bits under its stress noise, this tutorial voice under
    this key was detected after every draw but read its payload back after one of four.
    """
    backend = KeyedBackend(bytes([42]) * 32)
    audio, rate = read_sample("speech/warzone_tutorial_tut73.flac")
    result = backend.embed(audio, rate, "c0ffee42")
    for seed in range(4):
        noisy, noisy_rate = edits.white_noise(result.audio, rate, 20.0, seed)
        assert backend.detect(noisy, noisy_rate).payload == "c0ffee42", seed


def test_noise_that_fills_the_quiet_bins_is_read_through_the_loud_ones(backend):
    """The mark favours quiet bins; noise 10 dB down fills them, yet the loud bins still
    carry their share, and the detector's even bin weighting reads it there.

    With only the quiet-bin weighting (both weightings the same), this music scores about
    5.5 and is lost; read evenly it scores about 8.
    """
    audio, rate = read_sample("music/drascula_track6.flac")
    marked = backend.embed(audio, rate, "2026112a").audio
    noisy, noisy_rate = edits.white_noise(marked, rate, 10.0, 0)
    assert backend.detect(noisy, noisy_rate).detected
    params = KeyedParams()
    quiet_only = KeyedBackend(KEY, replace(params, noise_gamma=params.gamma))
    assert not quiet_only.detect(noisy, noisy_rate).detected


@pytest.mark.parametrize("key_byte", [0, 1, 2, 6])
def test_payload_reads_after_opus_refills_the_quiet_bins(key_byte):
    """Music with deep valleys between its notes: Opus 32 kbit/s keeps each band's energy
    and refills the valleys with its own noise, where the mark put most of its energy.

    Before embed planned for codec-like noise, each of these keys lost the payload (11 of
    16 keys did); the mark is still found, so a wrong reading would have gone unnoticed.
    """
    audio, rate = read_sample("lincity_city_blues_44k.flac", root=DATA)
    backend = KeyedBackend(bytes([key_byte]) * 32)
    result = backend.embed(audio, rate, "2026112a")
    coded, coded_rate = edits.opus(result.audio, rate, bitrate_kbps=32)
    assert backend.detect(coded, coded_rate).payload == "2026112a"


def test_payload_reads_under_a_dense_bed_mixed_into_a_phone_message():
    """A mud slide (dense broadband noise) mixed 10 dB under an 8 kHz voicemail fills most of
    the marked band while the voice pauses; the sync still shows, and the payload bits are
    left near what the code corrects.

    With 40% of the cells for the sync (13 cells per coded bit instead of 11), 7 of these 8
    keys read the payload; with half, 3 did.
    """
    audio, rate = read_sample("speech/allison_vm_instructions_8k.flac")
    bed, bed_rate = read_sample("sfx/etr_mud_slide.flac")
    read = 0
    for key_byte in range(8):
        backend = KeyedBackend(bytes([key_byte]) * 32)
        marked = backend.embed(audio, rate, "2026112a").audio
        mixed, mixed_rate = edits.mix(marked, rate, bed, bed_rate)
        found = backend.detect(mixed, mixed_rate)
        assert found.detected, key_byte
        read += found.payload == "2026112a"
    assert read >= 7


def test_pattern_gives_the_payload_three_fifths_of_the_cells():
    """Every coded bit gets 13 or 14 cells and the sync 40% of the grid."""
    pattern = derive_pattern(KEY, KeyedParams())
    assert pattern.sync.float().mean().item() == pytest.approx(0.4, abs=1e-3)
    counts = torch.bincount(pattern.bit_index[~pattern.sync], minlength=coding.CODED_BITS)
    assert counts.min() >= 13 and counts.max() <= 14


def test_codec_noise_sits_below_each_band_of_the_host():
    """The codec-like stress follows the host band by band: a loud low tone and a tone
    30 dB quieter each get noise 9 dB below their own band, and silence gets none."""
    params = KeyedParams()
    t = torch.arange(16000) / params.rate
    tones = torch.sin(2 * math.pi * 500 * t) + 10 ** (-30 / 20) * torch.sin(2 * math.pi * 2500 * t)
    host = torch.cat([tones, torch.zeros(16000)])[None]
    plan = plan_mark(host, 0, params)
    noise = codec_noise(plan, 9.0, torch.Generator().manual_seed(0), params)
    window = torch.hann_window(1024)
    spectrum = torch.stft(noise[:16000], 1024, 256, window=window, return_complex=True)
    host_spectrum = torch.stft(tones, 1024, 256, window=window, return_complex=True)

    def band_db(spec: torch.Tensor, lo_hz: int, hi_hz: int) -> float:
        bins = spec[lo_hz * 1024 // 8000 : hi_hz * 1024 // 8000]
        return 10 * math.log10(float(bins.abs().square().sum()))

    for lo_hz, hi_hz in ((400, 600), (2400, 2800)):
        below = band_db(host_spectrum, lo_hz, hi_hz) - band_db(spectrum, lo_hz, hi_hz)
        assert 8.0 < below < 10.0, (lo_hz, below)
    # The plan is made without the host's offset, estimated over OFFSET_SECONDS, so the
    # tones' own (tiny) mean reaches that far into the silence, and one frame beyond it.
    reach = 16000 + round(OFFSET_SECONDS * params.rate) + params.n_fft
    assert float(noise[16000 + 512 :].abs().max()) < 1e-5
    assert float(noise[reach:].abs().max()) == 0.0


@pytest.mark.parametrize("length", [8000, 8001, 12345])
def test_inverse_stft_is_torch_istft_to_the_bit(length):
    """The planner's fast overlap-add must render exactly the mark torch.istft would, for
    stereo and for lengths off the hop grid (the last half frame is divided by its window)."""
    params = KeyedParams()
    generator = torch.Generator().manual_seed(length)
    spec = stft(torch.randn(2, length, generator=generator), params, params.hop)
    spec = spec * torch.rand(spec.shape, generator=generator)
    window = torch.hann_window(params.n_fft, periodic=True).sqrt()
    expected = torch.istft(spec, params.n_fft, params.hop, window=window, length=length)
    assert torch.equal(inverse_stft(spec, params, length), expected)


def test_planner_alignments_of_many_ranges_match_one_at_a_time():
    """The planner folds all its windows and excerpts at once from running sums; each must
    score and align as :func:`align` does on that range alone, wherever the range starts."""
    params = KeyedParams()
    spectra = SyncSpectra.of(derive_pattern(KEY, params))
    audio = torch.randn(64000, generator=torch.Generator().manual_seed(3))
    cumulative = cumulative_bins(detector_features(audio, params))
    frames = cumulative.shape[1]
    ranges = [(0, frames), (17, 17 + 375), (frames - 375, frames), (256, 768), (5, 518)]
    for (start, end), fast in zip(
        ranges, align_untouched(cumulative, spectra, params, ranges), strict=True
    ):
        alone, _ = align(cumulative[:, start:end], spectra, params, [Hypothesis(1.0, 1.0)])
        assert fast.offset == alone.offset
        assert fast.z == pytest.approx(alone.z, rel=1e-5)
        assert torch.allclose(fast.cells, alone.cells, rtol=1e-4, atol=1e-4)


def test_a_window_the_stress_noise_swamps_does_not_break_embed():
    """Music then a quiet alarm clock: under the noise planned from the music's level, the
    clock's window read a payload margin of zero or less, and embed died in math.log10."""
    music, music_rate = read_sample("music/drascula_track6.flac")
    clock, clock_rate = read_sample("sfx/freedesktop_alarm_clock.flac")
    audio = torch.cat(
        [
            torchaudio.functional.resample(x.mean(0, keepdim=True), rate, 16000)
            for x, rate in ((music, music_rate), (clock, clock_rate))
        ],
        dim=1,
    )
    result = KeyedBackend(bytes(32)).embed(audio, 16000, "deadbeef")
    assert result.verification.payload == "deadbeef"


def test_only_the_stretch_that_needs_it_is_marked_stronger(backend):
    """8 s of fragile music then 8 s of speech: the music's window is marked stronger, the
    speech keeps the strength it gets on its own (before, the whole chunk paid)."""

    def at_16k(clip: str) -> torch.Tensor:
        audio, rate = read_sample(clip)
        mono = torchaudio.functional.resample(audio.mean(0, keepdim=True), rate, 16000)
        return mono.repeat(1, 128000 // mono.shape[1] + 1)[:, :128000]

    music, speech = at_16k("music/drascula_track6.flac"), at_16k(SPEECH)
    alone = backend.embed(speech, 16000, "deadbeef").audio
    both = backend.embed(torch.cat([music, speech], 1), 16000, "deadbeef").audio
    tail = slice(32000, None)  # clear of the excerpts that straddle the join
    speech_alone = snr_db(speech[:, tail], alone[:, tail])
    assert snr_db(speech[:, tail], both[:, 128000:][:, tail]) > speech_alone - 0.5
    assert snr_db(music, both[:, :128000]) < speech_alone - 3.0


def test_mix_keeps_the_payload(backend):
    """Payload soft bits weight each stretch by how clearly the mark shows there."""
    audio, rate = read_sample(MUSIC_STEREO)
    result = backend.embed(audio, rate, "deadbeef")
    other, other_rate = read_sample(SPEECH)
    mixed, mixed_rate = edits.mix(result.audio, rate, other, other_rate, -10.0)
    assert backend.detect(mixed, mixed_rate).payload == "deadbeef"


def test_embed_fails_loudly_when_the_mark_cannot_be_read_back(backend, monkeypatch):
    rate = 16000
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 3 * rate))).float()
    # 2 s of this noise used to stand in for "cannot be read back"; it fails because 2 s is
    # shorter than one period of the pattern, which is now said (see the test below).
    monkeypatch.setattr(
        KeyedBackend, "detect", lambda self, audio, rate: Detection("keyed", False, 0.5)
    )
    with pytest.raises(WatermarkError, match="did not read back.*too little or too quiet"):
        backend.embed(0.1 * noise, rate, "01234567")


def test_embedding_needs_8k_and_detection_4k(backend):
    with pytest.raises(WatermarkError, match="embedding needs .* at least 8000 Hz, got 7999"):
        backend.embed(torch.zeros(1, 3 * 7999), 7999, "beef")
    with pytest.raises(WatermarkError, match="detection needs .* at least 4000 Hz, got 3999"):
        backend.detect(torch.zeros(1, 3 * 3999), 3999)
    assert not backend.detect(torch.zeros(1, 3 * 6000), 6000).detected


@pytest.mark.parametrize(
    "edit",
    [
        functools.partial(edits.mp3, bitrate_kbps=64),
        functools.partial(edits.resample_roundtrip, mid_rate=8000),
        functools.partial(edits.speed, factor=1.03),
        functools.partial(edits.tempo, factor=0.95),
        functools.partial(edits.crop, seconds=3.0, start=1.3),
        functools.partial(edits.shift, samples=77),
    ],
    ids=["mp3_64k", "resample_8k", "speed_1.03", "tempo_0.95", "crop_3s", "shift"],
)
def test_mark_survives_edits(backend, marked_speech, edit):
    _, result, rate = marked_speech
    edited, edited_rate = edit(result.audio, rate)
    found = backend.detect(edited, edited_rate)
    assert found.detected, found


def test_segments_locate_a_marked_stretch(backend, marked_speech):
    original, result, rate = marked_speech
    music, music_rate = read_sample("music/pathological_background.flac")
    from guard.audio import resample

    filler = resample(music, music_rate, rate)[:, : 6 * rate]
    spliced = torch.cat([filler, result.audio, filler], dim=1)
    found = backend.detect(spliced, rate)
    assert found.detected
    start, end = 6.0, 6.0 + result.audio.shape[1] / rate
    covered = [s for s in found.segments if s.end > start and s.start < end]
    assert covered, found.segments
    assert abs(covered[0].start - start) < 0.75
    assert abs(covered[-1].end - end) < 0.75
    outside = sum(max(0.0, min(s.end, start) - s.start) for s in found.segments)
    assert outside < 1.0


def test_long_input_is_processed_in_chunks(backend):
    speech, rate = read_sample(SPEECH)
    audio = speech.repeat(1, 26)[:, : 130 * rate]  # longer than two embedding chunks
    result = backend.embed(audio, rate, "a5a5a5a5")
    assert result.marked_seconds > 100
    tail = result.audio[:, 118 * rate :]  # a stretch that straddles no chunk start
    found = backend.detect(tail, rate)
    assert found.detected and found.payload == "a5a5a5a5"


def test_p_values_are_honest_on_unmarked_audio():
    """Over many keys and unmarked clips, p < alpha happens at most about alpha of the time."""
    rng = np.random.default_rng(7)
    clips = [read_sample(c) for c in (SPEECH, SFX, "music/drascula_track6.flac")]
    p_values = []
    for trial in range(24):
        audio, rate = clips[trial % len(clips)]
        noise = torch.from_numpy(rng.standard_normal((1, 3 * rate)).astype(np.float32)) * 0.05
        target = audio if trial % 2 else noise
        key = rng.bytes(32)
        p_values.append(KeyedBackend(key).detect(target, rate).p_value)
    assert min(p_values) > 1e-4
    assert np.mean(np.array(p_values) < 0.2) <= 0.3


def test_viterbi_corrects_noise_and_crc_rejects_garbage():
    rng = np.random.default_rng(0)
    codeword = coding.encode("12345678").astype(np.float64)
    soft = (2 * codeword - 1) * 1.5 + rng.standard_normal(codeword.size)
    assert coding.decode(soft) == "12345678"
    # Each of the 32 listed paths passes the CRC-16 by chance with probability 2**-16, so
    # about one in 2,048 garbage inputs decodes (0.5 expected here); a broken check passes many.
    garbage = [coding.decode(rng.standard_normal(codeword.size)) for _ in range(1000)]
    assert len(garbage) - garbage.count(None) <= 3


@pytest.mark.parametrize(
    ("shorter", "amplitude", "seed", "trials", "gain"),
    [
        # Plain Viterbi loses payloads to one wrong turn that the list still holds.
        (1, 0.75, 1, 200, 30),
        # Under white noise or a loud second track the coded bits of a sparse clip read
        # with an error rate near 20% (amplitude 0.8); 32 paths recover about half of what
        # 8 lose there.
        (8, 0.8, 2, 150, 6),
    ],
)
def test_the_default_list_reads_payloads_a_shorter_one_loses(
    shorter, amplitude, seed, trials, gain
):
    rng = np.random.default_rng(seed)
    short = default = 0
    for _ in range(trials):
        payload = f"{int(rng.integers(2**32)):08x}"
        codeword = coding.encode(payload).astype(np.float64)
        soft = (2 * codeword - 1) * amplitude + rng.standard_normal(codeword.size)
        short += coding.decode(soft, list_size=shorter) == payload
        default += coding.decode(soft) == payload
    assert default >= short + gain


def test_a_binary_file_is_not_a_key_rather_than_unreadable(tmp_path):
    from watermark.keys import read_key

    audio_file = tmp_path / "clip.wav"
    audio_file.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\xff\xfe")
    with pytest.raises(WatermarkError, match="not an audioguard key") as raised:
        read_key(audio_file)
    assert str(raised.value).startswith(f"{audio_file}: ")
    huge = tmp_path / "huge.key"
    huge.write_text("# comment\n" + "ab" * 100_000 + "\n")
    with pytest.raises(WatermarkError, match="not an audioguard key"):
        read_key(huge)


def test_a_clip_shorter_than_one_period_is_too_short_not_too_quiet(backend):
    rate = 16000
    t = torch.arange(2 * rate) / rate
    loud = (0.3 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t)))[None]
    with pytest.raises(WatermarkError) as raised:
        backend.embed(loud, rate, "deadbeef")
    message = str(raised.value)
    assert "2 s long, too short" in message and "at least 2.048 s" in message
    assert "too quiet" not in message
    assert backend.params.period_seconds == 2.048  # the minimum quoted is one period


def test_a_clip_too_short_is_refused_before_any_embedding(backend, monkeypatch):
    # It was said only after marking four times over, at +0, +4, +8 and +11 dB.
    def never(*args, **kwargs):
        raise AssertionError("embedded a clip no strength can mark")

    monkeypatch.setattr(backend, "embed_stream", never)
    with pytest.raises(WatermarkError, match="too short"):
        backend.embed(0.3 * torch.randn(1, 16000), 16000, "deadbeef")


def test_marked_seconds_never_exceed_the_audio(backend):
    # Tallied in whole frames, the last reaching past the end: a 3 s clip reported 3.008 s,
    # in the library, the service's header and protect's audit record.
    rate = 8000
    t = torch.arange(3 * rate) / rate
    tone = 0.2 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t))
    audio = (tone + 0.02 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0)))[None]
    result = backend.embed(audio, rate, "deadbeef")
    assert 2.5 < result.marked_seconds <= 3.0
