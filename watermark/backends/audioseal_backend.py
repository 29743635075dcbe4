"""Meta's AudioSeal as an audioguard watermark backend: a public 16-bit mark, found per sample.

AudioSeal is a generator that adds a learned watermark and a detector that says, for every
sample, whether the mark is there and which 16 bits it carries. Anyone with the detector can
check for the mark, which is the point of a public mark (and why the keyed backend exists for
marks that must not be checkable). This module wraps the ``audioseal`` package's architecture
in audioguard's contract:

- Weights are loaded without unpickling code: the official ``.pth`` checkpoints only through
  ``torch.load(weights_only=True)`` with an explicit allow-list of the omegaconf types inside
  them, everything we write or ship as safetensors (the model config rides in the safetensors
  metadata, so a file is self-describing).
- The model runs at 16 kHz. Any other rate is resampled down, the watermark is computed there,
  and only the watermark (marked minus input) is resampled back and added, through a sharp
  Kaiser-windowed filter, so content above 8 kHz is never touched. torchaudio's default filter
  lets the mark's top band through as images at 8-9 kHz; a pair trained with a band limit
  (``mark_band_hz`` in its metadata) keeps its mark below that limit, so the sharp filter
  costs it nothing.
- Long audio is cut into blocks with a second of context on each side, run in small batches,
  and reduced to 10 ms frames at once, so memory does not grow with duration.
- ``p_value`` comes from an empirical null distribution of the window score stored in the
  weights' card (see ``calibrate``), not from the detector's raw frame fraction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # audioseal wraps forward passes in torch.compile

import torch  # noqa: E402
from audioseal.builder import (  # noqa: E402
    AudioSealDetectorConfig,
    AudioSealWMConfig,
    create_detector,
    create_generator,
)
from audioseal.loader import (  # noqa: E402
    AudioSeal,
    convert_state_dict_for_scriptable_model,
    load_local_model_config,
    load_state_dict,
)
from audioseal.models import AudioSealDetector, AudioSealWM  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from scipy.stats import chi2  # noqa: E402

from watermark.offset import without_offset  # noqa: E402
from watermark.resampling import resample  # noqa: E402
from watermark.types import (  # noqa: E402
    Detection,
    EmbedResult,
    Segment,
    WatermarkError,
    snr_db,
)

MODEL_RATE = 16_000
NBITS = 16
FRAME = 160
"""Samples per 10 ms frame at 16 kHz: the unit of segments and of the window score."""
WINDOW_FRAMES = 100
"""The score is computed over 1 s windows; the null distribution is of 1 s windows too."""
MIN_SECONDS = WINDOW_FRAMES * FRAME / MODEL_RATE
"""Shorter audio is not judged: no calibrated window fits in it."""
HOP_FRAMES = 50
BLOCK_SECONDS = 20
CONTEXT_SECONDS = 1
BATCH_BLOCKS = 4
LOGIT_CLIP = 20.0
"""Frame log-odds are clipped so one saturated frame cannot dominate a window's mean."""
P_THRESHOLD = 1e-3
"""Reported as detected below this p-value; see the card for why not the keyed mark's 1e-6."""
GAP_SECONDS = 0.3
MIN_SEGMENT_SECONDS = 0.2
ENVELOPE_FLOOR = 1e-5
"""Added to the envelope in ``normalize_to_envelope`` so near-silence is not blown up."""
NORMALIZED_INPUT = "normalize_to_envelope"
"""Metadata value of ``input`` for models trained on ``normalize_to_envelope``'s output."""
MARK_RESAMPLE_FILTER = {
    "lowpass_filter_width": 64,
    "rolloff": 0.99,
    "resampling_method": "sinc_interp_kaiser",
    "beta": 14.769656459379492,
}
"""How the 16 kHz mark goes back to the native rate (torchaudio's "kaiser_best" window, beta
included): stopband from about 8.05 kHz. Measured on a 44.1 kHz host: 4e-6 of the host's own
energy above 8.5 kHz, against 0.7 with torchaudio's default filter."""
SILENCE_LEVEL = 2.0**-16
"""Below half a 16-bit step every sample of a 10 ms frame is digital silence: left unmarked."""

SMALL_DIR = Path(__file__).parent / "audioseal_small"
HF_REPO = "facebook/audioseal"
OFFICIAL_FILES = {"generator": "generator_base.pth", "detector": "detector_base.pth"}
SAFETENSORS_FILES = {"generator": "generator.safetensors", "detector": "detector.safetensors"}
CARDS = {"generator": "audioseal_wm_16bits", "detector": "audioseal_detector_16bits"}


# ---------------------------------------------------------------------------------------------
# Weights


def _omegaconf_allow_list() -> list[Any]:
    """The only globals an official AudioSeal checkpoint may name: its omegaconf config types."""
    import collections
    import typing

    from omegaconf import base, dictconfig, listconfig, nodes

    return [
        dictconfig.DictConfig,
        listconfig.ListConfig,
        base.ContainerMetadata,
        base.Metadata,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
        float,
        str,
        bool,
    ]


def _load_pth(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official checkpoint's state dict and training config, never executing pickle code."""
    from omegaconf import DictConfig, OmegaConf

    try:
        with torch.serialization.safe_globals(_omegaconf_allow_list()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or OSError here
        raise WatermarkError(
            f"{path} is not a checkpoint that can be loaded safely (weights_only=True with "
            f"omegaconf types allowed): {str(exc).splitlines()[0]}"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise WatermarkError(f"{path} does not hold an AudioSeal state dict")
    config = checkpoint.get("xp.cfg", {})
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config)
    state = checkpoint.get("best_state", {}).get("model") or checkpoint.get("model") or checkpoint
    return state, dict(config)


def _kind_of(state: dict[str, torch.Tensor]) -> str:
    return "detector" if any(k.startswith("detector.") for k in state) else "generator"


def build_model(kind: str, config: dict[str, Any]) -> AudioSealWM | AudioSealDetector:
    """An untrained model of the card's architecture, weight norm folded away as AudioSeal does."""
    if kind == "generator":
        return create_generator(AudioSeal.parse_config(config, AudioSealWMConfig))
    return create_detector(AudioSeal.parse_config(config, AudioSealDetectorConfig))


def _resolved_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config as the builder sees it, so a safetensors file can be rebuilt from it alone."""
    from omegaconf import OmegaConf

    schema = AudioSealWMConfig if kind == "generator" else AudioSealDetectorConfig
    return OmegaConf.to_container(AudioSeal.parse_config(config, schema))


def _model_from_pth(path: Path) -> tuple[str, torch.nn.Module, dict[str, Any]]:
    state, xp_config = _load_pth(path)
    kind = _kind_of(state)
    card = load_local_model_config(CARDS[kind])
    config = {**xp_config, **{k: v for k, v in dict(card).items() if k != "checkpoint"}}
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.create(config))
    model = build_model(kind, config)
    if not any("inner_conv" in k for k in state):  # published before the scriptable rewrite
        state = convert_state_dict_for_scriptable_model(state)
    load_state_dict(model, state)
    return kind, model, _resolved_config(kind, config)


def save_model(
    model: torch.nn.Module,
    kind: str,
    config: dict[str, Any],
    path: Path,
    envelope_snr_db: float | None = None,
    normalized_input: bool = False,
    mark_band_hz: float | None = None,
) -> None:
    """Write a model as safetensors with its kind and config in the metadata, and how its
    input and output are scaled (``normalize_to_envelope``, ``shape_to_envelope``) and band
    limited (``brick_wall``) if they are."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"kind": kind, "config": json.dumps(config)}
    if envelope_snr_db is not None:
        meta["envelope_snr_db"] = str(envelope_snr_db)
    if mark_band_hz is not None:
        meta["mark_band_hz"] = str(mark_band_hz)
    if normalized_input:
        meta["input"] = NORMALIZED_INPUT
    save_file(state, str(path), metadata=meta)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _model_from_safetensors(path: Path) -> tuple[str, torch.nn.Module]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta or "kind" not in meta:
        raise WatermarkError(f"{path} has no AudioSeal config in its metadata")
    model = build_model(meta["kind"], json.loads(meta["config"]))
    model.load_state_dict(load_file(str(path)))
    return meta["kind"], model


def convert_official_checkpoint(pth_path: str | Path, out_path: str | Path) -> Path:
    """Convert one official ``.pth`` (generator or detector) to safetensors plus a JSON card.

    Run once; afterwards nothing pickled is read again. The card (``out_path`` with ``.json``)
    records what was converted. Name the outputs ``generator.safetensors`` and
    ``detector.safetensors`` in one folder to load that folder as ``weights``.
    """
    pth_path, out_path = Path(pth_path), Path(out_path)
    kind, model, config = _model_from_pth(pth_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, kind, config, out_path)
    card = {"kind": kind, "converted_from": pth_path.name, "source": HF_REPO, "config": config}
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return out_path


@dataclass
class _Pair:
    """A loaded generator and detector, the calibration that belongs to them, and their name."""

    generator: AudioSealWM
    detector: AudioSealDetector
    calibration: dict[str, Any] | None
    source: str
    envelope_snr_db: float | None = None
    normalized_input: bool = False
    mark_band_hz: float | None = None


def _missing_official(folder: Path) -> WatermarkError:
    names = " and ".join(OFFICIAL_FILES.values())
    return WatermarkError(
        f"AudioSeal's official weights are not in {folder}: download {names} from the Hugging "
        f"Face repository {HF_REPO} (https://huggingface.co/{HF_REPO}) and put both files in "
        f"{folder}, or use the small pair audioguard ships (--weights small on the command "
        "line, weights='small' in Python)"
    )


def _hf_cache_folders() -> list[Path]:
    """Where a previous Hugging Face download of the official weights may already be."""
    hub = (
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    snapshots = Path(hub) / "models--facebook--audioseal" / "snapshots"
    folders = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [*folders, Path.home() / ".cache" / "audioseal"]


def _has(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).is_file() for name in files.values())


def _read_calibration(folder: Path) -> dict[str, Any] | None:
    card = folder / "card.json"
    return json.loads(card.read_text()).get("calibration") if card.is_file() else None


def _band_limit(value: str, folder: Path) -> float:
    """The band a generator was trained to keep its mark in; a limit that leaves no band would
    make every embed fail with a misleading "did not read back", so it is refused here."""
    try:
        band = float(value)
    except ValueError:
        band = math.nan
    if not 0 < band <= MODEL_RATE / 2:
        raise WatermarkError(
            f"{folder}: the generator's mark_band_hz is {value!r}, not a frequency between 0 "
            f"and {MODEL_RATE // 2} Hz"
        )
    return band


def _load_folder(folder: Path, source: str) -> _Pair:
    envelope, normalized, band = None, False, None
    if _has(folder, SAFETENSORS_FILES):
        models = dict(_model_from_safetensors(folder / n) for n in SAFETENSORS_FILES.values())
        meta = {k: _metadata(folder / n) for k, n in SAFETENSORS_FILES.items()}
        if "envelope_snr_db" in meta["generator"]:
            envelope = float(meta["generator"]["envelope_snr_db"])
        if "mark_band_hz" in meta["generator"]:
            band = _band_limit(meta["generator"]["mark_band_hz"], folder)
        inputs = {m.get("input") for m in meta.values()}
        if len(inputs) != 1:
            raise WatermarkError(f"{folder}: the generator and detector expect different inputs")
        normalized = inputs == {NORMALIZED_INPUT}
    elif _has(folder, OFFICIAL_FILES):
        models = {
            k: m for k, m, _ in (_model_from_pth(folder / n) for n in OFFICIAL_FILES.values())
        }
    else:
        raise _missing_official(folder)
    if set(models) != {"generator", "detector"}:
        raise WatermarkError(f"{folder} does not hold one AudioSeal generator and one detector")
    calibration = _read_calibration(folder)
    return _Pair(
        models["generator"], models["detector"], calibration, source, envelope, normalized, band
    )


def resolve_weights(weights: str | Path | None) -> _Pair:
    """Load the pair that ``weights`` names.

    ``None``: the official weights if a Hugging Face download is already cached, else the small
    pair audioguard ships. ``"small"``: the shipped pair. A folder: official ``.pth`` files or
    safetensors from ``convert_official_checkpoint``. A file: one half of such a pair, the other
    half found beside it by its standard name. Nothing is ever downloaded.
    """
    if weights is None:
        cached = next((f for f in _hf_cache_folders() if _has(f, OFFICIAL_FILES)), None)
        return _load_folder(cached, "official") if cached else _load_folder(SMALL_DIR, "small")
    if str(weights) == "small":
        return _load_folder(SMALL_DIR, "small")
    path = Path(weights).expanduser()
    if path.is_dir():
        return _load_folder(path, str(path))
    if path.name in {*OFFICIAL_FILES.values(), *SAFETENSORS_FILES.values()} and path.is_file():
        return _load_folder(path.parent, str(path.parent))
    if path.suffix == ".pth" or not path.suffix:
        raise _missing_official(path.parent if path.suffix else path)
    raise WatermarkError(f"{path} is not an AudioSeal weights folder or checkpoint")


# ---------------------------------------------------------------------------------------------
# Calibration: an empirical null distribution of the window score


def calibrate(null_scores: Iterable[float], tail_fraction: float = 0.05) -> dict[str, Any]:
    """Summarise window scores of unmarked audio into what ``window_p_value`` needs.

    All scores are kept (sorted) for the empirical part. Beyond the largest, an exponential
    tail is fitted to the top ``tail_fraction``; its scale is the one-sided 95% upper bound of
    the maximum-likelihood estimate, so extrapolated p-values err on the large side.
    """
    scores = sorted(float(s) for s in null_scores)
    n = len(scores)
    k = max(10, int(n * tail_fraction))
    if n < 2 * k:
        raise ValueError(f"need at least {2 * k} null scores, got {n}")
    threshold = scores[n - k - 1]
    mean_excess = sum(s - threshold for s in scores[n - k :]) / k
    scale = 2 * k * max(mean_excess, 1e-3) / float(chi2.ppf(0.05, 2 * k))
    return {
        "statistic": "max over 1 s windows (hop 0.5 s) of the mean frame log-odds of the mark, "
        f"clipped to +-{LOGIT_CLIP:g}",
        "window_seconds": WINDOW_FRAMES * FRAME / MODEL_RATE,
        "n": n,
        "null_sorted": [round(s, 4) for s in scores],
        "tail": {"threshold": threshold, "exceedances": k, "scale": scale},
    }


def window_p_value(score: float, calibration: dict[str, Any]) -> float:
    """P(an unmarked 1 s window scores at least ``score``): empirical, then the fitted tail."""
    import bisect

    null = calibration["null_sorted"]
    n = calibration["n"]
    above = n - bisect.bisect_left(null, score)
    tail = calibration["tail"]
    fitted = (
        (tail["exceedances"] + 1) / (n + 1) * math.exp(-(score - tail["threshold"]) / tail["scale"])
    )
    if above > 0:
        empirical = (above + 1) / (n + 1)
        return empirical if score <= tail["threshold"] else max(empirical, min(fitted, 1.0))
    return max(min(fitted, 1.0 / (n + 1)), 1e-300)


# ---------------------------------------------------------------------------------------------
# Signal processing (pure functions)


def parse_payload(payload: str | None) -> torch.Tensor:
    """16 bits, most significant first, from 1 to 4 hex digits (a shorter payload is
    left-padded with zeros, as the keyed mark's is); a payload is required, as for keyed."""
    digits = NBITS // 4
    if payload is None:
        raise WatermarkError(
            f"the AudioSeal watermark needs a payload: 1 to {digits} hex digits (--payload HEX)"
        )
    text = payload.lower().removeprefix("0x")
    if not 0 < len(text) <= digits or any(c not in "0123456789abcdef" for c in text):
        raise WatermarkError(
            f"the AudioSeal payload is {NBITS} bits: 1 to {digits} hex digits, not {payload!r}"
        )
    value = int(text, 16)
    return torch.tensor([(value >> (NBITS - 1 - i)) & 1 for i in range(NBITS)])


def format_payload(bits: torch.Tensor) -> str:
    value = 0
    for bit in bits.tolist():
        value = (value << 1) | int(bit)
    return f"{value:0{NBITS // 4}x}"


@dataclass(frozen=True)
class _Block:
    """A stretch of native-rate samples to mark or read, with the context the model sees."""

    start: int
    stop: int
    context_start: int
    context_stop: int


def _blocks(samples: int, rate: int) -> list[_Block]:
    """Whole-second blocks, so each maps onto an exact number of 16 kHz samples and frames."""
    size, context = BLOCK_SECONDS * rate, CONTEXT_SECONDS * rate
    return [
        _Block(s, min(s + size, samples), max(0, s - context), min(samples, s + size + context))
        for s in range(0, samples, size)
    ]


def _model_index(native: int, rate: int) -> int:
    return math.ceil(native * MODEL_RATE / rate)


def _stack(segments: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad 16 kHz segments with zeros (the model's own padding) into one batch."""
    length = max(s.shape[-1] for s in segments)
    return torch.stack([torch.nn.functional.pad(s, (0, length - s.shape[-1])) for s in segments])


def _batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def shape_to_envelope(x: torch.Tensor, wm: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Scale a (batch, 1, samples) watermark to sit ``snr_db`` under the host's 20 ms envelope.

    The small pair is trained through this, so the mark's loudness follows the audio's by
    construction (and vanishes where the audio does) instead of being learned in minutes.
    """

    def power(y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool1d(
            y.pow(2), 2 * FRAME + 1, 1, FRAME, count_include_pad=False
        )

    gain = 10 ** (-snr_db / 20) * power(x).sqrt() / (power(wm).sqrt() + 1e-9)
    return wm * gain


def brick_wall(y: torch.Tensor, low_hz: float, high_hz: float) -> torch.Tensor:
    """Keep only ``low_hz``..``high_hz`` of a 16 kHz signal (FFT brick wall: differentiable,
    so the small pair trains through the same band limit the backend applies)."""
    spec = torch.fft.rfft(y)
    freqs = torch.fft.rfftfreq(y.shape[-1], 1 / MODEL_RATE, device=y.device)
    keep = ((freqs >= low_hz) & (freqs <= high_hz)).to(y.dtype)
    return torch.fft.irfft(spec * keep, n=y.shape[-1])


def normalize_to_envelope(x: torch.Tensor) -> torch.Tensor:
    """Divide a (batch, 1, samples) signal by its own 20 ms RMS envelope.

    What the small pair's generator and detector see instead of raw audio: the mark sits a fixed
    number of dB under that envelope, so after this it has the same scale at -40 dBFS as at
    -10, and the networks need not learn to work across the whole range of levels. Digital
    silence stays zero.
    """
    power = torch.nn.functional.avg_pool1d(
        x.pow(2), 2 * FRAME + 1, 1, FRAME, count_include_pad=False
    )
    return x / (power + ENVELOPE_FLOOR**2).sqrt()


def _silence_mask(channel: torch.Tensor, rate: int) -> torch.Tensor:
    """1 where a 10 ms frame holds any sound, 0 where every sample is digital silence."""
    hop = max(1, rate // 100)
    frames = math.ceil(channel.shape[-1] / hop)
    padded = torch.nn.functional.pad(channel.abs(), (0, frames * hop - channel.shape[-1]))
    loud = (padded.reshape(frames, hop).amax(1) >= SILENCE_LEVEL).to(channel.dtype)
    return loud.repeat_interleave(hop)[: channel.shape[-1]]


def _segments(prob: torch.Tensor) -> tuple[Segment, ...]:
    """Stretches where the smoothed frame probability exceeds 0.5; short gaps are bridged."""
    smooth = torch.nn.functional.avg_pool1d(prob[None, None], 5, 1, 2, count_include_pad=False)
    on = (smooth[0, 0] > 0.5).tolist()
    frame_s = FRAME / MODEL_RATE
    runs: list[list[int]] = []
    for i, flag in enumerate(on):
        if not flag:
            continue
        if runs and (i - runs[-1][1]) * frame_s <= GAP_SECONDS:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return tuple(
        Segment(round(a * frame_s, 3), round(b * frame_s, 3))
        for a, b in runs
        if (b - a) * frame_s >= MIN_SEGMENT_SECONDS
    )


def _require_length(audio: torch.Tensor, sample_rate: int) -> None:
    """Refuse audio shorter than one calibrated window.

    The null distribution is of whole 1 s windows; the mean of a few frames swings far
    wider, and ten samples of silence once read as a mark at p = 1e-4.
    """
    seconds = audio.shape[-1] / sample_rate
    if seconds < MIN_SECONDS:
        raise WatermarkError(
            f"the AudioSeal watermark needs at least {MIN_SECONDS:g} s of audio, "
            f"got {seconds:.2f} s"
        )


def _window_scores(log_odds: torch.Tensor, hop: int = HOP_FRAMES) -> torch.Tensor:
    """Mean frame log-odds over every 1 s window (the whole input if it is shorter)."""
    if log_odds.shape[-1] <= WINDOW_FRAMES:
        return log_odds.mean(-1, keepdim=True)
    return log_odds.unfold(-1, WINDOW_FRAMES, hop).mean(-1)


@dataclass(frozen=True)
class _Frames:
    """One channel's detector output reduced to 10 ms frames."""

    prob: torch.Tensor
    log_odds: torch.Tensor
    bits: torch.Tensor  # (NBITS, frames) message logits


# ---------------------------------------------------------------------------------------------
# The backend


class AudioSealBackend:
    """AudioSeal embed and detect at any rate, channel count and length.

    ``weights``: ``None`` (official weights if cached, else the shipped small pair), ``"small"``,
    or a folder or file holding official or converted weights (see ``resolve_weights``).
    """

    name = "audioseal"

    def __init__(self, weights: str | Path | None = None) -> None:
        pair = resolve_weights(weights)
        self.generator = pair.generator.eval()
        self.detector = pair.detector.eval()
        self.calibration = pair.calibration
        self.weights = pair.source
        self.envelope_snr_db = pair.envelope_snr_db
        self.normalized_input = pair.normalized_input
        self.mark_band_hz = pair.mark_band_hz

    # -- embedding ------------------------------------------------------------------------------

    def embed(self, audio: torch.Tensor, sample_rate: int, payload: str | None) -> EmbedResult:
        """Mark every channel with the same 16 bits and verify that the mark reads back."""
        audio = _as_channels(audio)
        bits = parse_payload(payload)
        _require_length(audio, sample_rate)  # before spending the generator on it
        delta = self._watermark(audio, sample_rate, bits)
        marked = (audio + delta).clamp(-1.0, 1.0)
        verification = self.detect(marked, sample_rate)
        expected = format_payload(bits)
        if not verification.detected or verification.payload != expected:
            raise WatermarkError(
                f"the AudioSeal mark did not read back (detected={verification.detected}, "
                f"p={verification.p_value:.2g}, payload={verification.payload}, "
                f"expected {expected}); the audio may be too short or too quiet to carry it"
            )
        seconds = sum(s.end - s.start for s in verification.segments)
        return EmbedResult(
            audio=marked,
            sample_rate=sample_rate,
            marked_seconds=min(seconds, audio.shape[-1] / sample_rate),
            snr_db=snr_db(audio, marked),
            verification=verification,
        )

    @torch.inference_mode()
    def _watermark(self, audio: torch.Tensor, rate: int, bits: torch.Tensor) -> torch.Tensor:
        """The native-rate delta: computed at 16 kHz, resampled back, silent where audio is."""
        delta = torch.zeros_like(audio)
        jobs = [(c, b) for b in _blocks(audio.shape[-1], rate) for c in range(audio.shape[0])]
        for batch in _batched(jobs, BATCH_BLOCKS):
            inputs = [  # planned on the host less its offset (see watermark.offset)
                without_offset(
                    resample(audio[c, b.context_start : b.context_stop], rate, MODEL_RATE),
                    MODEL_RATE,
                )
                for c, b in batch
            ]
            message = bits.unsqueeze(0).repeat(len(batch), 1)
            x = _stack(inputs).unsqueeze(1)
            model_input = normalize_to_envelope(x) if self.normalized_input else x
            marks = self.generator.get_watermark(model_input, message=message)
            if self.mark_band_hz is not None:  # each block over its own length, not the padding
                marks = torch.stack(
                    [
                        torch.nn.functional.pad(
                            brick_wall(m[..., : x16.shape[-1]], 0.0, self.mark_band_hz),
                            (0, m.shape[-1] - x16.shape[-1]),
                        )
                        for m, x16 in zip(marks, inputs, strict=True)
                    ]
                )
            if self.envelope_snr_db is not None:
                marks = shape_to_envelope(x, marks, self.envelope_snr_db)
            for (c, b), x16, mark in zip(batch, inputs, marks[:, 0], strict=True):
                native = mark[: x16.shape[-1]]
                if rate != MODEL_RATE:
                    native = resample(native, MODEL_RATE, rate, **MARK_RESAMPLE_FILTER)
                span = b.context_stop - b.context_start
                native = torch.nn.functional.pad(native, (0, max(0, span - native.shape[-1])))
                offset = b.start - b.context_start
                delta[c, b.start : b.stop] = native[offset : offset + b.stop - b.start]
        return delta * torch.stack([_silence_mask(ch, rate) for ch in audio])

    # -- detection ------------------------------------------------------------------------------

    def detect(self, audio: torch.Tensor, sample_rate: int) -> Detection:
        """Read each channel; report the channel with the strongest mark.

        The p-value is the window p-value of the best 1 s window, multiplied by the number of
        windows and channels searched (Bonferroni), so longer files are not more likely to
        raise a false alarm.
        """
        audio = _as_channels(audio)
        _require_length(audio, sample_rate)
        frames = self._frames(audio, sample_rate)
        scores = [_window_scores(f.log_odds) for f in frames]
        best = max(range(len(frames)), key=lambda c: float(scores[c].max()))
        score = float(scores[best].max())
        tries = sum(s.numel() for s in scores)
        p_value = min(1.0, tries * self._window_p_value(score))
        detected = p_value < P_THRESHOLD
        chosen = frames[best]
        segments = _segments(chosen.prob) if detected else ()
        payload = self._payload(chosen) if detected else None
        return Detection(
            backend=self.name,
            detected=detected,
            p_value=p_value,
            payload=payload,
            segments=segments,
            score=score,
            details={
                "weights": self.weights,
                "channel": best,
                "calibrated": "yes" if self.calibration else "no",
            },
        )

    def window_scores(self, audio: torch.Tensor, sample_rate: int) -> list[float]:
        """Scores of the non-overlapping 1 s windows of every channel: the calibration input."""
        frames = self._frames(_as_channels(audio), sample_rate)
        return [float(s) for f in frames for s in _window_scores(f.log_odds, WINDOW_FRAMES)]

    def _window_p_value(self, score: float) -> float:
        if self.calibration:
            return window_p_value(score, self.calibration)
        # Uncalibrated weights (official ones used before `calibrate` has been run for them):
        # read the mean log-odds as the detector's own probability. Flagged in `details`.
        return 1.0 / (1.0 + math.exp(min(score, 700.0)))

    @staticmethod
    def _payload(frames: _Frames) -> str:
        """Average the message logits over the frames where the mark is present."""
        present = frames.prob > 0.5
        logits = frames.bits[:, present] if bool(present.any()) else frames.bits
        return format_payload((logits.mean(-1) > 0).long())

    @torch.inference_mode()
    def _frames(self, audio: torch.Tensor, rate: int) -> list[_Frames]:
        """Run the detector block by block and keep only per-frame averages."""
        parts: list[list[torch.Tensor]] = [[] for _ in range(audio.shape[0])]
        jobs = [(c, b) for b in _blocks(audio.shape[-1], rate) for c in range(audio.shape[0])]
        for batch in _batched(jobs, BATCH_BLOCKS):
            inputs = [
                resample(audio[c, b.context_start : b.context_stop], rate, MODEL_RATE)
                for c, b in batch
            ]
            raw = self._raw_detector(_stack(inputs).unsqueeze(1))
            for (c, b), out in zip(batch, raw, strict=True):
                first = _model_index(b.start - b.context_start, rate)
                length = _model_index(b.stop - b.start, rate)
                parts[c].append(_to_frames(out[:, first : first + length]))
        return [_merge_frames(p) for p in parts]

    def _raw_detector(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 2 + NBITS, samples) logits; AudioSeal's own forward averages bits away."""
        if self.normalized_input:
            x = normalize_to_envelope(x)
        elif self.detector.normalizer is not None:
            x = self.detector.normalizer.loudness_normalization(x)
        return self.detector.detector(x)


def _as_channels(audio: torch.Tensor) -> torch.Tensor:
    if audio.ndim != 2 or audio.shape[-1] == 0:
        raise WatermarkError("audio must be a non-empty (channels, samples) tensor")
    return audio.to(torch.float32)


def _to_frames(raw: torch.Tensor) -> torch.Tensor:
    """Average (2 + NBITS, samples) logits and probabilities over 10 ms frames.

    Rows: probability of the mark, log-odds, then the NBITS message logits.
    """
    n = math.ceil(raw.shape[-1] / FRAME)
    padded = torch.nn.functional.pad(raw[None], (0, n * FRAME - raw.shape[-1]), mode="replicate")[0]
    framed = padded.reshape(raw.shape[0], n, FRAME)
    log_odds = (framed[1] - framed[0]).clamp(-LOGIT_CLIP, LOGIT_CLIP)
    prob = torch.sigmoid(log_odds)
    return torch.cat([prob.mean(-1)[None], log_odds.mean(-1)[None], framed[2:].mean(-1)])


def _merge_frames(parts: list[torch.Tensor]) -> _Frames:
    joined = torch.cat(parts, dim=-1)
    return _Frames(prob=joined[0], log_odds=joined[1], bits=joined[2:])
