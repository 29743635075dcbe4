"""The watermark commands end to end: files in, files and JSON lines out, exit codes."""

from __future__ import annotations

import gc
import json
import stat
import weakref

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from click.testing import CliRunner

from guard import cli_watermark
from guard.cli import cli
from watermark.keyed import MAX_EXTRA_DB
from watermark.keyed_dsp import KeyedParams


def embed_json(run, source, target, key, payload: str) -> dict:
    """Run ``watermark embed --json`` and return its report, failing on a non-zero exit."""
    out = run(
        "watermark",
        "embed",
        str(source),
        str(target),
        "--key",
        str(key),
        "--payload",
        payload,
        "--json",
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


@pytest.fixture()
def key(tmp_path, run):
    path = tmp_path / "org.key"
    assert run("watermark", "keygen", str(path)).exit_code == 0
    return path


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path, run, key):
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().split()[-1]) == 64
    before = key.read_text()
    result = CliRunner().invoke(cli, ["watermark", "keygen", str(key)])
    assert result.exit_code != 0
    assert key.read_text() == before


def test_embed_then_detect_json(tmp_path, run, key, samples_dir):
    source = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    target = tmp_path / "marked.flac"
    report = embed_json(run, source, target, key, "c0ffee01")
    assert report["verification"]["payload"] == "c0ffee01"
    assert sf.info(target).samplerate == sf.info(source).samplerate
    assert sf.info(target).frames == sf.info(source).frames
    assert sf.info(target).subtype == sf.info(source).subtype

    found = run("watermark", "detect", str(target), str(source), "--key", str(key), "--json")
    lines = [json.loads(line) for line in found.output.splitlines()]
    assert found.exit_code == 0
    assert [line["detected"] for line in lines] == [True, False]
    assert lines[0]["payload"] == "c0ffee01"
    assert lines[0]["p_value"] < 1e-6
    assert lines[0]["segments"][0]["start"] < 0.5


def test_an_odd_sample_rate_round_trips_in_bounded_memory(tmp_path, run, key, samples_dir):
    # 44,099 Hz shares no factor with the working rates: torchaudio's resampler built a filter
    # bank of gigabytes for it, and the out-of-memory killer ended the command.
    data, rate = sf.read(samples_dir / "speech" / "warzone_tutorial_tut73.flac", dtype="float32")
    odd = tmp_path / "odd.wav"
    sf.write(
        odd, torchaudio.functional.resample(torch.from_numpy(data), rate, 44099).numpy(), 44099
    )
    target = tmp_path / "marked.wav"

    report = embed_json(run, odd, target, key, "c0ffee01")

    assert report["verification"]["payload"] == "c0ffee01"
    assert sf.info(target).samplerate == 44099
    out = run("watermark", "detect", str(target), "--key", str(key), "--json")
    assert json.loads(out.output)["payload"] == "c0ffee01"


def test_detect_reports_bad_files_and_finishes_the_others(tmp_path, run, key, samples_dir):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    good = samples_dir / "music" / "drascula_track6.flac"
    result = CliRunner().invoke(
        cli, ["watermark", "detect", str(broken), str(good), "--key", str(key), "--json"]
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["path"] == str(broken) and "broken.wav" in lines[0]["error"]
    assert "Traceback" not in result.output
    assert lines[1]["detected"] is False


def test_long_files_stream_in_blocks(tmp_path, run, key, samples_dir, monkeypatch):
    monkeypatch.setattr(cli_watermark, "STREAM_SECONDS", 30)
    data, rate = sf.read(samples_dir / "music" / "pathological_background.flac", dtype="float32")
    long = np.tile(data, (int(np.ceil(130 * rate / len(data))),) + (1,) * (data.ndim - 1))
    source = tmp_path / "long.wav"
    sf.write(source, long[: 130 * rate], rate, subtype="PCM_16")
    target = tmp_path / "long.marked.wav"
    report = embed_json(run, source, target, key, "1234abcd")
    assert report["marked_seconds"] > 120
    # Each 60 s chunk is marked as strongly as its weakest 8 s window needs: up to
    # MAX_EXTRA_DB above the base strength on this fragile music, never more.
    assert KeyedParams().band_snr_db - MAX_EXTRA_DB - 1.0 < report["snr_db"] < 40
    assert sf.info(target).frames == 130 * rate
    marked, _ = sf.read(target, dtype="float32")
    tail = tmp_path / "tail.wav"
    sf.write(tail, marked[100 * rate :], rate)  # crosses the 120 s chunk boundary
    found = run("watermark", "detect", str(tail), "--key", str(key), "--json")
    assert json.loads(found.output)["payload"] == "1234abcd"


def _silent_intro_then_noise(tmp_path, rate: int = 8000):
    """Two and a half minutes of digital silence (a podcast's intro), then a minute of sound."""
    noise = np.random.default_rng(1).standard_normal(60 * rate).astype("float32")
    source = tmp_path / "intro.wav"
    sf.write(source, np.concatenate([np.zeros(150 * rate, "float32"), 0.1 * noise]), rate)
    return source


def test_a_streamed_embed_verifies_where_the_mark_is_not_only_the_first_minutes(
    tmp_path, run, key, monkeypatch
):
    # verification read the first 120 s, all silence here, and failed a strongly marked file
    monkeypatch.setattr(cli_watermark, "STREAM_SECONDS", 30)
    target = tmp_path / "intro.marked.wav"

    report = embed_json(run, _silent_intro_then_noise(tmp_path), target, key, "1234abcd")

    assert report["verification"]["detected"] and report["verification"]["payload"] == "1234abcd"
    assert 55 < report["marked_seconds"] <= 60.05  # the minute of sound, and a frame at its edge


def test_a_streamed_embed_that_does_not_verify_deletes_its_target(tmp_path, key, monkeypatch):
    monkeypatch.setattr(cli_watermark, "STREAM_SECONDS", 30)

    def fails(*args):
        raise cli_watermark.WatermarkError("the mark did not read back after embedding")

    monkeypatch.setattr(cli_watermark.KeyedBackend, "verify", fails)
    target = tmp_path / "intro.marked.wav"
    source = _silent_intro_then_noise(tmp_path)
    result = CliRunner().invoke(
        cli, ["watermark", "embed", str(source), str(target), "--key", str(key), "--payload", "1"]
    )

    assert result.exit_code == 1 and not target.exists()
    assert f"{target}: the mark did not read back" in result.output
    assert "120-240 s" in result.output and "so it was deleted" in result.output


def test_streaming_embed_holds_a_few_blocks_not_the_whole_file(tmp_path, run, key, monkeypatch):
    # itertools.tee keeps its items in links of 57 and frees a link only when every reader
    # has passed all of it: pairing input with output blocks through tee held up to 57
    # one-minute blocks, an hour of 48 kHz stereo growing embed's memory by 1.3 GB.
    monkeypatch.setattr(cli_watermark, "STREAM_SECONDS", 30)
    rate, minutes = 8000, 12
    noise = np.random.default_rng(0).standard_normal(minutes * 60 * rate).astype("float32")
    source = tmp_path / "long.wav"
    sf.write(source, 0.1 * noise, rate, subtype="PCM_16")
    live: weakref.WeakSet = weakref.WeakSet()
    most = [0]
    real_iter_blocks = cli_watermark.audio_io.iter_blocks

    def tracked(path, frames, *args):
        for block in real_iter_blocks(path, frames, *args):
            gc.collect()
            most[0] = max(most[0], len(live))
            live.add(block)
            yield block

    monkeypatch.setattr(cli_watermark.audio_io, "iter_blocks", tracked)
    report = embed_json(run, source, tmp_path / "long.marked.wav", key, "1234abcd")
    assert report["duration"] == minutes * 60
    assert most[0] <= 3


def test_a_lossy_target_is_verified_as_written_not_as_it_was_in_memory(
    tmp_path, run, key, samples_dir
):
    source = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    target = tmp_path / "marked.mp3"
    report = embed_json(run, source, target, key, "c0ffee01")
    found = json.loads(run("watermark", "detect", str(target), "--key", str(key), "--json").output)
    assert report["format"] == "MP3"
    assert report["verification"]["p_value"] == found["p_value"]
    assert report["verification"]["payload"] == found["payload"] == "c0ffee01"


def test_a_target_whose_mark_does_not_read_back_is_deleted(tmp_path, key, samples_dir, monkeypatch):
    from watermark.keyed import KeyedBackend
    from watermark.types import Detection

    calls = []
    real_detect = KeyedBackend.detect

    def detect_then_lose_it(self, audio, rate):  # in memory it reads; from disk it does not
        calls.append(rate)
        return real_detect(self, audio, rate) if len(calls) == 1 else Detection("keyed", False, 0.5)

    monkeypatch.setattr(KeyedBackend, "detect", detect_then_lose_it)
    source = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    target = tmp_path / "marked.ogg"
    args = ["watermark", "embed", str(source), str(target), "--key", str(key), "--payload", "1"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 1 and len(calls) == 2
    line = json.loads(result.stdout)
    assert line["path"] == str(source)
    assert line["error"].startswith(f"{target}: the mark did not read back from the OGG/")
    assert not target.exists()


@pytest.mark.parametrize(
    ("backend", "payload", "words"),
    [("keyed", "1", "too quiet to carry a mark"), ("perth", "ab", "carries no payload")],
)
def test_embed_failures_name_the_file_and_stay_json(tmp_path, key, backend, payload, words):
    source = tmp_path / "silence.wav"
    sf.write(source, np.zeros(16000 * 3, np.float32), 16000)
    target = tmp_path / "out.wav"
    args = [str(source), str(target), "--backend", backend, "--payload", payload]
    args += ["--key", str(key)] if backend == "keyed" else []
    text = CliRunner().invoke(cli, ["watermark", "embed", *args])
    assert text.exit_code == 1 and "Traceback" not in text.output
    assert text.stderr.startswith(f"error: {source}: ") and words in text.stderr
    as_json = CliRunner().invoke(cli, ["watermark", "embed", *args, "--json"])
    line = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and line["path"] == str(source) and words in line["error"]
    assert not target.exists()


@pytest.mark.parametrize("command", [["watermark", "detect"], ["detect"]])
def test_an_empty_folder_is_an_error_not_a_silent_pass(tmp_path, key, command, samples_dir):
    # Named beside a file that does have audio, the empty folder went unmentioned, exit 0.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    sample = samples_dir / "speech" / "warzone_tutorial_tut73.flac"
    extra = ["--key", str(key)] if command[0] == "watermark" else []
    alone = CliRunner().invoke(cli, [*command, str(tmp_path / "empty"), *extra])
    beside = CliRunner().invoke(cli, [*command, str(tmp_path / "empty"), str(sample), *extra])
    for result in (alone, beside):
        assert result.exit_code == 1
        assert f"{tmp_path / 'empty'}: is a folder with no WAV, FLAC, OGG or MP3" in result.output
    assert str(sample) in beside.output


def test_keyed_needs_a_key(run, samples_dir):
    result = CliRunner().invoke(
        cli, ["watermark", "detect", str(samples_dir / "speech")], catch_exceptions=True
    )
    assert result.exit_code != 0
    assert "--key KEYFILE" in str(result.exception)


def _speechy(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    """A loud voice-like tone (as the reviewer's clips): a gliding 150 Hz buzz, 3 Hz bursts."""
    t = np.arange(int(rate * seconds)) / rate
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    glide = 150 + 50 * np.sin(2 * np.pi * 0.5 * t)
    noise = 0.02 * np.random.default_rng(0).standard_normal(len(t))
    x = (0.3 * envelope * np.sin(2 * np.pi * glide * t) + noise).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def test_a_key_option_naming_audio_says_it_is_not_a_key(tmp_path):
    # The file can be read; it is not a key. It was called "cannot read key file".
    source = tmp_path / "in.wav"
    sf.write(source, _speechy(8000, 3), 8000)
    args = ["watermark", "embed", str(source), str(tmp_path / "o.wav"), "--payload", "1"]
    result = CliRunner().invoke(cli, [*args, "--key", str(source)])
    assert result.exit_code != 0
    assert "not an audioguard key" in str(result.exception)
    assert "cannot read" not in str(result.exception)


def test_a_missing_key_under_json_is_one_json_line_for_the_input(tmp_path):
    source = tmp_path / "in.wav"
    sf.write(source, _speechy(8000, 3), 8000)
    missing = tmp_path / "nokey"
    args = [str(source), str(tmp_path / "o.wav"), "--key", str(missing), "--payload", "1"]
    result = CliRunner().invoke(cli, ["watermark", "embed", *args, "--json"])
    assert result.exit_code == 1
    line = json.loads(result.stdout)
    assert line == {"path": str(source), "error": f"{missing}: key file not found"}
    assert not (tmp_path / "o.wav").exists()


def test_a_missing_key_under_json_is_one_json_line_per_input_of_detect(tmp_path):
    # detect --json printed one plain sentence for the whole command instead.
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    for source in (first, second):
        sf.write(source, _speechy(8000, 3), 8000)
    missing = tmp_path / "nokey"
    args = [str(first), str(second), "--key", str(missing), "--json"]
    result = CliRunner().invoke(cli, ["watermark", "detect", *args])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    error = f"{missing}: key file not found"
    assert lines == [{"path": str(p), "error": error} for p in (first, second)]
    plain = CliRunner().invoke(cli, ["watermark", "detect", str(first), "--key", str(missing)])
    assert plain.exit_code == 1 and str(plain.exception) == error  # guard.cli.main prints it


def test_keyed_embed_into_a_loud_clip_too_short_says_so_and_the_minimum(tmp_path, run, key):
    # 2 s of loud audio: all of it could carry the mark, but the mark's pattern lasts 2.048 s.
    # It was blamed on "too little or too quiet".
    source = tmp_path / "short.wav"
    sf.write(source, _speechy(16000, 2.0, channels=2), 16000)
    args = [str(source), str(tmp_path / "o.wav"), "--key", str(key), "--payload", "1", "--json"]
    result = CliRunner().invoke(cli, ["watermark", "embed", *args])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error.startswith(f"{source}: ")
    assert "too short" in error and "at least 2.048 s" in error and "2 s long" in error
    assert "too quiet" not in error
    just_enough = tmp_path / "enough.wav"
    sf.write(just_enough, _speechy(16000, 2.05, channels=2), 16000)
    assert embed_json(run, just_enough, tmp_path / "e.wav", key, "1")["verification"]["detected"]


def test_marked_seconds_never_exceed_the_duration(tmp_path, run, key):
    source = tmp_path / "three.wav"
    sf.write(source, _speechy(8000, 3.0), 8000)
    report = embed_json(run, source, tmp_path / "marked.wav", key, "1")
    assert report["duration"] == 3.0
    assert 2.5 < report["marked_seconds"] <= report["duration"]  # was 3.01


def test_keygen_refuses_an_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["watermark", "keygen", ""])
    assert result.exit_code != 0
    assert "the key file name is empty" in str(result.exception)
    assert "already exists" not in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_embed_help_states_one_payload_rule_for_both_backends(run):
    text = " ".join(run("watermark", "embed", "--help").output.split())
    assert "required by keyed (1 to 8 hex digits" in text and "audioseal (1 to 4," in text
    assert "left-padded with zeros" in text
