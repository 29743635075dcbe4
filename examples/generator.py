"""A text-to-speech model deployed so that every output carries a verified keyed watermark.

    python examples/generator.py "Hello from a guarded voice." out.wav [KEYFILE]

The model is espeak-ng (offline). The key file is created if it does not exist. The second
half shows the generator-output policy at work: a model that returns silence cannot carry a
mark, so its output is blocked instead of released unmarked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from guard.audio import save
from guard.espeak_tts import EspeakTTS
from guard.guard import Guard, GuardConfig
from guard.wrappers import GuardBlocked, GuardedGenerator
from watermark.keys import write_key


def main(text: str, out: str, key: str = "example.key") -> None:
    if not Path(key).exists():
        write_key(key)
    guard = Guard(GuardConfig(keys=(Path(key),), use_detector=False, public_backends=()))
    tts = GuardedGenerator(EspeakTTS(), guard, payload="2026112a")  # the one-line deployment

    output = tts(text)
    save(out, output.audio, output.sample_rate)
    print(f"{out}: {output.action} ({output.decision['message']})")

    try:
        GuardedGenerator(EspeakTTS(amplitude=0), guard, payload="2026112a")(text)
    except GuardBlocked as blocked:
        print(f"silent model: {blocked}")


if __name__ == "__main__":
    main(*sys.argv[1:])
