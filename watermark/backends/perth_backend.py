"""Resemble AI's PerthNet watermark (``resemble-perth``) behind the audioguard contract.

Resemble's TTS models mark their output with PerthNet, so a platform that runs this backend can
recognise that audio. The mark carries no payload: it is present or not.

How PerthNet works (read from the installed package): audio is resampled to 32 kHz and turned
into a log-magnitude STFT (2048-point Hann window, 10 ms hop). The encoder adds a learned
residual to the bins below 2 kHz of every frame louder than 5% of the loudest one, and the
phase is kept. The decoder runs three 1-D conv stacks over those bins and returns one number
per input, a masked mean over frames that is about 1 for marked audio and about 0 for most
unmarked audio. Perth itself rounds that number; we keep it raw and call it the *score*.

What this module adds:

- No network and no pickle: the weights are read from the wheel with ``weights_only=True``,
  and only Perth's model code is imported (its package ``__init__`` pulls in librosa and
  ``pkg_resources`` to resample, which we do with torchaudio instead).
- Any rate: the mark is computed at 32 kHz and only its *difference* is resampled back and
  added at the native rate, so content above 2 kHz (all of a 48 kHz file's top octaves) is
  left bit-for-bit alone apart from float rounding.
- Channels: each channel is marked on its own (the mark follows each channel's content and a
  silent channel stays silent); detection runs on the mono mix, one test per file (where
  the channels cancel in antiphase, on the loudest channel instead: :mod:`watermark.channels`).
- Time resolution: Perth scores a whole excerpt, so detection slides a 2 s window with a 1 s
  hop, and each test takes the median of 3 consecutive windows (4 s); stretches that pass on
  their own become the segments. The median is there because tonal music often makes one
  window score as high as marked audio, but seldom three in a row.
- Honest p-values: a stretch's p-value is the fraction of unmarked 4 s stretches (speech,
  music, effects, noise; see ``perth_calibration.json`` and ``scripts/calibrate_perth.py``)
  that score at least as high, with a conservative exponential tail beyond the data. A
  file's p-value (``file_p_value``) is the best stretch's times the number of stretches
  (Bonferroni, for a short mark); from 16 stretches (about 19 s) on, it is the smaller of
  that and a count test for a long mark, each on half the level. The count test uses the
  share of stretches that pass ``STRETCH_LEVEL``, whose tail Markov's inequality bounds
  whatever the stretches' dependence. Both stay valid at any length (the
  chance that unmarked audio gets a p-value below ``t`` is at most ``t``), and a file marked
  throughout keeps a p-value of about 0.02 however long it is, where Bonferroni alone lost
  it past about 100 s. Segments are the stretches that pass ``STRETCH_LEVEL`` on their own, a
  level that does not tighten as the file grows.
- Pure tones: PerthNet's decoder scores DC, a sine or a sweep like marked audio, so a window
  with nearly all its energy in one partial is scored unmarked (``TONE_SHARE``).
- Long inputs are processed in chunks, so memory does not grow with duration.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from watermark.channels import mix_down
from watermark.offset import without_offset
from watermark.resampling import resample
from watermark.types import Detection, EmbedResult, Segment, WatermarkError
from watermark.types import snr_db as _snr_db

CALIBRATION_PATH = Path(__file__).with_name("perth_calibration.json")
WINDOW_SECONDS = 2.0
"""Length of one scored excerpt: long enough that unmarked speech stays well below marked."""
HOP_SECONDS = 1.0
SPAN = 3
"""Windows per test: a test's score is the median Perth score of 3 consecutive windows (4 s).
Tonal music makes single windows score as high as marked audio; it rarely does so in three
windows running, while a mark does, so the median cuts the null's tail where a max would not."""
MIN_SECONDS = 0.5
"""Shorter inputs are zero-padded to one window; below this there is too little to score."""
EMBED_CHUNK_SECONDS = 30.0
EMBED_MARGIN_SECONDS = 1.0
"""Context on each side of an embed chunk: more than the encoder's 0.31 s receptive field."""
WINDOWS_PER_BATCH = 16
TONE_SHARE = 0.999
"""A window with at least this share of its energy in one partial (``_tone_share``) is scored
unmarked. PerthNet's decoder reads its mark into a near-pure tone: DC, a 100 Hz, 440 Hz or
2 kHz sine, a sweep or an amplitude-modulated tone score 0.8 to 1.0 unmarked, as high as
marked speech, and a test tone showed "marks: perth" in scan. A mark cannot be told from such
a tone there, so nothing real is lost. Every 2 s window of 1,200 benchmark-corpus clips (400
of each kind; Perth's calibration used the first 200) stays below 0.996, so the
calibration and the detection rates are untouched; a tone under noise 30 dB down (0.998)
still slips through."""
TONE_FFT = 2048
TONE_BINS = 7
"""The partial's band at each frame's peak: 7 bins of 15.6 Hz at Perth's 32 kHz, wide enough
for a Hann window's main lobe and a slow sweep."""
_ALIAS = "_audioguard_perth_implicit"
_WEIGHTS = "perth_net_250000.pth.tar"


# ---------------------------------------------------------------------------------------------
# Loading PerthNet from the wheel, offline


def _perth_model_package() -> Path:
    """Import ``perth.perth_net.perth_net_implicit`` under a private name; return its weights dir.

    Going through ``perth``'s own package imports librosa (for resampling) and
    ``pkg_resources`` (to find the weights); neither is needed to run the model, so only the
    model sub-package is loaded, straight from its files in the installed wheel.
    """
    spec = importlib.util.find_spec("perth")
    if spec is None or spec.origin is None:
        raise WatermarkError(
            "the perth backend needs the resemble-perth package: pip install resemble-perth==1.0.1"
        )
    perth_net_dir = Path(spec.origin).parent / "perth_net"
    if _ALIAS not in sys.modules:
        package_dir = perth_net_dir / "perth_net_implicit"
        pkg_spec = importlib.util.spec_from_file_location(
            _ALIAS, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        if pkg_spec is None or pkg_spec.loader is None:
            raise WatermarkError(f"cannot load PerthNet's code from {package_dir}")
        module = importlib.util.module_from_spec(pkg_spec)
        sys.modules[_ALIAS] = module
        pkg_spec.loader.exec_module(module)
    return perth_net_dir / "pretrained" / "implicit"


@functools.cache
def load_perthnet() -> torch.nn.Module:
    """PerthNet with the weights shipped in the wheel, in eval mode, loaded once per process."""
    weights_dir = _perth_model_package()
    config = importlib.import_module(f"{_ALIAS}.config")
    model = importlib.import_module(f"{_ALIAS}.model.perth_net")
    hparams = yaml.safe_load((weights_dir / "hparams.yaml").read_text())
    net = model.PerthNet(config.PerthConfig(**hparams))
    checkpoint = torch.load(weights_dir / _WEIGHTS, map_location="cpu", weights_only=True)
    net.load_state_dict(checkpoint["model"])
    return net.eval()


def perth_rate() -> int:
    return int(load_perthnet().hp.sample_rate)


# ---------------------------------------------------------------------------------------------
# Embedding


@torch.inference_mode()
def perth_residual(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PerthNet's mark for a 1-D signal at Perth's rate, as an additive waveform.

    Returns ``(residual, active)``: ``x + residual`` is what Perth's own ``apply_watermark``
    produces (up to its STFT round trip, which cancels here), and ``active`` flags the 10 ms
    frames the encoder chose to mark. Only bins below 2 kHz change, so the residual is
    band-limited and can be resampled to any rate without losing the mark.
    """
    net = load_perthnet()
    utils = importlib.import_module(f"{_ALIAS}.utils")
    mag, phase = net.ap.signal_to_magphase(x)
    marked, mask = net.encoder(mag[None])
    spec = utils.magphase_to_cx(net.hp, marked[0], phase) - utils.magphase_to_cx(net.hp, mag, phase)
    return net.ap.inv_spectrogram(spec, length=x.shape[-1]), mask[0, 0] > 0


def _fit_length(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:n] if x.shape[-1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def _mark_channel(x: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, float]:
    """Mark one channel at its native rate, chunk by chunk; returns it and the marked seconds."""
    rate = perth_rate()
    n = x.shape[-1]
    chunk = int(EMBED_CHUNK_SECONDS * sample_rate)
    margin = int(EMBED_MARGIN_SECONDS * sample_rate)
    out = x.clone()
    active_frames = 0
    hop_seconds = load_perthnet().hp.hop_size / rate
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lo, hi = max(0, start - margin), min(n, stop + margin)
        host = resample(x[lo:hi], sample_rate, rate) if sample_rate != rate else x[lo:hi]
        residual, active = perth_residual(without_offset(host, rate))  # see watermark.offset
        if sample_rate != rate:
            residual = resample(residual, rate, sample_rate)
        residual = _fit_length(residual, hi - lo)
        out[start:stop] += residual[start - lo : stop - lo]
        frame_times = lo / sample_rate + torch.arange(active.shape[0]) * hop_seconds
        inside = (frame_times >= start / sample_rate) & (frame_times < stop / sample_rate)
        active_frames += int((active & inside).sum())
    return out, active_frames * hop_seconds


def mark_audio(audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, float]:
    """Mark each channel of ``(channels, samples)``; returns it and the seconds that carry it."""
    marked = [_mark_channel(channel, sample_rate) for channel in audio.float()]
    return torch.stack([m for m, _ in marked]), max(seconds for _, seconds in marked)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class WindowScores:
    """Perth's raw score for each window of a signal; ``starts`` and ``length`` in seconds."""

    starts: np.ndarray
    scores: np.ndarray
    length: float


def _window_starts(n: int, size: int, hop: int) -> list[int]:
    """Window starts (Perth-rate samples) that cover the signal; the last one ends at its end."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size + 1, hop))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


@torch.inference_mode()
def _decode(windows: torch.Tensor) -> np.ndarray:
    net = load_perthnet()
    mag, _ = net.ap.signal_to_magphase(windows)
    scores = net.decoder(mag).double().numpy()
    scores[_tone_share(windows).numpy() >= TONE_SHARE] = 0.0
    # the decoder averages over frames louder than 5% of the loudest; in digital silence no
    # frame qualifies and it divides 0 by 0. Silence carries no mark, so it scores as unmarked.
    return np.nan_to_num(scores, nan=0.0)


def _tone_share(windows: torch.Tensor) -> torch.Tensor:
    """The share of each window's energy that lies in one partial: in every 64 ms frame, the
    ``TONE_BINS`` around the strongest bin, summed over frames, over the window's energy
    (digital silence: 0). About 1 for a sine, DC or a sweep, 0.55 for median speech."""
    window = torch.hann_window(TONE_FFT, dtype=torch.float64)
    power = (
        torch.stft(
            windows.double(),
            TONE_FFT,
            TONE_FFT // 2,
            window=window,
            center=False,
            return_complex=True,
        )
        .abs()
        .square()
    )  # (batch, bins, frames)
    bands = torch.nn.functional.avg_pool1d(
        power.transpose(1, 2).reshape(-1, 1, power.shape[1]), TONE_BINS, 1, TONE_BINS // 2
    )
    partial = bands.reshape(power.shape[0], power.shape[2], -1).amax(-1).sum(-1) * TONE_BINS
    return partial / power.sum((1, 2)).clamp_min(1e-30)


def _to_perth_rate(mono: torch.Tensor, sample_rate: int, lo: int, hi: int) -> torch.Tensor:
    """Samples ``[lo, hi)`` of the Perth-rate version of ``mono``, resampled from the native
    signal around them only, so that memory stays bounded for long inputs."""
    rate = perth_rate()
    if sample_rate == rate:
        return _fit_length(mono[lo:hi], hi - lo)
    g = math.gcd(sample_rate, rate)
    step_native, step_perth = sample_rate // g, rate // g
    block = lo // step_perth
    pad_blocks = 1 + 256 // step_native
    first = max(0, block - pad_blocks)
    native_lo = first * step_native
    native_hi = min(mono.shape[-1], math.ceil(hi * sample_rate / rate) + pad_blocks * step_native)
    up = resample(mono[native_lo:native_hi], sample_rate, rate)
    offset = lo - first * step_perth
    return _fit_length(up[offset:], hi - lo)


def window_scores(audio: torch.Tensor, sample_rate: int) -> WindowScores:
    """Score 2 s windows (1 s hop) of the mono mix; a short input is one zero-padded window.

    Silence added by the padding is ignored by Perth's decoder (it only averages frames
    louder than 5% of the loudest), so a short clip is scored on its own sound.
    """
    rate = perth_rate()
    mono = mix_down(audio.float())
    n = math.ceil(mono.shape[-1] * rate / sample_rate)
    size, hop = int(WINDOW_SECONDS * rate), int(HOP_SECONDS * rate)
    starts = _window_starts(n, size, hop)
    scores = []
    for i in range(0, len(starts), WINDOWS_PER_BATCH):
        batch = starts[i : i + WINDOWS_PER_BATCH]
        span = _to_perth_rate(mono, sample_rate, batch[0], batch[-1] + size)
        windows = torch.stack([_fit_length(span[s - batch[0] :], size) for s in batch])
        scores.append(_decode(windows))
    return WindowScores(np.asarray(starts) / rate, np.concatenate(scores), WINDOW_SECONDS)


def stretch_scores(windows: WindowScores, duration: float) -> WindowScores:
    """Median score of each run of ``SPAN`` consecutive windows: the unit that is tested.

    An input with fewer windows is one test over all of them.
    """
    count = len(windows.scores)
    span = min(SPAN, count)
    runs = np.lib.stride_tricks.sliding_window_view(windows.scores, span)
    length = min(duration, (span - 1) * HOP_SECONDS + WINDOW_SECONDS)
    return WindowScores(windows.starts[: count - span + 1], np.median(runs, axis=1), length)


# ---------------------------------------------------------------------------------------------
# Calibration: raw score -> p-value


@dataclass(frozen=True)
class NullModel:
    """The calibrated null distribution of one stretch's score (see ``stretch_scores``).

    Inside the data a p-value is the empirical upper-tail fraction ``(k + 1) / (N + 1)``;
    beyond the largest null score it decays exponentially with the tail's scale taken at its
    95% upper confidence bound, so it is never zero and errs large.
    """

    tail_scores: np.ndarray  # the highest null scores, sorted ascending
    count: int  # N, all null stretches
    tail_scale: float  # conservative exponential scale beyond the data
    threshold: float  # default p-value threshold for a decision

    @classmethod
    def load(cls, path: Path = CALIBRATION_PATH) -> NullModel:
        if not path.exists():
            raise WatermarkError(
                f"the perth backend is not calibrated: {path.name} is missing "
                "(run scripts/calibrate_perth.py)"
            )
        data = json.loads(path.read_text())
        null = data["null"]
        return cls(
            tail_scores=np.sort(np.asarray(null["tail_scores"], dtype=np.float64)),
            count=int(null["stretches"]),
            tail_scale=float(null["tail_fit"]["scale_upper95"]),
            threshold=float(data["decision"]["p_threshold"]),
        )

    def p_value(self, score: float) -> float:
        """Chance that one unmarked stretch scores at least ``score``."""
        if not math.isfinite(score):
            return 1.0
        tail = self.tail_scores
        floor = 1.0 / (self.count + 1)
        if score > tail[-1]:
            return floor * math.exp(-(score - tail[-1]) / self.tail_scale)
        above = tail.shape[0] - int(np.searchsorted(tail, score, side="left"))
        if above == tail.shape[0]:
            return 1.0  # below the stored tail: not evidence of a mark
        return (above + 1) / (self.count + 1)


STRETCH_LEVEL = 0.01
"""Per-stretch p-value at which a 4 s stretch counts as carrying the mark, in the count test of
``file_p_value`` and for segments; the same at every length. Unmarked stretches reach it at
most 1% of the time (that is how the calibration's p-values are built: scores of about 0.97 and
up); of marked stretches, 93-100% of speech and effects and 75-90% of music do (they score
about 1.0, p 5e-4 to 5e-3). 0.005 would give marked files slightly smaller p-values, but it
sits just under the p of a score of 1.0, so any edit that lowered the score a little would
drop marked stretches out of the count."""
COUNT_MIN_STRETCHES = 16
"""Inputs with fewer stretches than this (shorter than about 19 s) get the short-mark test
alone. There the count test could not help: its p-value is at least ``STRETCH_LEVEL`` over its
share of the level (0.02), which Bonferroni over fewer than 16 marked stretches (p about
7.5e-4 at best) already matches, and splitting the level would cost short clips power."""
SHORT_MARK_SHARE = 0.5
"""Share of the level given to the short-mark (Bonferroni) test when both tests run; the count
test gets the rest. At 0.5 the count test flags a file at p < 0.05 once 40% of its stretches
pass ``STRETCH_LEVEL``: a file marked throughout (75-100% pass) gets p 0.02-0.027 at any
length, and a 5-minute file needs about 45% of it marked. A smaller share would find files
marked over less of their length, but at 0.3 the two bundled tonal music clips that Perth
already flags at 7-8 s (30 of their stretches in 100 pass) were flagged looped to 2 minutes
too (p 0.049 and 0.058), which Bonferroni alone never did; at 0.5 they read p 0.068 and 0.081."""


def file_p_value(stretch_p: np.ndarray) -> tuple[float, float, float]:
    """A file's p-value from its stretches' p-values: ``(file, short_mark, count)``.

    Two tests, both valid under *any* dependence between stretches (they overlap, and a piece
    of music scores alike from one stretch to the next, so independence cannot be assumed):

    - short mark: ``m * min(p)`` over the ``m`` stretches (Bonferroni). It finds a mark a few
      seconds long, but since one stretch's p-value has a floor (about 5e-4 for marked audio,
      from the finite null), it grows with ``m`` and misses whole files past about 100 s.
    - long mark: with ``k`` of the ``m`` stretches at ``p <= STRETCH_LEVEL``, ``p = m * level /
      k``. Under the null each stretch passes with chance at most ``level``, so the expected
      count is at most ``m * level`` and Markov's inequality gives ``P(count >= k) <= m * level
      / k`` whatever the dependence. A file marked throughout has ``k`` close to ``m``, so its
      p-value stays near ``level`` at any length. (Independence would allow far smaller
      p-values, but a long piece of tonal music would then be a near-certain false alarm.)

    From ``COUNT_MIN_STRETCHES`` stretches on, the file's p-value is the smaller of the two,
    each divided by the share of the level it was given (``SHORT_MARK_SHARE`` and the rest: a
    weighted Bonferroni over the two tests, so it stays valid); below that, the short-mark
    test alone, as before. A long mark's p-value is therefore never below twice
    ``STRETCH_LEVEL``, so policies at p < 0.001 never act on Perth alone: a hint, not proof.
    """
    m = len(stretch_p)
    short_mark = min(1.0, m * float(np.min(stretch_p)))
    if m < COUNT_MIN_STRETCHES:
        return short_mark, short_mark, 1.0
    passing = int(np.count_nonzero(stretch_p <= STRETCH_LEVEL))
    count = min(1.0, m * STRETCH_LEVEL / passing) if passing else 1.0
    combined = min(short_mark / SHORT_MARK_SHARE, count / (1.0 - SHORT_MARK_SHARE))
    return min(1.0, combined), short_mark, count


def scores_to_detection(
    stretches: WindowScores, null: NullModel, threshold: float, duration: float
) -> Detection:
    """Turn stretch scores into a file-level answer (``file_p_value``) and its segments.

    The segments of a detected file are the stretches that carry the mark on their own
    evidence: ``p <= STRETCH_LEVEL``, a level that does not tighten as the file grows, or
    a pass of the short-mark test by themselves (what decides a short clip).
    """
    stretch_p = np.array([null.p_value(float(s)) for s in stretches.scores])
    m = len(stretch_p)
    p_value, short_mark, count = file_p_value(stretch_p)
    detected = p_value < threshold
    share = 1.0 if m < COUNT_MIN_STRETCHES else SHORT_MARK_SHARE
    level = max(STRETCH_LEVEL, np.nextafter(share * threshold / m, 0.0))
    passing = (stretch_p <= level) if detected else np.zeros(m, dtype=bool)
    best = int(np.argmin(stretch_p))
    return Detection(
        backend=PerthBackend.name,
        detected=bool(detected),
        p_value=float(p_value),
        payload=None,
        segments=_merge(stretches.starts[passing], stretches.length, duration),
        score=float(stretches.scores[best]),
        details={
            "stretches": float(m),
            "stretches_at_level": float(np.count_nonzero(stretch_p <= STRETCH_LEVEL)),
            "p_short_mark": short_mark,
            "p_count": count,
            "p_threshold": threshold,
        },
    )


def _merge(starts: np.ndarray, length: float, duration: float) -> tuple[Segment, ...]:
    """Union of overlapping passing stretches, clipped to the input."""
    segments: list[Segment] = []
    for start in np.sort(starts):
        end = min(duration, float(start) + length)
        if segments and start <= segments[-1].end:
            segments[-1] = Segment(segments[-1].start, max(segments[-1].end, end))
        else:
            segments.append(Segment(float(start), end))
    return tuple(segments)


# ---------------------------------------------------------------------------------------------
# The backend


def _check(audio: torch.Tensor, sample_rate: int) -> None:
    if audio.ndim != 2 or audio.shape[0] == 0:
        raise WatermarkError("audio must be shaped (channels, samples)")
    if sample_rate <= 0:
        raise WatermarkError(f"invalid sample rate {sample_rate}")
    if audio.shape[1] < MIN_SECONDS * sample_rate:
        raise WatermarkError(
            f"the perth watermark needs at least {MIN_SECONDS} s of audio, "
            f"got {audio.shape[1] / sample_rate:.2f} s"
        )


class PerthBackend:
    """PerthNet embed and blind detect; presence only, so ``payload`` is always ``None``."""

    name = "perth"

    def __init__(self, threshold: float | None = None) -> None:
        """``threshold`` is the p-value below which a mark is reported; by default the one
        the calibration file says Perth can support."""
        self.null = NullModel.load()
        self.threshold = self.null.threshold if threshold is None else threshold

    def embed(self, audio: torch.Tensor, sample_rate: int, payload: str | None) -> EmbedResult:
        """Mark every channel, then check that the mark reads back.

        PerthNet carries no payload, so one given is refused: accepting it silently would
        let a caller believe an ID was embedded that no detector can ever read.
        """
        if payload is not None:
            raise WatermarkError("the Perth watermark carries no payload; leave the payload out")
        _check(audio, sample_rate)
        host = audio.float()
        marked, seconds = mark_audio(host, sample_rate)
        verification = self.detect(marked, sample_rate)
        if not verification.detected:
            raise WatermarkError(
                "the Perth watermark did not read back from the marked audio "
                f"(p = {verification.p_value:.2g}); the audio may be too quiet or too short"
            )
        return EmbedResult(
            audio=marked,
            sample_rate=sample_rate,
            marked_seconds=seconds,
            snr_db=_snr_db(host, marked),
            verification=verification,
        )

    def detect(self, audio: torch.Tensor, sample_rate: int) -> Detection:
        """Blind detection on the mono mix in 4 s tests; see the module docstring."""
        _check(audio, sample_rate)
        duration = audio.shape[1] / sample_rate
        tests = stretch_scores(window_scores(audio, sample_rate), duration)
        return scores_to_detection(tests, self.null, self.threshold, duration)
