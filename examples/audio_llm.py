"""An audio LLM deployed so that it discloses synthetic voices and refuses blocked audio.

    python examples/audio_llm.py [--model DIR] [--key KEYFILE]

With ``--model`` a local Qwen2-Audio checkpoint (a directory, or a name already in the
Hugging Face cache) answers through ``GuardedAudioLLM.from_transformers``. No audio LLM ships
offline, so without it a stand-in that only reports what it was given plays the model; the
guard around it is the real one either way.

Three inputs: speech from the guarded espeak-ng generator (it carries the keyed mark, so
upload-screening labels it and the answer opens with a disclosure), a bundled human
recording (allowed, answered as is), and the same recording from an uploader the example
policy blocks (refused; the model is never called).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from guard.audio import load
from guard.espeak_tts import EspeakTTS
from guard.guard import Guard, GuardConfig
from guard.wrappers import GuardedAudioLLM, GuardedGenerator
from watermark.keys import write_key

SAMPLE = (
    Path(__file__).resolve().parent.parent / "samples" / "speech" / "warzone_tutorial_tut73.flac"
)
POLICY = """\
name: example-llm-input
version: 1
default: allow
rules:
  - id: banned-uploader
    when: has(meta.uploader) && meta.uploader == "mallory"
    action: block
    message: "audio from {meta.uploader} is not accepted"
  - id: known-ai-watermark
    when: watermarks.exists(w, w.detected)
    action: label
    message: "it carries an AI watermark"
"""


def stand_in(audio: torch.Tensor, sample_rate: int, question: str) -> str:
    """Plays the model when none is given: says what it received, nothing more."""
    return f"(stand-in model) I got {audio.shape[-1] / sample_rate:.1f} s of audio and: {question}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a local Qwen2-Audio checkpoint")
    parser.add_argument("--key", default="example.key", help="keyed-watermark key (created)")
    args = parser.parse_args()
    if not Path(args.key).exists():
        write_key(args.key)

    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        guard = Guard(GuardConfig(policy=policy, keys=(Path(args.key),), use_detector=False))
    if args.model:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            args.model, local_files_only=True, use_safetensors=True
        )
        llm = GuardedAudioLLM.from_transformers(model, processor, guard)
    else:
        llm = GuardedAudioLLM(stand_in, guard)

    voice = GuardedGenerator(EspeakTTS(), guard, payload="2026112a")
    generated = voice("This sentence was spoken by a machine and carries its mark.")
    human, info = load(SAMPLE)
    inputs = [
        ("generated speech", generated.audio, generated.sample_rate, None),
        ("human speech", human, info.sample_rate, None),
        ("human speech from mallory", human, info.sample_rate, {"uploader": "mallory"}),
    ]
    for name, audio, rate, meta in inputs:
        reply = llm(audio, rate, "What is said in this recording?", meta=meta)
        print(f"--- {name}: {reply.verdict.decision}\n{reply.text}\n")


if __name__ == "__main__":
    main()
