"""Keys as a scan names them, and the generator policy applied to a scan of marked audio."""

from __future__ import annotations

import pytest
from conftest import read_sample

from guard.guard import Guard, GuardConfig
from watermark.keyed import KeyedBackend
from watermark.keys import read_key, write_key
from watermark.types import WatermarkError


def _guard(*keys, policy="upload-screening") -> Guard:
    return Guard(GuardConfig(policy=policy, keys=keys, use_detector=False, public_backends=()))


def test_two_key_files_with_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_key(tmp_path / "a" / "org.key")
    write_key(tmp_path / "b" / "org.key")

    with pytest.raises(WatermarkError, match=r"a/org\.key and .*b/org\.key .*'org'"):
        _guard(tmp_path / "a" / "org.key", tmp_path / "b" / "org.key")


def test_one_key_file_named_twice_is_one_key(tmp_path, monkeypatch):
    write_key(tmp_path / "org.key")
    monkeypatch.chdir(tmp_path)

    assert _guard(tmp_path / "org.key", tmp_path / "." / "org.key").key_ids == ["org"]


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    key = tmp_path_factory.mktemp("keys") / "studio.key"
    write_key(key)
    audio, rate = read_sample("speech/fillets_society_stebet0.flac")
    return key, KeyedBackend(read_key(key)).embed(audio, rate, "c0ffee42").audio, audio, rate


def test_a_scan_under_the_generator_policy_allows_audio_that_carries_the_keyed_mark(marked):
    key, marked_audio, _, rate = marked

    verdict = _guard(key, policy="generator-output").screen(marked_audio, rate)

    assert verdict.decision == "allow" and verdict.matched_rules == ["verified-mark"]


def test_a_scan_under_the_generator_policy_blocks_unmarked_audio_without_claiming_a_failed_embed(
    marked,
):
    key, _, plain, rate = marked

    verdict = _guard(key, policy="generator-output").screen(plain, rate)

    assert verdict.decision == "block" and verdict.matched_rules == ["no-verified-mark"]
