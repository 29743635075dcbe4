"""The AudioSeal backend end to end on the small AudioSeal-architecture pair the repo ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from watermark.backends.audioseal_backend import (
    OFFICIAL_FILES,
    AudioSealBackend,
    convert_official_checkpoint,
    window_p_value,
)
from watermark.types import WatermarkError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _read(name: str) -> tuple[torch.Tensor, int]:
    data, rate = sf.read(str(SAMPLES / name), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), rate


@pytest.fixture(scope="module")
def backend() -> AudioSealBackend:
    return AudioSealBackend(weights="small")


@pytest.fixture(scope="module")
def speech() -> tuple[torch.Tensor, int]:
    return _read("speech/fillets_society_stebet0.flac")


def test_embed_then_detect_returns_the_payload(backend, speech):
    audio, rate = speech
    result = backend.embed(audio, rate, "beef")
    assert result.audio.shape == audio.shape
    assert result.verification.detected and result.verification.payload == "beef"
    again = backend.detect(result.audio, rate)
    assert again.detected and again.p_value < 1e-3
    assert again.payload == "beef"
    assert result.snr_db > 15.0
    assert result.marked_seconds > 0.8 * audio.shape[-1] / rate


def test_every_payload_bit_is_carried(backend, speech):
    audio, rate = speech
    for payload in ("0000", "ffff", "a5c3"):
        assert backend.detect(backend.embed(audio, rate, payload).audio, rate).payload == payload


@pytest.mark.parametrize(
    "name", sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.flac"))
)
def test_unmarked_samples_are_not_detected(backend, name):
    audio, rate = _read(name)
    detection = backend.detect(audio, rate)
    assert not detection.detected
    assert detection.payload is None and detection.segments == ()
    assert detection.p_value > 1e-3


def test_unmarked_noise_and_silence_are_not_detected(backend):
    noise = 0.05 * torch.randn(1, 5 * 16_000, generator=torch.Generator().manual_seed(1))
    assert not backend.detect(noise, 16_000).detected
    assert not backend.detect(torch.zeros(1, 3 * 16_000), 16_000).detected


@pytest.mark.parametrize("samples", [10, 100, 8000])
def test_audio_shorter_than_one_calibrated_window_is_not_judged(backend, samples):
    with pytest.raises(WatermarkError, match="needs at least 1 s"):
        backend.detect(torch.zeros(1, samples), 16000)
    with pytest.raises(WatermarkError, match="needs at least 1 s"):
        backend.embed(torch.zeros(1, samples), 16000, "beef")


def test_segments_cover_the_marked_stretch(backend):
    music, rate = _read("music/pathological_background.flac")
    speech, _ = _read("speech/warzone_tutorial_tut73.flac")
    before, middle, after = music[:, : 3 * rate], speech[:, : 3 * rate], music[:, 4 * rate :]
    marked = backend.embed(middle, rate, "1234").audio
    detection = backend.detect(torch.cat([before, marked, after], dim=1), rate)
    assert detection.detected and detection.payload == "1234"
    assert len(detection.segments) == 1
    assert abs(detection.segments[0].start - 3.0) < 0.25
    assert abs(detection.segments[0].end - 6.0) < 0.25


def test_44k_stereo_keeps_shape_and_payload(backend):
    audio, rate = _read("music/singularity_awakening_44k_stereo.flac")
    assert (audio.shape[0], rate) == (2, 44_100)
    result = backend.embed(audio, rate, "c0de")
    assert result.audio.shape == audio.shape and result.sample_rate == rate
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / rate)
    change = torch.fft.rfft(result.audio - audio).abs().pow(2)
    host = torch.fft.rfft(audio).abs().pow(2)
    assert change[:, freqs < 7_500].sum() > 1e-4 * host[:, freqs < 7_500].sum()  # it is there
    assert backend.detect(result.audio, rate).payload == "c0de"


def test_44k_stereo_content_above_8khz_is_untouched(backend):
    """This host has almost nothing above 8 kHz, so any image of the mark there would show."""
    audio, rate = _read("music/singularity_awakening_44k_stereo.flac")
    result = backend.embed(audio, rate, "c0de")
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / rate)
    change = torch.fft.rfft(result.audio - audio).abs().pow(2)
    host = torch.fft.rfft(audio).abs().pow(2)
    assert change[:, freqs > 8_100].sum() < 1e-4 * host[:, freqs > 8_100].sum()


def test_the_small_pair_keeps_its_mark_below_its_band(backend, speech):
    """The shipped pair was trained with its mark cut at ``mark_band_hz``, and the backend
    cuts it there too: a mark leaning on the top of the 16 kHz band would lose bits to any
    sharp resampler, ours included."""
    audio, rate = speech
    assert rate == 16_000 and backend.mark_band_hz is not None
    change = backend.embed(audio, rate, "7e57").audio - audio
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / rate)
    power = torch.fft.rfft(change).abs().pow(2)
    assert power[:, freqs > backend.mark_band_hz + 100].sum() < 1e-4 * power.sum()


def test_long_input_is_marked_throughout(backend, speech):
    audio, rate = speech
    long = audio.repeat(1, 14)[:, : 70 * rate]
    result = backend.embed(long, rate, "0f0f")
    assert result.audio.shape == long.shape
    detection = backend.detect(result.audio, rate)
    assert detection.detected and detection.payload == "0f0f"
    assert sum(s.end - s.start for s in detection.segments) > 60.0


@pytest.mark.xfail(
    strict=True,
    reason="the small pairs read their payload only on the 160-sample grid of the encoder they "
    "were marked on (a crop 20 samples in reads another payload); fine-tunes that shifted the "
    "detector's input lost the bits on a CPU budget (docs/research/audioseal-small-training.md)",
)
@pytest.mark.parametrize("drop", [20, 80])
def test_the_payload_survives_a_crop_off_the_encoders_grid(backend, speech, drop):
    audio, rate = speech
    marked = backend.embed(audio, rate, "beef").audio
    assert backend.detect(marked[:, drop:], rate).payload == "beef"


def test_digital_silence_stays_silent(backend, speech):
    audio, rate = speech
    padded = torch.cat([torch.zeros(1, rate), audio], dim=1)
    marked = backend.embed(padded, rate, "abcd").audio
    assert torch.count_nonzero(marked[:, : rate - 160]) == 0


def test_a_gap_silent_but_for_a_dc_offset_gets_no_hiss(backend, speech):
    """The mark follows the host's envelope; an inaudible offset must not count as one."""
    audio, rate = speech
    offset = 0.02
    padded = torch.cat([audio, torch.zeros(1, 2 * rate), audio], dim=1) + offset
    result = backend.embed(padded, rate, "abcd")
    gap = result.audio[:, audio.shape[1] + rate // 4 : audio.shape[1] + 7 * rate // 4]
    assert (gap - offset).abs().max() < 1e-6  # was a hiss at -54 dBFS


def test_missing_official_weights_name_the_file(tmp_path):
    with pytest.raises(WatermarkError) as error:
        AudioSealBackend(weights=tmp_path)
    message = str(error.value)
    assert "facebook/audioseal" in message and str(tmp_path) in message
    assert all(name in message for name in OFFICIAL_FILES.values())
    with pytest.raises(WatermarkError, match="generator_base.pth"):
        AudioSealBackend(weights=tmp_path / "generator_base.pth")


class _Trap:
    """Unpickling this runs code: it creates the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_checkpoint_with_a_disallowed_global_is_refused(tmp_path):
    sprung = tmp_path / "sprung"
    for name in OFFICIAL_FILES.values():
        torch.save({"model": {"w": torch.zeros(1)}, "trap": _Trap(sprung)}, tmp_path / name)
    with pytest.raises(WatermarkError, match="loaded safely"):
        AudioSealBackend(weights=tmp_path)
    assert not sprung.exists()


def _official_like(model: torch.nn.Module, tmp_path: Path, name: str) -> Path:
    """A checkpoint laid out as Meta publishes it: omegaconf config plus a state dict."""
    from omegaconf import OmegaConf

    path = tmp_path / name
    torch.save(
        {"xp.cfg": OmegaConf.create({"seanet": {"lstm": 2}}), "model": model.state_dict()}, path
    )
    return path


def test_official_layout_loads_with_weights_only_and_converts(tmp_path):
    from watermark.backends.audioseal_backend import CARDS, build_model, load_local_model_config

    def official(kind: str) -> torch.nn.Module:
        card = dict(load_local_model_config(CARDS[kind]))
        return build_model(kind, {k: v for k, v in card.items() if k != "checkpoint"})

    torch.manual_seed(0)
    generator = _official_like(official("generator"), tmp_path, OFFICIAL_FILES["generator"])
    detector = _official_like(official("detector"), tmp_path, OFFICIAL_FILES["detector"])
    from_pth = AudioSealBackend(weights=tmp_path)
    out = tmp_path / "converted"
    convert_official_checkpoint(generator, out / "generator.safetensors")
    convert_official_checkpoint(detector, out / "detector.safetensors")
    assert (out / "generator.json").is_file()
    from_safetensors = AudioSealBackend(weights=out)
    x = 0.1 * torch.randn(1, 1, 16_000)
    message = torch.ones(1, 16, dtype=torch.long)
    with torch.inference_mode():
        a = from_pth.generator.get_watermark(x, message=message)
        b = from_safetensors.generator.get_watermark(x, message=message)
    assert torch.equal(a, b) and a.abs().sum() > 0
    assert from_pth.mark_band_hz is None and from_safetensors.mark_band_hz is None  # not cut


def test_a_band_limit_saved_with_the_generator_is_applied(backend, speech, tmp_path):
    """The limit rides in the generator's metadata, so a pair trained with another limit is
    cut where it was trained to live, not where the shipped pair is."""
    from watermark.backends.audioseal_backend import SMALL_DIR, _metadata, parse_payload, save_model

    for kind, model in (("generator", backend.generator), ("detector", backend.detector)):
        save_model(
            model,
            kind,
            json.loads(_metadata(SMALL_DIR / f"{kind}.safetensors")["config"]),
            tmp_path / f"{kind}.safetensors",
            envelope_snr_db=backend.envelope_snr_db if kind == "generator" else None,
            normalized_input=True,
            mark_band_hz=5_000.0 if kind == "generator" else None,
        )
    narrow = AudioSealBackend(weights=tmp_path)
    assert narrow.mark_band_hz == 5_000.0
    audio, rate = speech
    mark = narrow._watermark(audio, rate, parse_payload("7e57"))
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / rate)
    power = torch.fft.rfft(mark).abs().pow(2)
    assert power[:, freqs > 5_100].sum() < 1e-4 * power.sum()
    assert power[:, freqs < 5_000].sum() > 0


@pytest.mark.parametrize("band", ["0", "-7000", "9000", "seven"])
def test_a_band_limit_that_leaves_no_band_is_refused_on_load(backend, tmp_path, band):
    from safetensors.torch import load_file, save_file

    from watermark.backends.audioseal_backend import SMALL_DIR, _metadata

    for kind in ("generator", "detector"):
        meta = _metadata(SMALL_DIR / f"{kind}.safetensors")
        if kind == "generator":
            meta["mark_band_hz"] = band
        state = load_file(str(SMALL_DIR / f"{kind}.safetensors"))
        save_file(state, str(tmp_path / f"{kind}.safetensors"), metadata=meta)
    with pytest.raises(WatermarkError, match="mark_band_hz"):
        AudioSealBackend(weights=tmp_path)


def test_p_value_is_never_zero_and_falls_with_the_score(backend):
    calibration = backend.calibration
    top = calibration["null_sorted"][-1]
    assert window_p_value(calibration["null_sorted"][0], calibration) > 0.5
    assert 0 < window_p_value(top + 50, calibration) < window_p_value(top, calibration)
    assert window_p_value(top + 1e6, calibration) > 0


def test_a_missing_payload_is_refused_and_a_short_one_left_padded(backend, speech):
    # The help said the payload was required; leaving it out silently embedded 0000.
    from watermark.backends.audioseal_backend import parse_payload

    audio, rate = speech
    with pytest.raises(WatermarkError, match="needs a payload"):
        backend.embed(audio, rate, None)
    assert parse_payload("12").tolist() == parse_payload("0012").tolist()
    assert parse_payload("0x7").tolist() == parse_payload("0007").tolist()
    for bad in ("", "12345", "xyz", "0x"):
        with pytest.raises(WatermarkError, match="1 to 4 hex digits"):
            parse_payload(bad)


def test_missing_official_weights_name_the_spelling_of_the_command_line(tmp_path):
    with pytest.raises(WatermarkError) as raised:
        AudioSealBackend(weights=tmp_path)
    message = str(raised.value)
    assert "--weights small" in message and "weights='small'" in message
