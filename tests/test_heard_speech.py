"""Only files with speech enter the corpus as real speech: effects and music are measured out.

fillets-ng-data's English folder names growls, ringing phones and music like dialogue; before
this check they became "real speech" test clips that the detector's gate could not judge.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detectors.corpus import heard_speech
from detectors.corpus.heard_speech import CACHE_NAME, MIN_HEARD_SPEECH_S, speech_files
from detectors.corpus.sources import discover_speakers

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
LEVEL = "fillets-ng-data/usr/share/games/fillets-ng/sound/society/en"


def _game_package(root: Path) -> dict[str, Path]:
    """A Fish Fillets-like folder: one voice line, an alarm clock, music and an empty file,
    all under the character pattern (level-character-name.ogg) that marks dialogue."""
    folder = root / LEVEL
    folder.mkdir(parents=True)
    files = {
        "speech": SAMPLES / "speech" / "fillets_society_stebet0.flac",
        "alarm": SAMPLES / "sfx" / "freedesktop_alarm_clock.flac",
        "music": SAMPLES / "music" / "drascula_track6.flac",
    }
    out = {}
    for name, source in files.items():
        data, rate = sf.read(source, dtype="float32", always_2d=True)
        out[name] = folder / f"mik-x-{name}.ogg"
        sf.write(out[name], data[: rate * 6], rate, format="OGG", subtype="VORBIS")
    out["empty"] = folder / "mik-x-empty.ogg"
    sf.write(out["empty"], np.zeros((0, 1), np.float32), 22_050, format="OGG", subtype="VORBIS")
    return out


def test_effects_music_and_empty_files_are_not_real_speech(tmp_path):
    files = _game_package(tmp_path)
    speakers = discover_speakers(tmp_path, workers=2)
    used = {r.path for s in speakers for r in s.recordings}
    assert used == {files["speech"]}
    cached = json.loads((tmp_path / CACHE_NAME).read_text())
    heard = {Path(k.split(":")[0]).stem: v for k, v in cached.items()}
    assert heard["mik-x-speech"] >= 1.0
    assert heard["mik-x-alarm"] < MIN_HEARD_SPEECH_S
    assert heard["mik-x-music"] < MIN_HEARD_SPEECH_S
    assert heard["mik-x-empty"] == 0.0


def test_measured_seconds_are_reused_and_a_changed_file_is_measured_again(tmp_path):
    files = _game_package(tmp_path)
    cache = tmp_path / "heard.json"
    paths = sorted(files.values())
    assert speech_files(paths, cache, workers=1) == {files["speech"]}
    measured = json.loads(cache.read_text())
    alarm = next(k for k in measured if "alarm" in k)
    cache.write_text(json.dumps({**measured, alarm: 9.0}))  # a cached answer is not re-measured
    assert speech_files(paths, cache, workers=1) == {files["speech"], files["alarm"]}
    cache.write_text(json.dumps(measured))
    shutil.copy(files["speech"], files["alarm"])  # new content and size: measured afresh
    assert speech_files(paths, cache, workers=1) == {files["speech"], files["alarm"]}
    assert len(json.loads(cache.read_text())) == len(paths) + 1


def test_a_moved_cache_is_still_used(tmp_path, monkeypatch):
    files = _game_package(tmp_path / "here")
    speech_files(sorted(files.values()), tmp_path / "here" / CACHE_NAME, workers=1)
    shutil.copytree(tmp_path / "here", tmp_path / "there")  # copy2 keeps the files' times
    moved = sorted((tmp_path / "there" / LEVEL).iterdir())

    def measure(path: Path) -> float:
        raise AssertionError(f"{path} was measured again")

    monkeypatch.setattr(heard_speech, "heard_seconds", measure)
    kept = speech_files(moved, tmp_path / "there" / CACHE_NAME, workers=1)
    assert kept == {tmp_path / "there" / LEVEL / "mik-x-speech.ogg"}


def test_a_corrupt_file_stops_the_build_instead_of_passing_for_silence(tmp_path):
    broken = tmp_path / "lev-x-broken.ogg"
    broken.write_bytes(b"OggS" + bytes(200))
    with pytest.raises(RuntimeError, match="lev-x-broken"):
        speech_files([broken], tmp_path / CACHE_NAME, workers=1)
    assert not (tmp_path / CACHE_NAME).exists()
