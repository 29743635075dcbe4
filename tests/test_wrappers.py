"""The guarded wrappers: what they release, refuse, label and log.

The generator is espeak-ng (a real offline TTS); taggers and LLMs are plain callables here, so
each test isolates what the wrapper does with the Guard's decision. ``test_adapters.py``
runs the same wrappers on real ``transformers`` models.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_sample

from guard.espeak_tts import EspeakTTS
from guard.guard import Guard, GuardConfig
from guard.wrappers import (
    REFUSAL,
    GuardBlocked,
    GuardedAudioLLM,
    GuardedGenerator,
    GuardedTagger,
)
from policies import verify_log
from watermark.keyed import KeyedBackend
from watermark.keys import read_key, write_key
from watermark.types import WatermarkError

TEXT = "Every output of this generator carries a keyed watermark."
PAYLOAD = "c0ffee42"


@pytest.fixture(scope="module")
def key_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "studio.key"
    write_key(path)
    return path


def make_guard(key_path, tmp_path, **options) -> Guard:
    """A Guard with the studio key, no detector and no public marks (fast), logging to tmp."""
    config = {"keys": (key_path,), "use_detector": False, "public_backends": ()}
    return Guard(GuardConfig(**{**config, "audit_log": tmp_path / "audit.jsonl", **options}))


def write_policy(path, rules: str, default: str = "allow"):
    path.write_text(f"name: test-policy\nversion: 3\ndefault: {default}\nrules:\n{rules}")
    return path


def records(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def generated(key_path, tmp_path_factory):
    """One guarded espeak-ng output, its audit log, and the unguarded output for comparison."""
    log_dir = tmp_path_factory.mktemp("generated")
    guard = make_guard(key_path, log_dir)
    output = GuardedGenerator(EspeakTTS(), guard, payload=PAYLOAD)(TEXT, meta={"request": "r1"})
    return output, EspeakTTS()(TEXT), log_dir / "audit.jsonl"


# -- GuardedGenerator ---------------------------------------------------------------------------


def test_generated_speech_carries_a_keyed_mark_a_fresh_detector_reads(key_path, generated):
    output, (plain, rate), _ = generated
    fresh = KeyedBackend(read_key(key_path))

    found = fresh.detect(output.audio, output.sample_rate)

    assert output.action == "allow" and output.verified
    assert output.sample_rate == rate and output.audio.shape == plain.shape
    assert found.detected and found.payload == PAYLOAD and found.p_value < 1e-9
    assert not fresh.detect(plain, rate).detected  # the mark is the wrapper's doing
    assert output.verification["payload"] == PAYLOAD
    assert 0 < float((output.audio - plain).abs().max()) < 0.2


def test_every_generated_output_is_logged(generated):
    output, _, log = generated

    (record,) = records(log)

    assert verify_log(log).ok
    assert record["decision"] == "allow" and record["matched_rules"] == ["verified-mark"]
    assert record["facts"]["mark_verified"] is True
    assert record["facts"]["meta"] == {"generator": "EspeakTTS", "request": "r1"}
    assert record["facts"]["watermarks"][0]["payload"] == PAYLOAD


def test_silent_output_cannot_be_marked_and_is_blocked(key_path, tmp_path):
    guard = make_guard(key_path, tmp_path)
    silent_tts = GuardedGenerator(EspeakTTS(amplitude=0), guard, payload=PAYLOAD)

    with pytest.raises(GuardBlocked, match="generator-output v1 \\(verification-failed\\)") as err:
        silent_tts(TEXT)

    assert err.value.decision["action"] == "block"
    assert err.value.decision["matched_rules"] == ["verification-failed"]
    assert "too quiet" in json.dumps(err.value.decision["trace"])
    (record,) = records(tmp_path / "audit.jsonl")
    assert record["decision"] == "block" and record["facts"]["mark_verified"] is False


def test_a_policy_that_labels_unverified_output_releases_it_with_the_decision(key_path, tmp_path):
    policy = write_policy(
        tmp_path / "lenient.yaml",
        "  - id: unverified\n    when: mark_verified == false\n    action: label\n"
        '    message: "unmarked output"\n',
    )
    guard = make_guard(key_path, tmp_path, generator_policy=policy)

    output = GuardedGenerator(EspeakTTS(amplitude=0), guard, payload=PAYLOAD)(TEXT)

    assert output.action == "label" and not output.verified
    assert output.decision["matched_rules"] == ["unverified"]
    assert output.decision["policy"] == {"name": "test-policy", "version": 3}
    assert "too quiet" in output.verification["error"]
    assert output.audio.abs().max() == 0  # released as generated, unmarked, and labelled


def test_a_generator_is_refused_at_deployment_when_it_cannot_mark(key_path, tmp_path):
    unkeyed = Guard(GuardConfig(use_detector=False, public_backends=()))
    with pytest.raises(WatermarkError, match="needs a Guard with a watermark key"):
        GuardedGenerator(EspeakTTS(), unkeyed, payload=PAYLOAD)
    guard = make_guard(key_path, tmp_path)
    with pytest.raises(WatermarkError, match="hex digits"):
        GuardedGenerator(EspeakTTS(), guard, payload="not-hex")
    with pytest.raises(WatermarkError, match="no watermark key 'other'"):
        GuardedGenerator(EspeakTTS(), guard, payload=PAYLOAD, key_id="other")


# -- GuardedTagger --------------------------------------------------------------------------


def test_tagger_labels_are_joined_by_the_watermark_found_and_the_decision(
    key_path, tmp_path, generated
):
    output = generated[0]
    seen = []

    def tag(audio, rate):
        seen.append((audio, rate))
        return {"Music": 0.2, "Speech": 0.8}

    tagged = GuardedTagger(tag, make_guard(key_path, tmp_path))(output.audio, output.sample_rate)

    assert torch.equal(seen[0][0], output.audio) and seen[0][1] == output.sample_rate
    assert [(label.label, label.source) for label in tagged.labels] == [
        ("Speech", "model"),
        ("Music", "model"),
        ("audioguard/watermark/keyed/studio", "audioguard"),
        ("audioguard/decision/label", "audioguard"),
    ]
    assert tagged.labels[2].score == pytest.approx(1.0)
    assert tagged.verdict.matched_rules == ["known-ai-watermark"]


def test_unmarked_speech_gets_only_the_decision_label(key_path, tmp_path):
    clip, rate = read_sample("speech/fillets_society_stebet0.flac")

    tagged = GuardedTagger(lambda a, r: [], make_guard(key_path, tmp_path))(clip, rate)

    assert [label.to_dict() for label in tagged.labels] == [
        {"label": "audioguard/decision/allow", "score": 1.0, "source": "audioguard"}
    ]


# -- GuardedAudioLLM --------------------------------------------------------------------------


class Recorder:
    """A stand-in audio LLM that remembers what it was asked."""

    name = "recorder"

    def __init__(self, reply="It says hello.") -> None:
        self.calls = []
        self.reply = reply

    def __call__(self, audio, rate, question):
        self.calls.append((audio, rate, question))
        return [{"generated_text": self.reply}]


def test_answer_about_a_labelled_voice_opens_with_the_disclosure(key_path, tmp_path, generated):
    output = generated[0]
    model = Recorder()
    llm = GuardedAudioLLM(model, make_guard(key_path, tmp_path))

    reply = llm(output.audio, output.sample_rate, "What does it say?")

    assert reply.verdict.decision == "label" and reply.answered and reply.disclosed
    first, rest = reply.text.split("\n\n")
    assert first.startswith("Note: the voice in this recording is likely synthetic (")
    assert reply.verdict.message in first and rest == "It says hello."
    assert model.calls[0][2] == "What does it say?" and model.calls[0][1] == output.sample_rate


def test_answer_about_allowed_audio_is_untouched(key_path, tmp_path):
    clip, rate = read_sample("speech/fillets_society_stebet0.flac")

    reply = GuardedAudioLLM(Recorder(), make_guard(key_path, tmp_path))(clip, rate, "What?")

    assert reply.verdict.decision == "allow"
    assert reply.text == "It says hello." and reply.answered and not reply.disclosed


@pytest.fixture
def banning_guard(key_path, tmp_path):
    policy = write_policy(
        tmp_path / "ban.yaml",
        '  - id: banned-uploader\n    when: meta.uploader == "mallory"\n    action: block\n'
        '    message: "uploads from {meta.uploader} are blocked"\n'
        "  - id: disclosed-ai\n    when: meta.ai_disclosed == true\n    action: allow\n"
        '    message: "the uploader says this is AI audio"\n',
    )
    return make_guard(key_path, tmp_path, policy=policy)


def test_blocked_audio_is_refused_without_calling_the_model(banning_guard):
    clip, rate = read_sample("speech/fillets_society_stebet0.flac")
    model = Recorder()

    reply = GuardedAudioLLM(model, banning_guard)(clip, rate, "What?", meta={"uploader": "mallory"})

    assert model.calls == [] and not reply.answered and not reply.disclosed
    expected = "uploads from mallory are blocked"
    assert reply.text == REFUSAL.format(message=expected, rules="banned-uploader")
    with pytest.raises(GuardBlocked, match="test-policy v3 \\(banned-uploader\\)") as err:
        GuardedAudioLLM(model, banning_guard, on_block="raise")(
            clip, rate, "What?", meta={"uploader": "mallory"}
        )
    assert err.value.decision["action"] == "block" and model.calls == []
    assert err.value.decision["message"] == expected


def test_a_named_rule_asks_for_disclosure_even_when_it_allows(banning_guard):
    clip, rate = read_sample("speech/fillets_society_stebet0.flac")
    meta = {"uploader": "alice", "ai_disclosed": True}

    plain = GuardedAudioLLM(Recorder(), banning_guard)(clip, rate, "What?", meta=meta)
    disclosed = GuardedAudioLLM(
        Recorder(), banning_guard, disclose_rules={"disclosed-ai"}, disclosure="[AI voice: {rules}]"
    )(clip, rate, "What?", meta=meta)

    assert plain.verdict.decision == "allow" and plain.text == "It says hello."
    assert disclosed.disclosed and disclosed.text == "[AI voice: disclosed-ai]\n\nIt says hello."


def test_on_block_must_be_refuse_or_raise(key_path, tmp_path):
    with pytest.raises(ValueError, match="on_block"):
        GuardedAudioLLM(Recorder(), make_guard(key_path, tmp_path), on_block="ignore")
