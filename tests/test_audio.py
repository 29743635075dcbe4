"""Decoding, validation and writing of users' audio files (guard.audio)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from guard import audio
from guard.audio import AudioError, AudioInfo, Limits
from guard.native_messages import decoder_messages


def signal(rate: int, channels: int, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    """A distinct tone per channel plus a little noise, `(frames, channels)` as soundfile wants."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(channels)
    tones = [np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]
    data = amplitude * np.stack(tones, axis=1) + 0.01 * rng.standard_normal((len(t), channels))
    return data.astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, fmt: str, subtype: str) -> Path:
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    return path


def refused(call, path: Path, *words: str) -> str:
    """Run `call(path)`, expect an AudioError that names the file, and return its message."""
    with pytest.raises(AudioError) as caught:
        call(path)
    message = str(caught.value)
    assert caught.value.path == str(path)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for word in words:
        assert word in message
    return message


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


LOSSLESS = [
    ("WAV", "PCM_16", ".wav", 1 / 2**15),
    ("WAV", "PCM_24", ".wav", 1 / 2**23),
    ("WAV", "FLOAT", ".wav", 0.0),
    ("FLAC", "PCM_16", ".flac", 1 / 2**15),
    ("FLAC", "PCM_24", ".flac", 1 / 2**23),
]


@pytest.mark.parametrize(("fmt", "subtype", "ext", "step"), LOSSLESS)
def test_lossless_round_trip_keeps_samples_format_and_layout(tmp_path, fmt, subtype, ext, step):
    source = signal(44100, 2)
    src = write(tmp_path / f"in{ext}", source, 44100, fmt, subtype)

    wave, info = audio.load(src)

    assert wave.dtype == torch.float32
    assert wave.shape == (2, 44100)
    assert info == AudioInfo(str(src), 44100, 2, 44100, fmt, subtype)
    assert info.duration == pytest.approx(1.0)
    np.testing.assert_allclose(wave.T.numpy(), source, atol=step)

    out = tmp_path / f"out{ext}"
    written = audio.save(out, wave, info.sample_rate, like=info)
    back, back_info = audio.load(out)

    assert written == back_info == AudioInfo(str(out), 44100, 2, 44100, fmt, subtype)
    np.testing.assert_allclose(back.numpy(), wave.numpy(), atol=step)


LOSSY = [
    ("OGG", "VORBIS", ".ogg", 44100),
    ("OGG", "OPUS", ".opus", 48000),
    ("OGG", "OPUS", ".ogg", 16000),
    ("MP3", "MPEG_LAYER_III", ".mp3", 44100),
    ("MP3", "MPEG_LAYER_III", ".mp3", 16000),
]


@pytest.mark.parametrize(("fmt", "subtype", "ext", "rate"), LOSSY)
def test_lossy_round_trip_keeps_format_rate_channels_and_length(tmp_path, fmt, subtype, ext, rate):
    source = signal(rate, 2, seconds=2.0)
    src = write(tmp_path / f"in{ext}", source, rate, fmt, subtype)

    wave, info = audio.load(src)

    assert (info.format, info.subtype, info.sample_rate, info.channels) == (fmt, subtype, rate, 2)
    assert wave.shape == (2, info.frames)
    assert abs(info.frames - len(source)) <= rate // 100
    assert correlation(wave[:, : len(source)], torch.from_numpy(source.T[:, : info.frames])) > 0.9

    out = tmp_path / f"out{ext}"
    audio.save(out, wave, rate, like=info)
    back, back_info = audio.load(out)

    assert (back_info.format, back_info.subtype) == (fmt, subtype)
    assert (back_info.sample_rate, back_info.channels) == (rate, 2)
    assert abs(back_info.frames - info.frames) <= rate // 100
    n = min(back_info.frames, info.frames)
    assert correlation(back[:, :n], wave[:, :n]) > 0.9


@pytest.mark.parametrize("channels", [1, 2, 8])
def test_up_to_eight_channels_load(tmp_path, channels):
    path = write(tmp_path / "multi.wav", signal(16000, channels), 16000, "WAV", "PCM_16")
    wave, info = audio.load(path)
    assert wave.shape == (channels, 16000)
    assert info.channels == channels


def test_nine_channels_are_refused(tmp_path):
    path = write(tmp_path / "nine.wav", signal(16000, 9), 16000, "WAV", "PCM_16")
    refused(audio.load, path, "9 channels")
    refused(audio.probe, path, "9 channels")


@pytest.mark.parametrize("rate", [8000, 48000, 96000])
def test_supported_rates_load(tmp_path, rate):
    path = write(tmp_path / "rate.wav", signal(rate, 1), rate, "WAV", "PCM_16")
    wave, info = audio.load(path)
    assert info.sample_rate == rate
    assert wave.shape == (1, rate)


@pytest.mark.parametrize(("rate", "word"), [(3000, "below 4000 Hz"), (200_000, "above 192000 Hz")])
def test_rates_outside_the_limits_are_refused(tmp_path, rate, word):
    path = write(tmp_path / "rate.wav", signal(rate, 1), rate, "WAV", "PCM_16")
    refused(audio.load, path, f"{rate} Hz", word)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(tmp_path, bad):
    data = signal(16000, 1)
    data[1234, 0] = bad
    path = write(tmp_path / "bad.wav", data, 16000, "WAV", "FLOAT")
    refused(audio.load, path, "NaN or infinite")
    blocks = audio.iter_blocks(path, 1000)
    assert torch.isfinite(next(blocks)).all()
    with pytest.raises(AudioError, match="NaN or infinite"):
        list(blocks)


def test_missing_file_and_folder_are_refused(tmp_path):
    refused(audio.load, tmp_path / "nope.wav", "does not exist")
    refused(audio.load, tmp_path, "is a folder")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "upload.wav"
    path.touch()
    refused(audio.load, path, "is empty (0 bytes)")


def test_wav_without_frames_is_refused(tmp_path):
    path = write(tmp_path / "silent.wav", np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16")
    assert path.stat().st_size > 0
    refused(audio.load, path, "no audio")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.wav", np.random.default_rng(1).bytes(5000)),
        ("notes.mp3", b"this is a text file, not a song\n" * 100),
        ("garbage.flac", np.random.default_rng(2).bytes(5000)),
    ],
)
def test_undecodable_files_are_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    refused(audio.load, path, "header is damaged")


def test_truncated_mp3_reports_the_frames_it_decoded_not_the_header_estimate(tmp_path):
    full = write(
        tmp_path / "full.mp3", signal(16000, 1, seconds=4.0), 16000, "MP3", "MPEG_LAYER_III"
    )
    path = tmp_path / "cut.mp3"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    wave, info = audio.load(path)

    assert audio.probe(path).frames == 64000  # the header still promises the whole file
    assert info.frames == wave.shape[1] < 40000


def test_mp3_decoder_warnings_reach_the_debug_log_not_the_terminal(tmp_path, capfd, caplog):
    full = write(
        tmp_path / "full.mp3", signal(16000, 1, seconds=4.0), 16000, "MP3", "MPEG_LAYER_III"
    )
    data = full.read_bytes()
    path = tmp_path / "spliced.mp3"
    path.write_bytes(data[: len(data) // 2] + b"junk" * 100 + data[len(data) // 2 :])
    caplog.set_level(logging.DEBUG, logger="guard.audio")

    audio.load(path)
    list(audio.iter_blocks(path, 4000))

    assert capfd.readouterr().err == ""  # libmpg123 printed "Illegal Audio-MPEG-Header" here
    logged = [r.getMessage() for r in caplog.records if r.name == "guard.audio"]
    assert any(str(path) in m and "MPEG-Header" in m for m in logged)


def test_other_stderr_output_while_decoding_is_passed_on(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="guard.audio")
    with decoder_messages("x.mp3"):
        os.write(2, b"Note: Trying to resync...\nserver: another thread's line\n")

    assert capfd.readouterr().err == "server: another thread's line\n"
    assert [r.getMessage() for r in caplog.records] == [
        "x.mp3: decoder says: Note: Trying to resync..."
    ]


@pytest.mark.parametrize(("channels", "subtype"), [(1, "PCM_24"), (6, "PCM_16")])
def test_extensible_wav_from_24_bit_and_multichannel_writers_is_read(tmp_path, channels, subtype):
    path = write(tmp_path / "x.wav", signal(16000, channels), 16000, "WAVEX", subtype)
    samples, info = audio.load(path)
    assert info.format == "WAVEX" and samples.shape == (channels, 16000)


def test_truncated_wav_header_is_refused(tmp_path):
    full = write(tmp_path / "full.wav", signal(16000, 1), 16000, "WAV", "PCM_16")
    path = tmp_path / "cut.wav"
    path.write_bytes(full.read_bytes()[:30])
    refused(audio.load, path, "header is damaged")


def test_size_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.wav"
    path.write_bytes(b"\0" * 2000)  # not audio at all: the size check must refuse it first
    refused(lambda p: audio.load(p, Limits(max_bytes=1000)), path, "2,000 bytes", "1,000")
    refused(audio.load, path, "header is damaged")


def test_duration_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = write(tmp_path / "long.wav", signal(8000, 1, seconds=2.0), 8000, "WAV", "PCM_16")

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded before the duration check")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    refused(lambda p: audio.load(p, Limits(max_seconds=1.5)), path, "2.0 s", "1.5 s")
    refused(lambda p: audio.probe(p, Limits(max_seconds=1.5)), path, "2.0 s")
    assert audio.probe(path, Limits(max_seconds=2.5)).duration == pytest.approx(2.0)


def test_decoded_size_is_bounded_from_the_header_in_whole_file_loads_only(tmp_path, monkeypatch):
    # 0.9 s is inside a 1 s duration limit, but 4 channels at 48 kHz are 172,800 samples,
    # past the 96,000 that a second of 48 kHz stereo holds.
    path = write(tmp_path / "wide.wav", signal(48000, 4, seconds=0.9), 48000, "WAV", "PCM_16")
    tight = Limits(max_seconds=1.0)
    assert sum(block.shape[1] for block in audio.iter_blocks(path, 4096, tight)) == 43200
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded first"))
    refused(lambda p: audio.load(p, tight), path, "48000 Hz with 4 channels", "96,000 samples")


@pytest.mark.parametrize(
    ("fmt", "subtype", "ext"), [("WAV", "PCM_16", ".wav"), ("MP3", "MPEG_LAYER_III", ".mp3")]
)
def test_iter_blocks_covers_the_file_and_matches_load(tmp_path, fmt, subtype, ext):
    path = write(tmp_path / f"long{ext}", signal(16000, 2, seconds=3.0), 16000, fmt, subtype)
    whole, info = audio.load(path)

    blocks = list(audio.iter_blocks(path, 5000))

    assert [b.shape for b in blocks[:-1]] == [(2, 5000)] * (len(blocks) - 1)
    assert 0 < blocks[-1].shape[1] <= 5000
    assert all(b.dtype == torch.float32 for b in blocks)
    torch.testing.assert_close(torch.cat(blocks, dim=1), whole)


def test_iter_blocks_refuses_a_bad_file_before_iteration(tmp_path):
    path = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="does not exist"):
        audio.iter_blocks(path, 1000)
    with pytest.raises(ValueError):
        audio.iter_blocks(path, 0)


def test_opus_at_a_rate_opus_cannot_take_is_refused_not_written_as_vorbis(tmp_path):
    # a .opus file holding Vorbis is a name that lies: Opus-only players reject it
    like = AudioInfo("in.opus", 44100, 1, 44100, "OGG", "OPUS")
    out = tmp_path / "out.opus"

    with pytest.raises(AudioError, match=r"out\.opus: Opus cannot be written at 44100 Hz.*\.ogg"):
        audio.save(out, torch.from_numpy(signal(44100, 1).T), 44100, like=like)

    assert list(tmp_path.iterdir()) == []


def test_ogg_from_an_opus_input_at_another_rate_is_vorbis(tmp_path):
    like = AudioInfo("in.opus", 44100, 1, 44100, "OGG", "OPUS")

    written = audio.save(
        tmp_path / "out.ogg", torch.from_numpy(signal(44100, 1).T), 44100, like=like
    )

    assert (written.format, written.subtype) == ("OGG", "VORBIS")


@pytest.mark.parametrize(("rate", "channels"), [(96000, 1), (44100, 8)])
def test_mp3_that_libsndfile_cannot_encode_is_refused_cleanly(tmp_path, rate, channels):
    out = tmp_path / "out.mp3"
    out.write_bytes(b"keep me")
    like = AudioInfo("in.mp3", rate, channels, rate, "MP3", "MPEG_LAYER_III")
    wave = torch.from_numpy(signal(rate, channels, seconds=0.1).T)

    message = refused(lambda p: audio.save(p, wave, rate, like=like), out, f"{rate} Hz")

    assert "MP3 cannot be written" in message
    assert out.read_bytes() == b"keep me"
    assert sorted(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(("subtype", "atol"), [("PCM_16", 1 / 2**15), ("ULAW", 0.03)])
def test_integer_subtypes_are_clipped_not_wrapped(tmp_path, subtype, atol):
    loud = torch.tensor([[1.5, -1.5, 0.5] * 100])
    like = AudioInfo("x.wav", 8000, 1, 300, "WAV", subtype)
    assert audio.save(tmp_path / "loud.wav", loud, 8000, like=like).subtype == subtype
    back, _ = sf.read(tmp_path / "loud.wav", dtype="float32")
    np.testing.assert_allclose(back[:3], [1.0, -1.0, 0.5], atol=atol)


def test_float_subtype_keeps_samples_beyond_full_scale(tmp_path):
    loud = torch.tensor([[1.5, -1.5, 0.5]])
    like = AudioInfo("x.wav", 8000, 1, 3, "WAV", "FLOAT")
    audio.save(tmp_path / "float.wav", loud, 8000, like=like)
    back, _ = sf.read(tmp_path / "float.wav", dtype="float32")
    np.testing.assert_array_equal(back, [1.5, -1.5, 0.5])


@pytest.mark.parametrize(
    ("name", "fmt", "subtype"),
    [
        ("a.wav", "WAV", "PCM_16"),
        ("a.FLAC", "FLAC", "PCM_16"),
        ("a.ogg", "OGG", "VORBIS"),
        ("a.opus", "OGG", "OPUS"),
        ("a.mp3", "MP3", "MPEG_LAYER_III"),
    ],
)
def test_save_without_like_follows_the_extension(tmp_path, name, fmt, subtype):
    audio.save(tmp_path / name, torch.from_numpy(signal(48000, 1).T), 48000)
    info = audio.probe(tmp_path / name)
    assert (info.format, info.subtype) == (fmt, subtype)


def test_an_explicit_extension_overrides_the_like_format_but_keeps_its_subtype(tmp_path):
    like = AudioInfo("in.wav", 16000, 1, 16000, "WAV", "PCM_24")
    audio.save(tmp_path / "out.flac", torch.from_numpy(signal(16000, 1).T), 16000, like=like)
    info = audio.probe(tmp_path / "out.flac")
    assert (info.format, info.subtype) == ("FLAC", "PCM_24")


def test_a_name_without_extension_uses_like_and_an_unknown_extension_is_refused(tmp_path):
    wave = torch.from_numpy(signal(16000, 1).T)
    like = AudioInfo("in.flac", 16000, 1, 16000, "FLAC", "PCM_24")
    audio.save(tmp_path / "out", wave, 16000, like=like)
    assert audio.probe(tmp_path / "out").format == "FLAC"
    # A FLAC (or WAV) under .aac would be a file whose name lies about what it holds.
    refused(lambda p: audio.save(p, wave, 16000, like=like), tmp_path / "out.aac", ".aac")
    assert not (tmp_path / "out.aac").exists()
    refused(lambda p: audio.save(p, wave, 16000), tmp_path / "out", "no extension")


def test_save_refuses_non_finite_audio_and_a_missing_folder(tmp_path):
    bad = torch.tensor([[0.1, float("nan")]])
    refused(lambda p: audio.save(p, bad, 8000), tmp_path / "nan.wav", "NaN")
    good = torch.zeros(1, 10)
    refused(
        lambda p: audio.save(p, good, 8000), tmp_path / "no" / "such.wav", "could not be written"
    )


def test_resample_changes_length_and_keeps_the_tone():
    rate = 16000
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(rate) / rate).unsqueeze(0)
    same = audio.resample(tone, rate, rate)
    half = audio.resample(tone, rate, 8000)

    assert same is tone
    assert half.shape == (1, 8000)
    spectrum = torch.fft.rfft(half[0]).abs()
    assert int(spectrum.argmax()) == 1000  # 1 Hz per bin for one second of audio


def test_to_mono_averages_channels():
    # (The channels used here were anti-correlated enough to count as cancelling; see the
    # antiphase test below.)
    stereo = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.5, 0.0]])
    torch.testing.assert_close(audio.to_mono(stereo), torch.tensor([[1.0, 0.25, -0.5]]))


def test_iter_audio_paths_walks_folders_in_order_and_keeps_explicit_paths(tmp_path):
    root = tmp_path / "music"
    for rel in ["b.wav", "a/z.MP3", "a/y.flac", "a/notes.txt", "c.opus", "d.ogg", "deep/x/e.oga"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "folder.wav").mkdir()
    explicit = tmp_path / "readme.txt"
    explicit.write_text("not audio")
    missing = tmp_path / "missing.wav"

    found = list(audio.iter_audio_paths([explicit, str(root), missing]))

    expected = ["a/y.flac", "a/z.MP3", "b.wav", "c.opus", "d.ogg", "deep/x/e.oga"]
    assert found == [explicit, *(root / rel for rel in expected), missing]


def test_a_dangling_link_in_a_folder_is_yielded_so_its_problem_is_reported(tmp_path):
    (tmp_path / "good.wav").write_bytes(b"x")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    (tmp_path / "folder.flac").mkdir()  # a folder named like audio is still not a file
    found = list(audio.iter_audio_paths([tmp_path]))
    assert found == [tmp_path / "gone.wav", tmp_path / "good.wav"]
    refused(audio.load, tmp_path / "gone.wav", "does not exist")


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    content = np.random.default_rng(3).bytes(3_000_000)
    path.write_bytes(content)
    assert audio.sha256_file(path) == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize(
    ("fmt", "subtype", "extension"),
    [
        ("WAVEX", "PCM_24", ".wav"),
        ("OGG", "OPUS", ".opus"),
        ("OGG", "VORBIS", ".ogg"),
        ("FLAC", "PCM_16", ".flac"),
        ("MP3", "MPEG_LAYER_III", ".mp3"),
    ],
)
def test_the_extension_names_the_format_the_file_really_has(fmt, subtype, extension):
    info = AudioInfo("upload.bin", 16000, 1, 16000, fmt, subtype)
    assert info.extension == extension


def test_to_mono_reads_the_loudest_channel_when_the_channels_cancel():
    # The mean of a channel and its polarity-flipped copy is digital silence.
    x = torch.sin(torch.arange(1000) / 7.0)
    antiphase = torch.stack([0.9 * x, -x])
    torch.testing.assert_close(audio.to_mono(antiphase), -x[None])
    stereo = torch.stack([x, torch.cos(torch.arange(1000) / 3.0)])
    assert torch.equal(audio.to_mono(stereo), stereo.mean(dim=0, keepdim=True))  # unchanged


def odd_name(folder: Path, name: bytes) -> str:
    """A path whose file name holds bytes that are not UTF-8, as Python sees it on Linux."""
    return os.fsdecode(os.fsencode(folder) + b"/" + name)


def test_a_file_name_that_is_not_utf8_is_read_and_written_like_any_other(tmp_path):
    # soundfile encodes a str path strictly as UTF-8: the name raised UnicodeEncodeError,
    # which no caller expected, before a byte of the file was read.
    source = odd_name(tmp_path, b"bad\xffname.wav")
    sf.write(os.fsencode(source), signal(16000, 2), 16000, subtype="PCM_16")
    info = audio.probe(source)
    samples, loaded = audio.load(source)
    assert (info.frames, info.channels, loaded.path) == (16000, 2, source)
    assert torch.equal(torch.cat(list(audio.iter_blocks(source, 5000)), dim=1), samples)

    target = odd_name(tmp_path, b"marked\xfe.flac")
    written = audio.save(target, samples, 16000, like=loaded)
    assert (written.format, written.subtype) == ("FLAC", "PCM_16")
    assert torch.equal(audio.load(target)[0], samples)


def test_printable_name_escapes_the_bytes_that_are_not_utf8():
    assert audio.printable_name(os.fsdecode(b"nb/bad\xffname.wav")) == "nb/bad\\xffname.wav"
    assert audio.printable_name(Path("nb/caf\u00e9.wav")) == "nb/caf\u00e9.wav"
    assert audio.printable_name("lone\ud800") == "lone\\ud800"
    assert audio.printable_name(os.fsdecode(b"x\xfe")).encode("utf-8") == b"x\\xfe"
