"""Signal processing of the keyed watermark, as pure functions on tensors.

The mark is a keyed pattern of tiny gain changes (a fraction of a dB) on a time–frequency
grid of the 344–3750 Hz band, the band that survives telephone resampling, 3.5 kHz low-pass,
300 Hz high-pass and every common codec. Each cell of the grid (2 STFT bins × 2 frames) is
made slightly louder or quieter according to a sign that only the key holder knows; the pattern
repeats every ~2 s, so any 3 s excerpt holds a whole period.

Why it is robust and honest:

* The detector works on log-magnitudes with the spectral envelope removed, so gain changes,
  EQ and filtering (which multiply the spectrum by a smooth curve) cancel out.
* Its statistic is a normalised correlation with the key's random signs. For audio that
  carries no mark, signs drawn independently of the audio make that statistic a standard
  normal whatever the audio is, which is what lets ``p_value`` be stated, not guessed.
* Speed and tempo changes stretch the grid; the detector folds the features onto one period
  under each of a grid of stretch hypotheses, and pays for the search in the p-value.
* Noise added later fills the quiet frames and bins first; the detector weights each frame
  by how far it stands above the chunk's noise floor, reads the bins a second way (evenly,
  so the loud bins' share of the mark counts; the p-value pays for both), and the payload
  decoder weights each stretch by how clearly the sync shows there, so what survives is
  not averaged away.
* How much each cell changes follows the host: energy is spent where the host has little
  (quiet bins change by more dB, loud ones by less), each frame's mark is held to a fixed
  ratio below that frame's energy, and frames near silence are left untouched, so no hiss
  is added to silence.

References: Kirovski & Malvar, "Spread-spectrum watermarking of audio signals" (IEEE TSP
2003) for log-spectral spread spectrum with a normalised-correlation detector; Westerfeld's
audiowmark documentation for the idea of keyed up/down band patterns with soft decoding.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from watermark import coding
from watermark.offset import without_offset


@dataclass(frozen=True)
class KeyedParams:
    """Every constant of the scheme; changing one changes the mark (so it is versioned)."""

    rate: int = 8000
    n_fft: int = 256
    hop: int = 128
    lo_bin: int = 11  # 344 Hz
    hi_bin: int = 121  # 3781 Hz, exclusive
    bins_per_cell: int = 2
    frames_per_cell: int = 2
    cells_per_period: int = 64
    # Share of cells that carry the sync rather than payload bits. Detection, crops and the
    # stretch search keep a wide margin at 40%, while the payload gets 13 cells per coded
    # bit instead of 11 at 50% (+0.8 dB): white noise and a mixed-in track cost the payload
    # before the sync (at 35% the sync missed 9 of 2,340 tuning mixes, at 40% 5).
    sync_share: float = 0.4
    band_snr_db: float = 31.0  # mark energy per frame below the frame's energy in the 4 kHz band
    gamma: float = 0.85  # how strongly quiet bins are favoured (0: equal dB everywhere)
    noise_gamma: float = 0.0  # the detector's second bin weighting, for audio noise has filled
    max_gain: float = 0.8  # largest log-gain of a cell (nats; 0.8 ≈ 7 dB on the quietest bins)
    gate_db: float = 45.0  # frames this far below the loudest frame are left unmarked
    silence_dbfs: float = -70.0  # frames below this absolute level are left unmarked
    envelope_bins: int = 7  # half-width of the moving average that removes the envelope
    time_whitening: float = 0.75  # share of the neighbouring cells' features subtracted
    floor_quantile: float = 0.05  # the detector takes this quantile of frame energy as noise
    oversample: int = 2  # the detector's hop is hop / oversample
    max_stretch: float = 0.06  # tempo search range (±)
    max_speed: float = 0.04  # speed (resampling) search range (±)
    stretch_step: float = 0.0025
    version: str = "keyed-v2"

    @property
    def rows(self) -> int:
        return (self.hi_bin - self.lo_bin) // self.bins_per_cell

    @property
    def slots(self) -> int:
        """Detector frames per period."""
        return self.cells_per_period * self.frames_per_cell * self.oversample

    @property
    def period_seconds(self) -> float:
        return self.cells_per_period * self.frames_per_cell * self.hop / self.rate


@dataclass(frozen=True)
class KeyPattern:
    """The key's secret choices: a sign per cell, and which cells carry sync or payload bits."""

    signs: torch.Tensor  # (rows, cells_per_period), ±1
    sync: torch.Tensor  # bool, same shape
    bit_index: torch.Tensor  # long, same shape; -1 on sync cells


def derive_pattern(key: bytes, params: KeyedParams) -> KeyPattern:
    """Expand the key into the pattern; nothing about the mark is chosen any other way."""
    seed = hashlib.sha256(f"audioguard/{params.version}/pattern".encode() + key).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    shape = (params.rows, params.cells_per_period)
    cells = shape[0] * shape[1]
    order = rng.permutation(cells)
    n_sync = round(cells * params.sync_share)
    bit_index = np.full(cells, -1, np.int64)
    bit_index[order[n_sync:]] = np.arange(cells - n_sync) % coding.CODED_BITS
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=cells)
    return KeyPattern(
        signs=torch.from_numpy(signs.reshape(shape)),
        sync=torch.from_numpy(bit_index.reshape(shape) < 0),
        bit_index=torch.from_numpy(bit_index.reshape(shape)),
    )


def cell_signs(pattern: KeyPattern, codeword: np.ndarray | None) -> torch.Tensor:
    """Sign of every cell for one payload (sync cells keep the key's sign)."""
    if codeword is None:
        return pattern.signs * pattern.sync
    bits = torch.from_numpy(2.0 * codeword.astype(np.float32) - 1.0)
    data = bits[pattern.bit_index.clamp(min=0)]
    return torch.where(pattern.sync, pattern.signs, pattern.signs * data)


@functools.cache
def _window(params: KeyedParams) -> torch.Tensor:
    """Square-root Hann: analysis and synthesis together make a Hann window, whose shifts by
    half its length sum to one. Cached: the planner asks for it on every pass."""
    return torch.hann_window(params.n_fft, periodic=True).sqrt()


def stft(x: torch.Tensor, params: KeyedParams, hop: int) -> torch.Tensor:
    """(channels, n) → (channels, bins, frames); frame t is centred on sample t·hop."""
    return torch.stft(
        x,
        params.n_fft,
        hop,
        window=_window(params),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )


def inverse_stft(spec: torch.Tensor, params: KeyedParams, length: int) -> torch.Tensor:
    """``torch.istft`` of an :func:`stft` at the embedder's hop, to the bit, about three
    times faster: with frames overlapping by half, overlap-adding is two strided adds,
    where ``torch.istft`` runs a general ``fold``. The planner renders a mark on every pass.
    """
    if 2 * params.hop != params.n_fft:
        raise ValueError("inverse_stft needs frames that overlap by half (hop = n_fft / 2)")
    window = _window(params)
    frames = torch.fft.irfft(spec, n=params.n_fft, dim=-2) * window[:, None]
    added = _add_halves(frames, params.hop)
    envelope = _add_halves(window.square()[:, None].expand(-1, frames.shape[-1]), params.hop)
    kept = slice(params.n_fft // 2, params.n_fft // 2 + length)
    return added[..., kept] / envelope[kept]


def _add_halves(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """(..., 2·hop, frames) → (..., (frames + 1)·hop): each frame's second half added to the
    next frame's first."""
    count = frames.shape[-1]
    out = frames.new_zeros(*frames.shape[:-2], (count + 1) * hop)
    out[..., : count * hop] += frames[..., :hop, :].transpose(-1, -2).flatten(-2)
    out[..., hop:] += frames[..., hop:, :].transpose(-1, -2).flatten(-2)
    return out


def _waterfill(energy: torch.Tensor, weight: torch.Tensor, budget: torch.Tensor, cap: float):
    """Largest log-gains ``min(cap, a·weight)`` per frame whose energy cost fits ``budget``.

    Solved by bisection on ``log a`` for all frames at once (no Python loop per frame).
    """
    lo = torch.full_like(budget, -25.0)
    hi = torch.full_like(budget, 10.0)
    for _ in range(16):  # brackets log a to within 35 / 2**16
        mid = 0.5 * (lo + hi)
        gains = (mid.exp() * weight).clamp(max=cap)
        over = (gains.square() * energy).sum(0) > budget
        hi = torch.where(over, mid, hi)
        lo = torch.where(over, lo, mid)
    return (lo.exp() * weight).clamp(max=cap)


def _row_energy(power: torch.Tensor, params: KeyedParams) -> torch.Tensor:
    """(bins, frames) power → (rows, frames) energy of each cell row."""
    band = power[params.lo_bin : params.lo_bin + params.rows * params.bins_per_cell]
    return band.reshape(params.rows, params.bins_per_cell, -1).sum(1)


@dataclass(frozen=True)
class MarkPlan:
    """Everything about marking one stretch of audio that does not depend on the signs.

    Informed embedding renders the same plan with several sign patterns, and a weak mark is
    planned again stronger (:func:`restrength`), so the STFT and the host's analysis are
    computed once.
    """

    spec: torch.Tensor  # (channels, bins, frames)
    strength: torch.Tensor  # (rows, frames) log-gain magnitude, 0 where nothing is marked
    column: torch.Tensor  # (frames,) pattern column of each frame
    length: int
    energy: torch.Tensor  # (rows, frames) host energy of each cell row
    weight: torch.Tensor  # (rows, frames) how strongly each row is favoured
    frame_energy: torch.Tensor  # (frames,)
    markable: torch.Tensor  # (frames,) bool: loud enough to carry a mark

    @property
    def active(self) -> torch.Tensor:
        """Frames that carry the mark."""
        return (self.strength > 0).any(0)


def plan_mark(x: torch.Tensor, first_frame: int, params: KeyedParams) -> MarkPlan:
    """Allocate the mark's strength over ``x`` (channels, n) at ``params.rate``.

    Quiet bins get larger gains than loud ones (``gamma``), each frame's mark stays
    ``band_snr_db`` below the frame, and frames near silence are left alone. The gains come
    from the channel mix and apply to every channel, so a downmix carries the same mark and a
    silent channel stays silent. ``first_frame`` is the global index of frame 0, so that
    chunks of a long file line up. The plan is made on ``x`` less its offset
    (:func:`without_offset`).
    """
    spec = stft(without_offset(x, params.rate), params, params.hop)
    power = spec.abs().square().mean(0)
    energy = _row_energy(power, params) + 1e-20
    full = power.sum(0)
    weight = (energy / energy.mean(0, keepdim=True)).pow(-params.gamma)
    loud = full.max() * 10.0 ** (-params.gate_db / 10.0)
    # One-sided Parseval: a frame of RMS r has energy (n_fft / 2) · Σ window² · r².
    floor = params.n_fft / 2 * _window(params).square().sum() * 10.0 ** (params.silence_dbfs / 10)
    frames = torch.arange(power.shape[1]) + first_frame
    column = (frames // params.frames_per_cell) % params.cells_per_period
    empty = torch.zeros_like(energy)
    plan = MarkPlan(
        spec, empty, column, x.shape[-1], energy, weight, full, (full > loud) & (full > floor)
    )
    return restrength(plan, params.band_snr_db, params)


def restrength(plan: MarkPlan, band_snr_db: float | torch.Tensor, params: KeyedParams) -> MarkPlan:
    """The same plan with each frame's mark ``band_snr_db`` (one value, or one per frame)
    below the frame."""
    budget = plan.frame_energy * 10.0 ** (-band_snr_db / 10.0)
    gains = _waterfill(plan.energy, plan.weight, budget, params.max_gain)
    return replace(plan, strength=gains * plan.markable)


CODEC_BAND_EDGES_HZ = (0, 200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000, 2400, 2800, 3200, 4000)
"""Opus CELT's band edges below 4 kHz (RFC 6716, section 4.3): the resolution at which a
perceptual codec spends its bits, and so the width of the noise it leaves."""


def codec_noise(
    plan: MarkPlan, snr_db: float, generator: torch.Generator, params: KeyedParams
) -> torch.Tensor:
    """Noise like a perceptual codec's, for the mono mix of the host ``plan`` was made on.

    At low bit rates a codec keeps each band's energy and few details of its fine
    structure: the quiet bins between a band's peaks come back as codec noise at a level set
    by the band, not by the bin. White noise that lands as hard on the mark's quiet bins
    would have to be far louder than the host allows; noise ``snr_db`` below each band's
    mean power in each frame imitates the codec instead (on music through Opus 32 kbit/s, a
    mark's payload margin under it follows the codec's far more closely than under white
    noise: log-correlation 0.9 against 0.1).
    """
    spec = plan.spec.mean(0)
    power = spec.real.square() + spec.imag.square()
    level = torch.empty_like(power)
    edges = [round(hz * params.n_fft / params.rate) for hz in CODEC_BAND_EDGES_HZ]
    edges[-1] = power.shape[0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        level[lo:hi] = power[lo:hi].mean(0, keepdim=True)
    # Overlap-adding independent frames (square-root Hann, half overlap) halves their power
    # as the STFT sees it again; twice the power here leaves the noise ``snr_db`` down.
    scale = (2.0 * level * 10.0 ** (-snr_db / 10.0)).sqrt()
    noise = torch.randn(power.shape, dtype=spec.dtype, generator=generator)
    return inverse_stft(noise * scale, params, plan.length)


def render_mark(plan: MarkPlan, signs: torch.Tensor, params: KeyedParams) -> torch.Tensor:
    """The mark to add, for cell signs (and boosts) ``signs`` of shape (rows, cells)."""
    gains = plan.strength * signs[:, plan.column]
    factor = torch.zeros(plan.spec.shape[1:])
    rows_end = params.lo_bin + params.rows * params.bins_per_cell
    factor[params.lo_bin : rows_end] = gains.repeat_interleave(params.bins_per_cell, 0).expm1()
    return inverse_stft(plan.spec * factor, params, plan.length)


def detector_features(x: torch.Tensor, params: KeyedParams) -> torch.Tensor:
    """Weighted, envelope-free log-spectrum ``(bins, frames)`` at the detector's hop, with
    the embedder's bin weighting (see :func:`detector_feature_sets`)."""
    return detector_feature_sets(x, params, (params.gamma,))[0]


def detector_feature_sets(
    x: torch.Tensor, params: KeyedParams, gammas: tuple[float, ...]
) -> list[torch.Tensor]:
    """:func:`detector_features` under each bin weighting in ``gammas``, sharing the STFT.

    With ``params.gamma`` quiet bins get more weight, because the embedder gave them larger
    gains. Noise added later fills exactly those bins, while the host's loud bins keep their
    (smaller) share of the mark; ``params.noise_gamma`` weighs bins evenly to read that
    share. The weights only depend on the audio, never on the key, so the null distribution
    is untouched.
    """
    spec = stft(x[None], params, params.hop // params.oversample)[0]
    power = spec.real.square() + spec.imag.square()
    log_power = torch.log(power + 1e-4 * power.mean() + 1e-20)
    band = slice(params.lo_bin, params.hi_bin)
    # Envelope: mean log-power of the bins within ±envelope_bins (all inside the spectrum).
    reach = params.envelope_bins
    running = torch.cat([torch.zeros_like(log_power[:1]), log_power.cumsum(0)])
    envelope = (
        running[band.start + reach + 1 : band.stop + reach + 1]
        - running[band.start - reach : band.stop - reach]
    ) / (2 * reach + 1)
    in_band = power[band]
    # Logs of the share, floored so that exact digital silence stays finite; powers of it
    # go through exp, which torch runs about five times faster than a fractional pow.
    log_relative = (in_band / (in_band.mean(0, keepdim=True) + 1e-20)).clamp(min=1e-30).log()
    frame_weight = _frame_weight(in_band, params)
    lag = params.frames_per_cell * params.oversample
    sets = []
    for gamma in gammas:
        weight = (-gamma * log_relative).exp().clamp(max=math.exp(params.max_gain) * 4.0)
        weight = weight * frame_weight
        whitened = (log_power[band] - envelope) * weight
        # The host's fine structure lingers for longer than a cell; the key's signs do not,
        # so subtracting the neighbouring cells' features removes host noise, not the mark.
        neighbours = torch.zeros_like(whitened)
        neighbours[:, lag:] += 0.5 * whitened[:, :-lag]
        neighbours[:, :-lag] += 0.5 * whitened[:, lag:]
        features = torch.zeros_like(log_power)
        features[band] = whitened - params.time_whitening * neighbours
        sets.append(features)
    return sets


def _frame_weight(in_band: torch.Tensor, params: KeyedParams) -> torch.Tensor:
    """Share of each frame's band energy above the chunk's noise floor.

    Noise added after marking (a noisy channel, a track mixed under) fills the quiet frames
    of sparse audio and wipes their mark out, yet their features are as large as anyone's;
    weighting frames by how far they stand above the floor keeps them from drowning the
    frames that still carry the mark. In clean audio the floor is near zero and every frame
    keeps its weight. It depends on the audio only, so the null distribution is untouched.
    """
    per_cell = params.frames_per_cell * params.oversample
    energy = in_band.sum(0)[None, None]
    smooth = torch.nn.functional.avg_pool1d(
        energy, per_cell, 1, padding=per_cell // 2, count_include_pad=False
    )[0, 0, : in_band.shape[1]]
    floor = _quantile(smooth, params.floor_quantile)
    return ((smooth - floor) / smooth.clamp(min=1e-20)).clamp(min=0.0)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) of a 1-D tensor from two order
    statistics, without sorting all of ``x``: the detector and the planner take one per pass."""
    position = q * (x.shape[0] - 1)
    below = int(position)
    low = torch.kthvalue(x, below + 1).values
    if below + 1 >= x.shape[0]:
        return low
    high = torch.kthvalue(x, below + 2).values
    return low + (high - low) * (position - below)


@dataclass(frozen=True)
class Hypothesis:
    """How the audio was stretched: observed time × ``time`` = original time, and likewise
    observed frequency ÷ ``freq`` = original frequency (1.0 = untouched)."""

    time: float
    freq: float


def hypotheses(params: KeyedParams) -> list[Hypothesis]:
    """The identity first, then tempo changes (pitch kept) and speed changes (pitch moves)."""
    found = [Hypothesis(1.0, 1.0)]
    for limit, moves_pitch in ((params.max_stretch, False), (params.max_speed, True)):
        steps = round(limit / params.stretch_step)
        for i in range(-steps, steps + 1):
            factor = 1.0 + i * params.stretch_step
            if i:
                found.append(Hypothesis(factor, factor if moves_pitch else 1.0))
    return found


def map_rows(cumulative: torch.Tensor, freq: float, params: KeyedParams) -> torch.Tensor:
    """Gather observed bins into the cell rows of the original, undoing a pitch shift.

    Row r holds original bins [lo + r·w, lo + (r+1)·w); after a pitch shift by ``freq`` they
    sit at observed bins [freq·(lo + r·w), freq·(lo + (r+1)·w)). ``cumulative`` is
    :func:`cumulative_bins` of the features, so each hypothesis costs O(rows · frames).
    """
    edges = params.lo_bin + params.bins_per_cell * torch.arange(params.rows + 1)
    bounds = torch.ceil(edges.double() * freq - 1e-9).long().clamp(0, cumulative.shape[0] - 1)
    return cumulative[bounds[1:]] - cumulative[bounds[:-1]]


def cumulative_bins(features: torch.Tensor) -> torch.Tensor:
    """Running sum over bins with a leading zero row: sums of bin ranges become differences."""
    return torch.cat([torch.zeros_like(features[:1]), features.cumsum(0)])


@dataclass(frozen=True)
class Alignment:
    """The best way found to lay the key's grid over the audio."""

    z: float
    hypothesis: Hypothesis
    offset: int  # detector slot at which the period starts
    cells: torch.Tensor  # (rows, cells_per_period) folded cell sums at that alignment


def _fold(rows_feat: torch.Tensor, time: float, params: KeyedParams) -> torch.Tensor:
    """Sum every detector frame into its slot of the period under a time stretch."""
    frames = torch.arange(rows_feat.shape[1], dtype=torch.float64)
    slot = torch.floor(frames * time).long() % params.slots
    folded = torch.zeros(rows_feat.shape[0], params.slots)
    folded.index_add_(1, slot, rows_feat)
    return folded


def _cell_views(folded: torch.Tensor, params: KeyedParams) -> torch.Tensor:
    """(..., rows, slots) → (..., phase, rows, cells): cell sums for every sub-cell phase."""
    per_cell = params.frames_per_cell * params.oversample
    summed = torch.cumsum(torch.cat([folded, folded[..., :per_cell]], -1), -1)
    boxed = summed[..., per_cell:] - summed[..., :-per_cell]  # slots s+1 .. s+per_cell
    boxed = torch.roll(boxed, 1, -1)  # now boxed[..., s] covers slots s .. s+per_cell-1
    views = boxed.unflatten(-1, (params.cells_per_period, per_cell))
    return views.movedim(-1, -3)


@dataclass(frozen=True)
class SyncSpectra:
    """FFTs of the sync pattern and its mask, computed once per key."""

    signs: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, pattern: KeyPattern) -> SyncSpectra:
        sync_signs = pattern.signs * pattern.sync
        return cls(
            torch.fft.rfft(sync_signs, dim=-1).conj(),
            torch.fft.rfft(sync_signs.abs(), dim=-1).conj(),
        )


def _correlate(views: torch.Tensor, spectra: SyncSpectra) -> torch.Tensor:
    """Normalised correlation for every phase and cell shift: (..., phase, shift)."""
    n = views.shape[-1]
    num = torch.fft.irfft(torch.fft.rfft(views, dim=-1) * spectra.signs, n=n, dim=-1)
    energy = torch.fft.rfft(views.square(), dim=-1) * spectra.mask
    den = torch.fft.irfft(energy, n=n, dim=-1)
    return num.sum(-2) / den.sum(-2).clamp(min=1e-12).sqrt()


def align(
    cumulative: torch.Tensor,
    spectra: SyncSpectra,
    params: KeyedParams,
    search: list[Hypothesis],
) -> tuple[Alignment, torch.Tensor]:
    """Score every hypothesis, phase and shift at once.

    ``cumulative`` is :func:`cumulative_bins` of :func:`detector_features`. Returns the best
    alignment and each hypothesis's best score (to refine a coarse search).
    """
    mapped: dict[float, torch.Tensor] = {}
    folded = torch.empty(len(search), params.rows, params.slots)
    for i, hyp in enumerate(search):
        if hyp.freq not in mapped:
            mapped[hyp.freq] = map_rows(cumulative, hyp.freq, params)
        folded[i] = _fold(mapped[hyp.freq], hyp.time, params)
    views = _cell_views(folded, params)
    scores = _correlate(views, spectra)  # (hypotheses, phases, shifts)
    per_hyp = scores.flatten(1).max(1).values
    h = int(torch.argmax(scores)) // (scores.shape[1] * scores.shape[2])
    return _best_alignment(scores[h], views[h], search[h], params), per_hyp


def _best_alignment(
    scores: torch.Tensor, views: torch.Tensor, hypothesis: Hypothesis, params: KeyedParams
) -> Alignment:
    """The best (phase, shift) of one hypothesis's ``scores`` (phases, shifts), with its cells."""
    phase, shift = divmod(int(torch.argmax(scores)), scores.shape[1])
    return Alignment(
        z=float(scores[phase, shift]),
        hypothesis=hypothesis,
        offset=shift * params.frames_per_cell * params.oversample + phase,
        cells=torch.roll(views[phase], -shift, 1),
    )


def align_untouched(
    cumulative: torch.Tensor,
    spectra: SyncSpectra,
    params: KeyedParams,
    stretches: list[tuple[int, int]],
) -> list[Alignment]:
    """:func:`align` under the untouched grid (no stretch) for many frame ranges at once.

    The strength planner scores every 8 s window and every 3 s excerpt of a chunk on every
    pass. Folding range [a, b) onto the period is a difference of running per-slot sums,
    rolled by where the range starts, so all ranges share one gather and one correlation
    instead of one :func:`align` each.
    """
    if not stretches:
        return []
    rows = map_rows(cumulative, 1.0, params).double()
    slots, frames = params.slots, rows.shape[1]
    periods = -(-frames // slots) + 1  # one spare period of zeros: a range may end at ``frames``
    padded = torch.nn.functional.pad(rows, (0, periods * slots - frames))
    by_period = padded.reshape(rows.shape[0], periods, slots)
    before = torch.cat([torch.zeros_like(by_period[:, :1]), by_period.cumsum(1)], 1)

    def running(t: int) -> torch.Tensor:  # per-slot sums of frames 0 .. t - 1
        period, slot = divmod(t, slots)
        head = torch.zeros_like(before[:, 0])
        if slot:
            head[:, :slot] = by_period[:, period, :slot]
        return before[:, period] + head

    folded = torch.stack(
        [torch.roll(running(b) - running(a), -(a % slots), -1) for a, b in stretches]
    ).float()
    views = _cell_views(folded, params)
    scores = _correlate(views, spectra)  # (stretches, phases, shifts)
    untouched = Hypothesis(1.0, 1.0)
    return [_best_alignment(s, v, untouched, params) for s, v in zip(scores, views, strict=True)]


def soft_bits(cells: torch.Tensor, pattern: KeyPattern) -> np.ndarray:
    """Per coded bit, the keyed sum of its cells: positive means the bit is more likely 1."""
    contrib = (cells * pattern.signs)[~pattern.sync]
    index = pattern.bit_index[~pattern.sync]
    soft = torch.zeros(coding.CODED_BITS).index_add_(0, index, contrib)
    return soft.double().numpy()


def _aligned_rows(
    cumulative: torch.Tensor, alignment: Alignment, params: KeyedParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-row features of every detector frame, and the slot of the period it falls in."""
    rows = map_rows(cumulative, alignment.hypothesis.freq, params)
    frames = torch.arange(rows.shape[1], dtype=torch.float64)
    slot = torch.floor(frames * alignment.hypothesis.time).long() - alignment.offset
    return rows, slot % params.slots


def _sliding_scores(
    rows: torch.Tensor,
    slot: torch.Tensor,
    signs: torch.Tensor,
    params: KeyedParams,
    window_frames: int,
) -> torch.Tensor:
    per_cell = params.frames_per_cell * params.oversample
    frame_signs = signs[:, slot // per_cell]
    num = (frame_signs * rows).sum(0)
    den = (frame_signs.abs() * rows.square()).sum(0)
    kernel = torch.ones(1, 1, window_frames)
    pad = window_frames // 2
    smooth_num = torch.nn.functional.conv1d(num[None, None], kernel, padding=pad)[0, 0]
    smooth_den = torch.nn.functional.conv1d(den[None, None], kernel, padding=pad)[0, 0]
    return (smooth_num / smooth_den.clamp(min=1e-12).sqrt() / math.sqrt(per_cell))[: rows.shape[1]]


def local_scores(
    cumulative: torch.Tensor,
    alignment: Alignment,
    signs: torch.Tensor,
    params: KeyedParams,
    window_frames: int,
) -> torch.Tensor:
    """Normalised correlation of a sliding window centred on each detector frame.

    ``signs`` are the cell signs to look for (sync only, or sync and the decoded payload).
    """
    rows, slot = _aligned_rows(cumulative, alignment, params)
    return _sliding_scores(rows, slot, signs, params, window_frames)


def reliable_cells(
    cumulative: torch.Tensor,
    alignment: Alignment,
    sync_signs: torch.Tensor,
    params: KeyedParams,
    window_frames: int,
) -> torch.Tensor:
    """Cell sums for decoding the payload, each frame weighted by how clearly the sync shows.

    After noise or a mix, the mark survives in some stretches and not in others. Weighting
    each frame by the local sync correlation around it (maximal-ratio combining) keeps the
    payload's soft bits from being averaged with stretches that carry nothing. The weights
    use the key, which is fine here: the p-value comes from the sync alone, and a wrongly
    decoded payload is caught by its CRC.
    """
    rows, slot = _aligned_rows(cumulative, alignment, params)
    weight = _sliding_scores(rows, slot, sync_signs, params, window_frames).clamp(min=0)
    folded = torch.zeros(rows.shape[0], params.slots).index_add_(1, slot, rows * weight)
    per_cell = params.frames_per_cell * params.oversample
    return folded.reshape(rows.shape[0], params.cells_per_period, per_cell).sum(-1)
