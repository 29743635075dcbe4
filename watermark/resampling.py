"""torchaudio's resampling, block by block, so an hour of audio does not need gigabytes.

``torchaudio.functional.resample`` runs one strided convolution over the whole signal and
holds about six copies of it meanwhile: 4.4 GB for an hour at 48 kHz. Here the signal is cut
into blocks that start on the filter's phase grid and carry enough context on both sides
that every output sample sees exactly the inputs it sees in one pass: the result is the same
to the bit. ``detectors.frontend`` keeps its own copy of this function, because components
share no code (see DESIGN.md).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.signal
import torch
import torchaudio.functional as AF

BLOCK_SECONDS = 30.0
MAX_BANK = 1_000_000
"""torchaudio builds one filter per output phase, ``new`` filters of about ``orig`` taps for
the reduced ratio ``orig:new``. Common rate pairs need a few hundred thousand taps at most
(11,025 Hz to 16 kHz: 282,240); an odd rate such as 44,099 Hz to 16 kHz would need 700
million, gigabytes for a 3-second file. Above this many, scipy's polyphase resampler runs
instead: the same filter (width, roll-off, window), applied without building the bank."""


def resample(
    x: torch.Tensor, src: int, dst: int, block_seconds: float = BLOCK_SECONDS, **filter_args
) -> torch.Tensor:
    """Resample the last axis from ``src`` to ``dst`` Hz, as torchaudio does, in blocks.

    ``filter_args`` are torchaudio's (``lowpass_filter_width``, ``rolloff``, ...).
    """
    if src == dst:
        return x
    g = math.gcd(src, dst)
    orig, new = src // g, dst // g
    n = x.shape[-1]
    step = max(1, round(block_seconds * src) // orig) * orig
    if n <= 2 * step:
        return one_pass(x, src, dst, **filter_args)
    reach = filter_args.get("lowpass_filter_width", 6) / filter_args.get("rolloff", 0.99)
    width = math.ceil(reach * orig / min(orig, new))  # torchaudio's filter reach
    context = orig * (width // orig + 2)
    total = int(torch.ceil(torch.as_tensor(new * n / orig)))  # torchaudio's length, to the sample
    parts = []
    for start in range(0, n, step):
        lo, hi = max(0, start - context), start + step + context
        piece = x[..., lo:hi]
        if hi > n:  # zeros past the end, as the one pass pads them
            piece = torch.nn.functional.pad(piece, (0, hi - n))
        first = (start - lo) // orig * new
        count = min(step // orig * new, total - start // orig * new)
        parts.append(one_pass(piece, src, dst, **filter_args)[..., first : first + count])
    return torch.cat(parts, dim=-1)


def one_pass(x: torch.Tensor, src: int, dst: int, **filter_args) -> torch.Tensor:
    """torchaudio's resampling, or scipy's polyphase one with torchaudio's filter (the same
    width, roll-off and window) where torchaudio's filter bank would pass ``MAX_BANK`` taps."""
    g = math.gcd(src, dst)
    orig, new = src // g, dst // g
    if orig * new <= MAX_BANK:
        return AF.resample(x, src, dst, **filter_args)
    taps = polyphase_filter(orig, new, **filter_args)
    y = scipy.signal.resample_poly(x.detach().cpu().numpy(), new, orig, axis=-1, window=taps)
    total = math.ceil(new * x.shape[-1] / orig)  # torchaudio's length
    out = torch.from_numpy(np.ascontiguousarray(y[..., :total])).to(x.dtype)
    return torch.nn.functional.pad(out, (0, total - out.shape[-1]))


@functools.lru_cache(maxsize=8)
def polyphase_filter(
    orig: int,
    new: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    resampling_method: str = "sinc_interp_hann",
    beta: float | None = None,
) -> np.ndarray:
    """torchaudio's low-pass as taps at ``new`` times the input rate, for ``resample_poly``:
    ``lowpass_filter_width`` zero crossings each side at ``rolloff`` of the lower Nyquist."""
    step = max(orig, new)
    if resampling_method == "sinc_interp_kaiser":
        window: str | tuple = ("kaiser", 14.769656459379492 if beta is None else beta)
    else:
        window = "hann"
    # resample_poly scales the taps by ``new`` itself, as it does its own filter's
    return scipy.signal.firwin(2 * lowpass_filter_width * step + 1, rolloff / step, window=window)
