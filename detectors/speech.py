"""Where a recording holds speech, so that the synthetic-*voice* detector judges only voices.

A detector of synthetic speech has nothing to say about music or a door slam, and a score on
them is noise that a policy would act on. The gate is Silero VAD (MIT), whose weights ship as
safetensors inside the ``silero-vad`` wheel; the small network is rebuilt here in torch from
its published structure, so no TorchScript or ONNX runtime is loaded.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from detectors.types import DetectorError

CHUNK = 512  # 32 ms at 16 kHz: the step Silero VAD was trained on
CONTEXT = 64  # samples of the previous chunk each chunk sees
_CELL_TO_SEQUENCE = {
    f"lstm_cell.{name}": f"lstm.{name}_l0"
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
}


class SileroVAD(nn.Module):
    """Silero VAD v5 at 16 kHz: a learned STFT, four convolutions, then an LSTM over time.

    Silero steps an ``LSTMCell`` chunk by chunk; an ``nn.LSTM`` over the whole sequence is the
    same arithmetic (same gate order) at a fraction of the cost, so the weights are renamed
    on loading (:data:`_CELL_TO_SEQUENCE`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @torch.inference_mode()
    def forward(self, mono_16k: torch.Tensor) -> torch.Tensor:
        """Speech probability of every 32 ms chunk of a 16 kHz waveform."""
        padded = nn.functional.pad(mono_16k, (CONTEXT, (-mono_16k.numel()) % CHUNK))
        count = (padded.numel() - CONTEXT) // CHUNK
        if count == 0:
            return torch.zeros(0)
        chunks = padded.unfold(0, CHUNK + CONTEXT, CHUNK)[:count]
        x = nn.functional.pad(chunks.unsqueeze(1), (0, 64), mode="reflect")
        x = self.stft_conv(x)
        x = (x[:, :129].pow(2) + x[:, 129:].pow(2)).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x).relu()
        hidden, _ = self.lstm(x.squeeze(-1))  # one sequence, run by torch, not a Python loop
        return self.final_conv(hidden.relu().unsqueeze(-1)).sigmoid().squeeze(-1).squeeze(-1)


@cache
def speech_model() -> SileroVAD:
    """The VAD with the weights from the ``silero-vad`` wheel, loaded once per process.

    The file is found without importing the package: ``import silero_vad`` calls
    ``torch.set_num_threads(1)``, which would quietly make every later torch op in the
    process (training, a server's inference pool) single-threaded.
    """
    spec = importlib.util.find_spec("silero_vad")
    try:
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("the silero_vad package is not installed")
        folder = Path(next(iter(spec.submodule_search_locations)))
        state = load_file(str(folder / "data" / "silero_vad_16k.safetensors"))
    except (FileNotFoundError, OSError) as exc:
        raise DetectorError(
            f"the speech gate needs the silero-vad package (pip install silero-vad): {exc}"
        ) from exc
    model = SileroVAD()
    model.load_state_dict({_CELL_TO_SEQUENCE.get(k, k): v for k, v in state.items()})
    return model.eval()


def chunk_span(start_s: float, end_s: float) -> slice:
    """The 32 ms chunks between two times (at least one)."""
    first, last = int(start_s * 16000 // CHUNK), int(end_s * 16000 // CHUNK)
    return slice(first, max(first + 1, last))


def speech_fraction(chunk_probabilities: torch.Tensor, start_s: float, end_s: float) -> float:
    """Share of the 32 ms chunks between two times that the VAD calls speech (p >= 0.5)."""
    window = chunk_probabilities[chunk_span(start_s, end_s)]
    return float((window >= 0.5).float().mean()) if window.numel() else 0.0


def speech_seconds(chunk_probabilities: torch.Tensor) -> float:
    """Seconds of the chunks that the VAD calls speech (p >= 0.5)."""
    return float((chunk_probabilities >= 0.5).sum()) * CHUNK / 16000
