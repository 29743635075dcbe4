"""The keyed watermark backend: embed and blind detection with a secret 256-bit key.

The signal processing lives in :mod:`watermark.keyed_dsp`; this module handles rates,
channels, long inputs (processed in chunks so memory stays bounded), p-values, payload
decoding and segments.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional as AF
from scipy.special import log_ndtr

from watermark import coding
from watermark import keyed_dsp as dsp
from watermark.types import DEFAULT_P_THRESHOLD, Detection, EmbedResult, Segment, WatermarkError
from watermark.types import snr_db as measure_snr

MIN_RATE = 8000
EMBED_CHUNK_SECONDS = 60  # a multiple of 2 s keeps chunks on the frame grid
EMBED_CONTEXT_SECONDS = 2
DETECT_CHUNK_SECONDS = 8.0
LOCAL_WINDOW_SECONDS = 1.0
LOCAL_THRESHOLD = 3.0
MIN_SEGMENT_SECONDS = 0.5
REINFORCE_ROUNDS = 3
REINFORCE_TARGET = 2.0  # margin, in noise units, that every coded bit should reach
COARSE_STEPS = 3  # the coarse search tries every third stretch of the fine grid


def _resample(x: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    return x if src == dst else AF.resample(x, src, dst)


def _fit(x: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last axis to ``length`` (resampling rounds lengths)."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def _tail_p(z: float, tests: int) -> float:
    """P(max of ``tests`` standard normals ≥ z), bounded by the union bound."""
    return min(1.0, tests * math.exp(float(log_ndtr(-z))))


class KeyedBackend:
    """Spread-spectrum mark in the log-spectrum, keyed by a 256-bit secret."""

    name = "keyed"

    def __init__(
        self,
        key: bytes,
        params: dsp.KeyedParams | None = None,
        threshold: float = DEFAULT_P_THRESHOLD,
    ) -> None:
        self.params = params or dsp.KeyedParams()
        self.threshold = threshold
        self._pattern = dsp.derive_pattern(key, self.params)
        self._spectra = dsp.SyncSpectra.of(self._pattern)
        self._search = dsp.hypotheses(self.params)
        self._coarse = [h for h in self._search if _on_coarse_grid(h, self.params)]

    # -- embedding -------------------------------------------------------------------------

    def embed(self, audio: torch.Tensor, sample_rate: int, payload: str | None) -> EmbedResult:
        if sample_rate < MIN_RATE:
            raise WatermarkError(
                f"the keyed watermark needs a sample rate of at least {MIN_RATE} Hz, "
                f"got {sample_rate} Hz"
            )
        if payload is None:
            raise WatermarkError("the keyed watermark needs a payload (--payload HEX)")
        try:
            codeword = coding.encode(payload)
        except ValueError as exc:
            raise WatermarkError(str(exc)) from None
        delta, marked_frames = self._delta(audio, sample_rate, codeword)
        marked = audio + delta
        marked_seconds = marked_frames * self.params.hop / self.params.rate
        verification = self.detect(marked, sample_rate)
        expected = coding.bits_to_payload(coding.payload_to_bits(payload))
        if marked_seconds == 0.0:
            raise WatermarkError("the audio is too quiet to carry a mark; nothing was marked")
        if not verification.detected or verification.payload != expected:
            raise WatermarkError(
                f"the mark did not read back after embedding (p-value {verification.p_value:.2g}, "
                f"payload {verification.payload}); {marked_seconds:.1f} s of the audio could "
                "carry it, which is too little or too quiet"
            )
        return EmbedResult(
            audio=marked,
            sample_rate=sample_rate,
            marked_seconds=marked_seconds,
            snr_db=measure_snr(audio, marked),
            verification=verification,
        )

    def _delta(
        self, audio: torch.Tensor, sample_rate: int, codeword: np.ndarray
    ) -> tuple[torch.Tensor, int]:
        """The mark at the native rate, computed in chunks with context on both sides."""
        rate = self.params.rate
        chunk = EMBED_CHUNK_SECONDS * sample_rate
        context = EMBED_CONTEXT_SECONDS * sample_rate
        frames_per_second = rate / self.params.hop
        total = audio.shape[-1]
        delta = torch.zeros_like(audio)
        marked_frames = 0
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            lo, hi = max(0, start - context), min(total, stop + context)
            low_rate = _resample(audio[:, lo:hi], sample_rate, rate)
            first_frame = round(lo / sample_rate * frames_per_second)
            part, active = self._reinforced_delta(low_rate, codeword, first_frame)
            part = _fit(_resample(part, rate, sample_rate), hi - lo)
            delta[:, start:stop] = part[:, start - lo : stop - lo]
            frame_times = (torch.arange(active.shape[0]) + first_frame) / frames_per_second
            inside = (frame_times >= start / sample_rate) & (frame_times < stop / sample_rate)
            marked_frames += int((active & inside).sum())
        return delta, marked_frames

    def _reinforced_delta(
        self, low_rate: torch.Tensor, codeword: np.ndarray, first_frame: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed, read the payload back as the detector would, and even out the bits.

        Each coded bit's cells also pick up the host's own, random correlation with the key,
        which sometimes works against the bit. The embedder knows the host, so it measures
        each bit's margin and moves gain from bits with margin to spare to the weak ones
        (informed embedding). The mean square of the boosts stays 1, so the payload's share
        of the energy, the sync cells and the SNR are unchanged.
        """
        base = dsp.cell_signs(self._pattern, codeword)
        data = ~self._pattern.sync
        index = self._pattern.bit_index[data]
        expected = torch.from_numpy(2.0 * codeword - 1.0).float()
        boost = torch.ones(coding.CODED_BITS)
        for round_ in range(REINFORCE_ROUNDS + 1):
            signs = base.clone()
            signs[data] = base[data] * boost[index]
            part, active = dsp.embed_delta(low_rate, signs, first_frame, self.params)
            if round_ == REINFORCE_ROUNDS:
                break
            margins = self._bit_margins(low_rate + part, expected)
            if bool((margins >= REINFORCE_TARGET).all()):
                break
            boost = boost * (REINFORCE_TARGET / margins.clamp(min=0.25)).clamp(0.7, 1.5)
            boost = boost / boost[index].square().mean().sqrt()
        return part, active

    def _bit_margins(self, marked: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        """Each coded bit's correct-sign sum over its cells, in units of its own noise."""
        features = dsp.cumulative_bins(dsp.detector_features(marked.mean(0), self.params))
        alignment, _ = dsp.align(features, self._spectra, self.params, self._search[:1])
        soft = torch.from_numpy(dsp.soft_bits(alignment, self._pattern)).float()
        data = ~self._pattern.sync
        energy = torch.zeros(coding.CODED_BITS).index_add_(
            0, self._pattern.bit_index[data], alignment.cells[data].square()
        )
        return soft * expected / energy.clamp(min=1e-12).sqrt()

    # -- detection -------------------------------------------------------------------------

    def detect(self, audio: torch.Tensor, sample_rate: int) -> Detection:
        if sample_rate < MIN_RATE:
            raise WatermarkError(
                f"the keyed watermark needs a sample rate of at least {MIN_RATE} Hz, "
                f"got {sample_rate} Hz"
            )
        rate = self.params.rate
        mono = _resample(audio.mean(0), sample_rate, rate)
        chunk = int(DETECT_CHUNK_SECONDS * rate)
        starts = [0] if mono.shape[0] <= chunk * 1.25 else range(0, mono.shape[0], chunk // 2)
        found = [self._detect_chunk(mono[s : s + chunk], s) for s in starts]
        found = [f for f in found if f is not None]
        if not found:
            return Detection(self.name, False, 1.0)
        p_value = min(1.0, len(starts) * min(f[0] for f in found))
        detected = p_value < self.threshold
        best = max(found, key=lambda f: f[1].z)
        payload = segments = None
        if detected:
            hits = [f for f in found if len(starts) * f[0] < self.threshold]
            soft = sum(dsp.soft_bits(f[1], self._pattern) for f in hits)
            payload = coding.decode(soft)
            segments = self._segments(hits, payload, mono.shape[0])
        return Detection(
            backend=self.name,
            detected=detected,
            p_value=p_value,
            payload=payload,
            segments=tuple(segments or ()),
            score=best[1].z,
            details={
                "time_stretch": best[1].hypothesis.time,
                "pitch_shift": best[1].hypothesis.freq,
            },
        )

    def _detect_chunk(
        self, chunk: torch.Tensor, start: int
    ) -> tuple[float, dsp.Alignment, torch.Tensor, int] | None:
        """Test the untouched grid first, then search stretches coarse-to-fine.

        Returns (p-value, alignment, features, start sample), or None for a chunk too short
        to hold one period. The p-value of the search counts every hypothesis of the fine
        grid, which bounds the adaptive coarse-to-fine pick; the two stages double it.
        """
        if chunk.shape[0] < self.params.period_seconds * self.params.rate:
            return None
        features = dsp.cumulative_bins(dsp.detector_features(chunk, self.params))
        quick, _ = dsp.align(features, self._spectra, self.params, self._search[:1])
        p_quick = 2.0 * _tail_p(quick.z, self.params.slots)
        if p_quick < self.threshold:
            return p_quick, quick, features, start
        coarse, scores = dsp.align(features, self._spectra, self.params, self._coarse)
        leaders = [self._coarse[int(i)] for i in torch.topk(scores, 2).indices]
        fine = [h for h in self._search if any(_near(h, lead, self.params) for lead in leaders)]
        refined, _ = dsp.align(features, self._spectra, self.params, fine)
        best = max((quick, coarse, refined), key=lambda a: a.z)
        p_full = 2.0 * _tail_p(best.z, self.params.slots * len(self._search))
        return min(p_quick, p_full), best, features, start

    def _segments(self, hits, payload: str | None, total: int) -> list[Segment]:
        """Stretches where the local correlation stays high, in seconds of the input."""
        frame_seconds = self.params.hop / self.params.oversample / self.params.rate
        window = int(LOCAL_WINDOW_SECONDS / frame_seconds) | 1
        codeword = coding.encode(payload) if payload is not None else None
        signs = dsp.cell_signs(self._pattern, codeword)
        marked = np.zeros(int(total / self.params.rate / frame_seconds) + 1, bool)
        for _, alignment, features, start in hits:
            scores = dsp.local_scores(features, alignment, signs, self.params, window)
            first = int(start / self.params.rate / frame_seconds)
            hit = (scores > LOCAL_THRESHOLD).numpy()
            marked[first : first + len(hit)] |= hit[: len(marked) - first]
        return _runs(marked, frame_seconds)


def _on_coarse_grid(hyp: dsp.Hypothesis, params: dsp.KeyedParams) -> bool:
    return round((hyp.time - 1.0) / params.stretch_step) % COARSE_STEPS == 0


def _near(hyp: dsp.Hypothesis, lead: dsp.Hypothesis, params: dsp.KeyedParams) -> bool:
    """Same family (tempo or speed) and within a coarse step of ``lead``."""
    same_family = (hyp.freq == 1.0) == (lead.freq == 1.0)
    return same_family and abs(hyp.time - lead.time) <= COARSE_STEPS * params.stretch_step * 0.67


def _runs(marked: np.ndarray, frame_seconds: float) -> list[Segment]:
    """Runs of True as segments, bridging short gaps and dropping short blips."""
    gap = int(MIN_SEGMENT_SECONDS / frame_seconds)
    padded = np.concatenate([[False], marked, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    runs: list[list[int]] = []
    for begin, end in zip(edges[::2], edges[1::2], strict=True):
        if runs and begin - runs[-1][1] <= gap:
            runs[-1][1] = end
        else:
            runs.append([begin, end])
    return [
        Segment(begin * frame_seconds, end * frame_seconds)
        for begin, end in runs
        if end - begin >= gap
    ]
