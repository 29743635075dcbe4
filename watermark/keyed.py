"""The keyed watermark backend: embed and blind detection with a secret 256-bit key.

The signal processing lives in :mod:`watermark.keyed_dsp`; this module handles rates,
channels, long inputs (processed in chunks so memory stays bounded), p-values, payload
decoding and segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch
from scipy.special import log_ndtr

from watermark import channels, coding
from watermark import keyed_dsp as dsp
from watermark.resampling import resample
from watermark.types import DEFAULT_P_THRESHOLD, Detection, EmbedResult, Segment, WatermarkError
from watermark.types import snr_db as measure_snr

MIN_RATE = 8000
MIN_DETECT_RATE = 4000
"""Detection reads any rate down to this: the mark is computed at 8 kHz, but a copy resampled
a little lower (7.9 kHz) keeps nearly all of its band, and refusing it made resampling just
under 8 kHz a one-command way to strip a label. Lower rates lose the top of the band, and the
mark with it only gradually (a sample resampled to 4 kHz still read at p 1e-12); the p-value
stays a bound, since the key's signs owe nothing to the audio."""
PINELIS = 2 * math.e**3 / 9  # constant of the Gaussian-tail bound for Rademacher sums
EMBED_CHUNK_SECONDS = 60  # a multiple of 2 s keeps chunks on the frame grid
EMBED_CONTEXT_SECONDS = 2
DETECT_CHUNK_SECONDS = 8.0
LOCAL_WINDOW_SECONDS = 1.0  # reach of the local correlation (segments, payload weights)
LOCAL_THRESHOLD = 3.0
MIN_SEGMENT_SECONDS = 0.5
REINFORCE_ROUNDS = 1
REINFORCE_TARGET = 2.0  # margin, in noise units, that every coded bit should reach
ROBUST_SCORE = 13.0  # clean score wanted in every 8 s window: room for a crop or a mix
STRESS_SCORE = 9.8  # score still wanted after white noise 20 dB below the audio (it follows
# the square root of the sync share: 11 when half the cells were sync)
STRESS_NOISE_DB = 20.0
PAYLOAD_SCORE = 0.9  # coded-bit margin (see _payload_margin) still wanted under that noise
CODEC_PAYLOAD_SCORE = 1.1  # coded-bit margin still wanted under codec-like noise
CODEC_NOISE_DB = 13.0  # how far that noise is below each band's power (keyed_dsp.codec_noise)
WIDE_CODEC_NOISE_DB = 7.0  # the same for rates above 16 kHz: a codec then spends bits above
# 8 kHz too and keeps less of the mark's band (Opus 32k on music: margins ~2 dB lower)
MAX_EXTRA_DB = 11.0  # the strongest a weak host is marked, above the base strength
MAX_STEP_DB = 4.0
MIN_STEP_DB = 2.0
CROP_SECONDS = 3.0
CROP_STEP_SECONDS = 1.5
CROP_SCORE = 9.0  # score wanted in every 3 s excerpt that is mostly marked
CROP_MARKED_SHARE = 0.75
MIN_MARGIN = 1e-3  # margins are floored here before strength is planned from them
COARSE_STEPS = 3  # the coarse search tries every third stretch of the fine grid


def _fit(x: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last axis to ``length`` (resampling rounds lengths)."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))


def _heard(plan: dsp.MarkPlan, host: torch.Tensor) -> dsp.MarkPlan:
    """``plan`` with only the channel that detection reads when ``host``'s channels cancel
    (see :mod:`watermark.channels`): codec-like noise is shaped on that mix, which would
    otherwise be silence."""
    channel = channels.analysis_channel(host)
    return plan if channel is None else replace(plan, spec=plan.spec[channel : channel + 1])


def _tail_p(z: float, tests: int) -> float:
    """P(the best of ``tests`` scores of unmarked audio ≥ z), rigorously bounded.

    For one test the score is a sum of the audio's cell values with the key's independent
    random signs, normalised by their root sum of squares: a Rademacher sum with unit
    variance. Whatever the audio is, its tail is at most exp(-z²/2) (Hoeffding) and at most
    2e³/9 · Φ̄(z) (Pinelis 1994; Bentkus 2004); the smaller of the two is used, and the
    union bound over every shift and stretch hypothesis searched completes it.
    ``benchmarks/keyed_null.py`` checks on thousands of unmarked windows that this is
    conservative.
    """
    if z <= 0:
        return 1.0
    one_test = min(math.exp(-0.5 * z * z), PINELIS * math.exp(float(log_ndtr(-z))))
    return min(1.0, tests * one_test)


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
        self._tests = {"quick": self.params.slots, "search": self.params.slots * len(self._search)}
        self._weightings = (self.params.gamma, self.params.noise_gamma)

    # -- embedding -------------------------------------------------------------------------

    def embed(self, audio: torch.Tensor, sample_rate: int, payload: str | None) -> EmbedResult:
        """Mark and verify; if the mark does not read back, mark again 4, 8 and then 11 dB stronger.

        How strong each stretch is marked is chosen while embedding (see
        :meth:`_robust_plan`); this outer retry only catches marks that fail verification
        outright. The SNR actually spent is reported; if even the strongest allowed mark does
        not read back, embed fails loudly.
        """
        self._check_length(audio, sample_rate)  # no strength helps, so say it before trying
        extra_db = 0.0
        while True:
            tally: list[float] = []
            stream = self.embed_stream([audio], sample_rate, payload, tally, extra_db)
            marked = torch.cat(list(stream), dim=1)
            try:
                check = self.verify(marked, sample_rate, payload, sum(tally))
                break
            except WatermarkError:
                if sum(tally) == 0.0 or extra_db >= MAX_EXTRA_DB:
                    raise
                extra_db = min(MAX_EXTRA_DB, extra_db + MAX_STEP_DB)
        return EmbedResult(
            audio=marked,
            sample_rate=sample_rate,
            # tallied in whole frames, and the last may reach past the end
            marked_seconds=min(sum(tally), audio.shape[-1] / sample_rate),
            snr_db=measure_snr(audio, marked),
            verification=check,
        )

    def verify(
        self, marked: torch.Tensor, sample_rate: int, payload: str | None, marked_seconds: float
    ) -> Detection:
        """Detect the mark just embedded; raise if it is missing or reads a wrong payload."""
        if marked_seconds == 0.0:
            raise WatermarkError("the audio is too quiet to carry a mark; nothing was marked")
        verification = self.detect(marked, sample_rate)
        self._codeword(payload)  # the same sentence as embed for a missing or bad payload
        expected = coding.bits_to_payload(coding.payload_to_bits(str(payload)))
        if not verification.detected or verification.payload != expected:
            self._check_length(marked, sample_rate)
            raise WatermarkError(
                f"the mark did not read back after embedding (p-value {verification.p_value:.2g}, "
                + (f"payload {verification.payload}" if verification.payload else "no payload")
                + f"); {marked_seconds:.1f} s of the audio could carry it, which is too little "
                "or too quiet"
            )
        return verification

    def _check_length(self, audio: torch.Tensor, sample_rate: int) -> None:
        """Say so when ``audio`` is shorter than one period of the pattern: detection reads
        whole periods (see :meth:`_detect_chunk`), so no strength makes a shorter clip carry
        the mark, however loud it is."""
        seconds = math.floor(audio.shape[-1] / sample_rate * 1000) / 1000  # never rounded up
        minimum = self.params.period_seconds  # cells × frames per cell × hop / rate: 2.048 s
        if seconds < minimum:
            raise WatermarkError(
                f"the audio is {seconds:g} s long, too short to carry the keyed mark: "
                f"it needs at least {minimum:g} s (one period of the mark's pattern)"
            )

    def _check_rate(self, sample_rate: int, minimum: int = MIN_RATE) -> None:
        if sample_rate < minimum:
            what = "embedding" if minimum == MIN_RATE else "detection"
            raise WatermarkError(
                f"keyed watermark {what} needs a sample rate of at least {minimum} Hz, "
                f"got {sample_rate} Hz"
            )

    @staticmethod
    def _codeword(payload: str | None) -> np.ndarray:
        if payload is None:
            raise WatermarkError("the keyed watermark needs a payload (--payload HEX)")
        try:
            return coding.encode(payload)
        except ValueError as exc:
            raise WatermarkError(str(exc)) from None

    def embed_stream(
        self,
        blocks: Iterable[torch.Tensor],
        sample_rate: int,
        payload: str | None,
        tally: list[float],
        extra_db: float = 0.0,
    ) -> Iterator[torch.Tensor]:
        """Mark audio that arrives in blocks, yielding marked blocks; memory stays bounded.

        Each 60 s chunk is marked with 2 s of context on both sides, so the output does not
        depend on how the input was split. Seconds that carry the mark are appended to
        ``tally`` as chunks finish; ``extra_db`` makes the mark that much stronger. The
        caller verifies the output (see :meth:`embed`).
        """
        self._check_rate(sample_rate)
        codeword = self._codeword(payload)
        params = replace(self.params, band_snr_db=self.params.band_snr_db - extra_db)
        chunk = EMBED_CHUNK_SECONDS * sample_rate
        context = EMBED_CONTEXT_SECONDS * sample_rate
        buffer: torch.Tensor | None = None
        origin = emitted = 0  # global sample index of buffer[:, 0] / of the next output
        for block in blocks:
            buffer = block if buffer is None else torch.cat([buffer, block], dim=1)
            while origin + buffer.shape[1] - emitted >= chunk + context:
                yield self._marked_chunk(
                    buffer, origin, emitted, chunk, None, sample_rate, codeword, tally, params
                )
                emitted += chunk
                drop = max(0, emitted - context - origin)
                buffer, origin = buffer[:, drop:], origin + drop
        end = origin + (0 if buffer is None else buffer.shape[1])
        while emitted < end:
            yield self._marked_chunk(
                buffer, origin, emitted, chunk, end, sample_rate, codeword, tally, params
            )
            emitted += chunk

    def _marked_chunk(
        self,
        buffer: torch.Tensor,
        origin: int,
        start: int,
        chunk: int,
        end: int | None,
        sample_rate: int,
        codeword: np.ndarray,
        tally: list[float],
        params: dsp.KeyedParams,
    ) -> torch.Tensor:
        """Samples ``start .. start + chunk`` of the stream, marked; ``end`` ends the stream."""
        rate = self.params.rate
        context = EMBED_CONTEXT_SECONDS * sample_rate
        available = origin + buffer.shape[1] if end is None else end
        stop = min(available, start + chunk)
        lo, hi = max(origin, start - context), min(available, stop + context)
        frames_per_second = rate / self.params.hop
        host = buffer[:, lo - origin : hi - origin]
        first_frame = round(lo / sample_rate * frames_per_second)
        # White noise STRESS_NOISE_DB below the host (less its offset), as much of it as lands
        # below 4 kHz.
        mono = channels.mix_down(host).double()
        noise_power = float((mono - mono.mean()).square().mean()) * min(1.0, rate / sample_rate)
        noise_power *= 10 ** (-STRESS_NOISE_DB / 10)
        codec_db = WIDE_CODEC_NOISE_DB if sample_rate > 16000 else CODEC_NOISE_DB
        part, active = self._reinforced_delta(
            resample(host, sample_rate, rate), codeword, first_frame, params, noise_power, codec_db
        )
        part = _fit(resample(part, rate, sample_rate), hi - lo)
        frame_times = (torch.arange(active.shape[0]) + first_frame) / frames_per_second
        inside = (frame_times >= start / sample_rate) & (frame_times < stop / sample_rate)
        tally.append(float((active & inside).sum()) / frames_per_second)
        return host[:, start - lo : stop - lo] + part[:, start - lo : stop - lo]

    def _reinforced_delta(
        self,
        low_rate: torch.Tensor,
        codeword: np.ndarray,
        first_frame: int,
        params: dsp.KeyedParams,
        noise_power: float,
        codec_db: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed at the strength :meth:`_robust_plan` picks, read the payload back as the
        detector would, and even out the bits.

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
        plan, part, alignment = self._robust_plan(
            low_rate, base, expected, first_frame, params, noise_power, codec_db
        )
        for _ in range(REINFORCE_ROUNDS):
            if alignment is None:
                alignment = self._quick_alignment(channels.mix_down(low_rate + part, low_rate))
            margins = self._bit_margins(alignment, expected)
            if bool((margins >= REINFORCE_TARGET).all()):
                break
            boost = boost * (REINFORCE_TARGET / margins.clamp(min=0.25)).clamp(0.7, 1.5)
            boost = boost / boost[index].square().mean().sqrt()
            signs = base.clone()
            signs[data] = base[data] * boost[index]
            part, alignment = dsp.render_mark(plan, signs, self.params), None
        return part, plan.active

    def _robust_plan(
        self,
        low_rate: torch.Tensor,
        signs: torch.Tensor,
        expected: torch.Tensor,
        first_frame: int,
        params: dsp.KeyedParams,
        noise_power: float,
        codec_db: float,
    ) -> tuple[dsp.MarkPlan, torch.Tensor, dsp.Alignment | None]:
        """The weakest mark that keeps its margins wherever the detector may have to find it.

        Most audio carries a mark with room for edits at the base strength. Sparse, tonal or
        noise-like stretches do not: their mark hides in frames and bins that a little noise
        fills, or that a crop keeps alone. So each plan is scored on the untouched grid in
        every 8 s window the detector will judge, under fixed white noise (``STRESS_SCORE``
        for the sync, and ``PAYLOAD_SCORE`` for the coded bits: a mark found whose payload no
        longer decodes proves nothing about where it came from), under codec-like noise
        (``CODEC_PAYLOAD_SCORE``: a lossy codec refills the quiet bins between a band's peaks,
        which white noise 20 dB down barely touches in loud, tonal music) and clean
        (``ROBUST_SCORE``), and clean in every mostly marked 3 s excerpt (``CROP_SCORE``).
        Each noise is scored until it passes: more strength only raises its scores. The
        frames of a stretch short of its score are planned again as much stronger as the
        shortfall says (scores grow about in proportion to the mark's amplitude), up to
        ``MAX_EXTRA_DB``; a stretch that more strength no longer helps is left as it is.
        Only the stretches that need it pay for it in SNR.

        Returns the plan, the mark it renders with ``signs``, and that mark's alignment over
        the whole stretch when one window covered it (so the caller need not measure again).
        """
        mono = channels.mix_down(low_rate)
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(mono.shape, generator=generator) * math.sqrt(noise_power)
        plan = dsp.plan_mark(low_rate, first_frame, params)
        codec = dsp.codec_noise(_heard(plan, low_rate), codec_db, generator, self.params)
        windows, crops = self._stretches(mono.shape[0], plan.active)
        extra = torch.zeros_like(plan.frame_energy)
        previous: dict[tuple[int, int], float] = {}
        # Each stress: the noise added, and the sync score and coded-bit margin it must keep.
        stresses = [(noise, STRESS_SCORE, PAYLOAD_SCORE), (codec, 0.0, CODEC_PAYLOAD_SCORE)]
        while True:
            part = dsp.render_mark(plan, signs, self.params)
            margins: dict[tuple[int, int], float] = {}
            whole = None
            failing = []
            for stress in stresses:
                added, sync_score, payload_score = stress
                stressed, _, payload = self._stretch_scores(
                    mono + channels.mix_down(part, low_rate) + added, windows, expected
                )
                passed = True
                for w, z, q in zip(windows, stressed, payload, strict=True):
                    margin = min(z / sync_score if sync_score else math.inf, q / payload_score)
                    margins[w] = min(margins.get(w, math.inf), margin)
                    passed &= margin >= 1.0
                if not passed:  # more strength only raises passing scores: no need to look again
                    failing.append(stress)
            stresses = failing
            if not stresses:  # clean scores are higher; they rarely ask for more
                clean, whole, _ = self._stretch_scores(
                    mono + channels.mix_down(part, low_rate), windows + crops
                )
                targets = [ROBUST_SCORE] * len(windows) + [CROP_SCORE] * len(crops)
                for stretch, z, target in zip(windows + crops, clean, targets, strict=True):
                    margins[stretch] = min(margins.get(stretch, math.inf), z / target)
            # A window the noise swamps scores zero or less: it gets one full step, and is
            # given up if that does not lift it (a negative margin must not reach the log).
            margins = {w: max(m, MIN_MARGIN) for w, m in margins.items()}
            demand = torch.zeros_like(extra)
            for (start, end), margin in margins.items():
                if margin >= 1.0 or margin < 1.05 * previous.get((start, end), 0.0):
                    continue  # enough, or more strength no longer helps here
                step = min(MAX_STEP_DB, max(MIN_STEP_DB, 1.0 - 20.0 * math.log10(margin)))
                frames = slice(start // self.params.hop, end // self.params.hop + 1)
                demand[frames] = demand[frames].clamp(min=step)
            raised = (extra + demand).clamp(max=MAX_EXTRA_DB)
            if bool((raised <= extra).all()):
                return plan, part, whole
            previous.update(margins)
            extra = raised
            plan = dsp.restrength(plan, params.band_snr_db - extra, self.params)

    def _stretches(
        self, length: int, active: torch.Tensor
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The detector windows that carry a second of mark, and the 3 s excerpts on a 1.5 s
        grid that are mostly marked (excerpts of silence cannot be helped; a clip about one
        excerpt long is judged by its window)."""
        rate, hop = self.params.rate, self.params.hop

        def share(start: int, end: int) -> torch.Tensor:
            return active[start // hop : max(end // hop, start // hop + 1)].float()

        windows = [
            (start, end)
            for start, end in _detector_windows(length, rate)
            if end - start >= self.params.period_seconds * rate
            and share(start, end).sum() >= rate / hop
        ]
        span, step = int(CROP_SECONDS * rate), int(CROP_STEP_SECONDS * rate)
        starts = range(0, length - span + 1, step) if length >= span + step else range(0)
        crops = [
            (start, start + span)
            for start in starts
            if share(start, start + span).mean() >= CROP_MARKED_SHARE
        ]
        return windows, crops

    def _stretch_scores(
        self,
        mono: torch.Tensor,
        stretches: list[tuple[int, int]],
        expected: torch.Tensor | None = None,
    ) -> tuple[list[float], dsp.Alignment | None, list[float]]:
        """Untouched-grid score of each stretch, and the alignment of the first when it spans
        all of ``mono``. Features are computed once for all of ``mono``: they are per frame,
        so a stretch's frames of them are its own, and all stretches fold at once."""
        cumulative = dsp.cumulative_bins(dsp.detector_features(mono, self.params))
        per_sample = cumulative.shape[1] / mono.shape[0]
        frames = [(round(start * per_sample), round(end * per_sample)) for start, end in stretches]
        found = dsp.align_untouched(cumulative, self._spectra, self.params, frames)
        whole = found[0] if found and stretches[0] == (0, mono.shape[0]) else None
        payload = [] if expected is None else [self._payload_margin(a, expected) for a in found]
        return [a.z for a in found], whole, payload

    def _payload_margin(self, alignment: dsp.Alignment, expected: torch.Tensor) -> float:
        """How clearly the coded bits read at ``alignment``: the mean of each bit's
        correct-sign sum over the spread of those sums (a Q-function argument per bit)."""
        per_bit = self._correct_sign_sums(alignment, expected)
        return float(per_bit.mean() / per_bit.std().clamp(min=1e-12))

    def _correct_sign_sums(self, alignment: dsp.Alignment, expected: torch.Tensor) -> torch.Tensor:
        """Each coded bit's keyed sum over its cells, positive where it reads as ``expected``."""
        return torch.from_numpy(dsp.soft_bits(alignment.cells, self._pattern)).float() * expected

    def _quick_alignment(self, mono: torch.Tensor) -> dsp.Alignment:
        """The best alignment on the untouched grid (no stretch search)."""
        features = dsp.cumulative_bins(dsp.detector_features(mono, self.params))
        return dsp.align(features, self._spectra, self.params, self._search[:1])[0]

    def _bit_margins(self, alignment: dsp.Alignment, expected: torch.Tensor) -> torch.Tensor:
        """Each coded bit's correct-sign sum over its cells, in units of its own noise."""
        data = ~self._pattern.sync
        energy = torch.zeros(coding.CODED_BITS).index_add_(
            0, self._pattern.bit_index[data], alignment.cells[data].square()
        )
        return self._correct_sign_sums(alignment, expected) / energy.clamp(min=1e-12).sqrt()

    # -- detection -------------------------------------------------------------------------

    def detect(self, audio: torch.Tensor, sample_rate: int) -> Detection:
        self._check_rate(sample_rate, MIN_DETECT_RATE)
        rate = self.params.rate
        mono = resample(channels.mix_down(audio), sample_rate, rate)
        spans = _detector_windows(mono.shape[0], rate)
        found = [self._detect_chunk(mono[s:e], s) for s, e in spans]
        found = [f for f in found if f is not None]
        if not found:
            return Detection(self.name, False, 1.0)
        p_value = min(1.0, len(spans) * min(f[0] for f in found))
        detected = p_value < self.threshold
        best = max(found, key=lambda f: f[1].z)
        payload = segments = None
        if detected:
            hits = [f for f in found if len(spans) * f[0] < self.threshold]
            soft = sum(self._payload_soft_bits(f[2], f[1]) for f in hits)
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

    def null_scores(self, audio: torch.Tensor, sample_rate: int) -> tuple[float, float]:
        """Best score on the untouched grid and over the whole stretch grid (no shortcuts),
        each the larger of the two bin weightings'.

        This is what ``benchmarks/keyed_null.py`` measures on unmarked audio to check that
        :meth:`p_value` is conservative.
        """
        low = resample(channels.mix_down(audio), sample_rate, self.params.rate)
        quick_z = search_z = -math.inf
        for weighted in dsp.detector_feature_sets(low, self.params, self._weightings):
            features = dsp.cumulative_bins(weighted)
            quick, _ = dsp.align(features, self._spectra, self.params, self._search[:1])
            full, _ = dsp.align(features, self._spectra, self.params, self._search)
            quick_z, search_z = max(quick_z, quick.z), max(search_z, quick.z, full.z)
        return quick_z, search_z

    def p_value(self, quick_z: float, search_z: float) -> float:
        """The p-value of a chunk whose untouched grid scored ``quick_z`` and whose whole
        stretch search scored ``search_z`` (the best of both bin weightings)."""
        return min(self._stage_p("quick", quick_z), self._stage_p("search", search_z))

    def _stage_p(self, stage: str, z: float) -> float:
        """Two stages and two bin weightings are tested, so each test counts four times."""
        return 2.0 * len(self._weightings) * _tail_p(z, self._tests[stage])

    def _detect_chunk(
        self, chunk: torch.Tensor, start: int
    ) -> tuple[float, dsp.Alignment, torch.Tensor, int] | None:
        """Test the untouched grid under both bin weightings, then search stretches
        coarse-to-fine under the one that scored higher there.

        Returns (p-value, alignment, features, start sample), or None for a chunk too short
        to hold one period. Searching one weighting instead of both keeps unmarked audio
        nearly as fast to clear as with one weighting (the untouched-grid tests are cheap
        beside the search); the union bound in :meth:`_stage_p` counts every
        weighting and every hypothesis of the fine grid, so it covers both adaptive picks.
        """
        if chunk.shape[0] < self.params.period_seconds * self.params.rate:
            return None
        candidates = []
        for weighted in dsp.detector_feature_sets(chunk, self.params, self._weightings):
            features = dsp.cumulative_bins(weighted)
            quick, _ = dsp.align(features, self._spectra, self.params, self._search[:1])
            candidates.append((quick, features))
        quick, features = max(candidates, key=lambda c: c[0].z)
        p_quick = self._stage_p("quick", quick.z)
        if p_quick < self.threshold:
            return p_quick, quick, features, start
        coarse, scores = dsp.align(features, self._spectra, self.params, self._coarse)
        leaders = [self._coarse[int(i)] for i in torch.topk(scores, 2).indices]
        fine = [h for h in self._search if any(_near(h, lead, self.params) for lead in leaders)]
        refined, _ = dsp.align(features, self._spectra, self.params, fine)
        best = max((quick, coarse, refined), key=lambda a: a.z)
        return self.p_value(quick.z, best.z), best, features, start

    @property
    def _frame_seconds(self) -> float:
        """Seconds between the detector's frames."""
        return self.params.hop / self.params.oversample / self.params.rate

    @property
    def _local_window(self) -> int:
        """Detector frames in ``LOCAL_WINDOW_SECONDS``, odd so the window has a centre."""
        return int(LOCAL_WINDOW_SECONDS / self._frame_seconds) | 1

    def _payload_soft_bits(self, features: torch.Tensor, alignment: dsp.Alignment) -> np.ndarray:
        sync = dsp.cell_signs(self._pattern, None)
        cells = dsp.reliable_cells(features, alignment, sync, self.params, self._local_window)
        return dsp.soft_bits(cells, self._pattern)

    def _segments(self, hits, payload: str | None, total: int) -> list[Segment]:
        """Stretches where the local correlation stays high, in seconds of the input."""
        frame_seconds = self._frame_seconds
        window = self._local_window
        codeword = coding.encode(payload) if payload is not None else None
        signs = dsp.cell_signs(self._pattern, codeword)
        marked = np.zeros(int(total / self.params.rate / frame_seconds) + 1, bool)
        for _, alignment, features, start in hits:
            scores = dsp.local_scores(features, alignment, signs, self.params, window)
            first = int(start / self.params.rate / frame_seconds)
            hit = (scores > LOCAL_THRESHOLD).numpy()
            marked[first : first + len(hit)] |= hit[: len(marked) - first]
        duration = total / self.params.rate
        return [Segment(s.start, min(s.end, duration)) for s in _runs(marked, frame_seconds)]


def _detector_windows(length: int, rate: int) -> list[tuple[int, int]]:
    """Back-to-back ``DETECT_CHUNK_SECONDS`` windows; a short tail joins the one before it."""
    chunk = int(DETECT_CHUNK_SECONDS * rate)
    starts = list(range(0, max(1, length - chunk // 2), chunk))
    return list(zip(starts, starts[1:] + [length], strict=True))


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
