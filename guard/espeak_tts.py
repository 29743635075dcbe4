"""A real, offline text-to-speech generator on espeak-ng, for examples and tests of the wrappers.

espeak-ng is a formant synthesiser, so its voice is unmistakably synthetic; that is what a
generator wrapper should be shown on. It runs as a subprocess (text on stdin, so text that
starts with ``-`` is never read as an option) and its WAV comes back on stdout; nothing is
written to disk and nothing is downloaded.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import soundfile as sf
import torch


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed; the message says which and what to do."""


@dataclass(frozen=True)
class EspeakTTS:
    """``tts(text) -> (waveform (1, samples) float32, sample_rate)``; espeak-ng speaks at 22050 Hz.

    ``amplitude`` 0 makes espeak-ng emit silence of the right length: the failure a generator
    guard must catch (nothing in it can carry a watermark).
    """

    voice: str = "en"
    words_per_minute: int = 175
    pitch: int = 50
    amplitude: int = 100
    executable: str = "espeak-ng"
    timeout_s: float = 60.0

    def __call__(self, text: str) -> tuple[torch.Tensor, int]:
        if not text.strip():
            raise EspeakError("there is no text to speak")
        program = shutil.which(self.executable)
        if program is None:
            raise EspeakError(
                f"{self.executable} is not installed; install it with `apt-get install espeak-ng`"
            )
        command = [
            program,
            "--stdout",
            "--stdin",
            "-b",
            "1",  # the text is UTF-8
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
            "-p",
            str(self.pitch),
            "-a",
            str(self.amplitude),
        ]
        try:
            done = subprocess.run(
                command, input=text.encode(), capture_output=True, timeout=self.timeout_s
            )
        except subprocess.TimeoutExpired:
            raise EspeakError(f"espeak-ng did not finish within {self.timeout_s:g} s") from None
        if done.returncode != 0 or not done.stdout:
            problem = done.stderr.decode(errors="replace").strip() or "no audio was produced"
            raise EspeakError(f"espeak-ng failed with voice {self.voice!r}: {problem}")
        data, rate = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), int(rate)
