"""Decode, validate, resample and write users' audio files.

This is the only module that opens audio files a user hands us, so it is the one place that
refuses bad input: every problem becomes an `AudioError` with one sentence that names the file,
and no libsndfile exception escapes. Components downstream can then trust that a waveform is
finite float32 shaped `(channels, samples)` at a sane rate.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from guard.native_messages import decoder_messages
from watermark.channels import mix_down
from watermark.resampling import resample as blocked_resample

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})

# What we promise to decode. libsndfile reads more (AIFF, AU, ...), but we test and support these.
# WAVEX is WAV with the extensible header that 24-bit and multichannel writers use.
_SUPPORTED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})

# The container an output extension asks for; only .opus also pins the codec inside it.
_FORMAT_BY_EXTENSION = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
}
_SUBTYPE_BY_EXTENSION = {".opus": "OPUS"}

SAMPLES_PER_LIMIT_SECOND = 96_000
"""Decoded samples a whole-file load may hold per second of the duration limit (48 kHz
stereo): the duration limit alone lets a small file at 192 kHz and 8 channels decode to
gigabytes. Streaming reads hold a block at a time and need no such bound."""

LOAD_BLOCK_FRAMES = 1 << 20  # about 22 s at 48 kHz: the only extra memory a whole-file load holds

# Subtypes that store floats. Outside [-1, 1] integer PCM saturates, mu-law and A-law wrap
# around into loud clicks, and lossy files mostly meet integer decoders, so the rest is clipped.
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})


class AudioError(Exception):
    """A file we refuse to process, with a sentence a person can act on."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class UnsupportedFormat(AudioError):
    """The file is not audio in a format we decode (the service answers 415), as opposed to
    one we can read whose content we refuse (422)."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header says; enough to write the result back the way it came in."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate

    @property
    def extension(self) -> str:
        """The extension that names this file's format, whatever the file was called."""
        if self.format == "OGG" and self.subtype == "OPUS":
            return ".opus"
        return ".wav" if self.format == "WAVEX" else f".{self.format.lower()}"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one hostile or accidental upload from exhausting memory or time."""

    max_bytes: int = 1_000_000_000
    max_seconds: float = 3600.0
    min_rate: int = 4000
    max_rate: int = 192_000
    max_channels: int = 8

    @property
    def max_samples(self) -> float:
        """The most decoded samples (frames x channels) a whole-file load may hold."""
        return self.max_seconds * SAMPLES_PER_LIMIT_SECOND


def too_many_samples(info: AudioInfo, limits: Limits) -> str | None:
    """Why decoding all of ``info`` at once would pass ``limits``' budget, or None if it fits."""
    if info.frames * info.channels <= limits.max_samples:
        return None
    return (
        f"is {info.duration:.1f} s at {info.sample_rate} Hz with {info.channels} channels, "
        f"over the limit of {int(limits.max_samples):,} samples "
        f"({limits.max_seconds:g} s of 48 kHz stereo)"
    )


def probe(path: str | os.PathLike[str], limits: Limits = Limits()) -> AudioInfo:
    """Validate a file from its header alone, so a caller can refuse it without decoding."""
    with _open(Path(path), limits) as (_, info):
        return info


def load(path: str | os.PathLike[str], limits: Limits = Limits()) -> tuple[torch.Tensor, AudioInfo]:
    """Decode a whole file to float32 `(channels, samples)` after the header checks pass.

    The returned info counts the frames actually decoded: MP3 headers only estimate the
    length, and a truncated file holds fewer frames than its header claims (it is judged on
    what it holds, which is what a player would play).
    """
    with _open(Path(path), limits) as (f, info):
        problem = too_many_samples(info, limits)
        if problem:
            raise AudioError(path, problem)
        samples = _read_all(f, info)
    if samples.shape[1] == 0:
        raise AudioError(path, "contains no decodable audio")
    return samples, replace(info, frames=samples.shape[1])


def _read_all(f: sf.SoundFile, info: AudioInfo) -> torch.Tensor:
    """Every frame, read block by block into one ``(channels, frames)`` tensor.

    Reading the whole file at once and transposing it held two copies: 2.8 GB at the peak
    for an hour of 48 kHz stereo instead of 1.4 GB. The header's frame count sizes the
    tensor; an MP3 whose estimate falls short grows it, one that holds less is cut.
    """
    out = torch.empty((info.channels, info.frames), dtype=torch.float32)
    extra: list[torch.Tensor] = []
    done = 0
    while True:
        data = _read(f, info, frames=LOAD_BLOCK_FRAMES)
        if data.shape[0] == 0:
            break
        _check_finite(data, info)
        fits = min(data.shape[0], info.frames - done)
        out[:, done : done + fits] = torch.from_numpy(data[:fits].T)
        if fits < data.shape[0]:
            extra.append(_to_tensor(data[fits:]))
        done += fits
    if extra:
        return torch.cat([out, *extra], dim=1)
    return out if done == info.frames else out[:, :done].contiguous()


def iter_blocks(
    path: str | os.PathLike[str], block_frames: int, limits: Limits = Limits()
) -> Iterator[torch.Tensor]:
    """Stream a file in float32 `(channels, n)` blocks so memory stays bounded on long files.

    The header is validated now, not on the first `next()`, so a bad file fails where the
    caller asked for it.
    """
    if block_frames <= 0:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    path = Path(path)
    probe(path, limits)
    return _blocks(path, block_frames, limits)


def _blocks(path: Path, block_frames: int, limits: Limits) -> Iterator[torch.Tensor]:
    with _open(path, limits) as (f, info):
        while True:
            data = _read(f, info, frames=block_frames)
            if data.shape[0] == 0:
                return
            _check_finite(data, info)
            yield _to_tensor(data)


def save(
    path: str | os.PathLike[str],
    audio: torch.Tensor,
    sample_rate: int,
    like: AudioInfo | None = None,
) -> AudioInfo:
    """Write `(channels, samples)` audio the way `like` came in, where the codec allows it.

    A known extension picks the format (the user asked for it); `like` supplies the subtype
    when that format has it, and the format itself when the extension is unknown. Codecs
    accept fewer rates and channel counts than the files that may have come in (Opus:
    8/12/16/24/48 kHz; MP3: 8 to 48 kHz and at most two channels), so when the preferred
    subtype cannot be written we fall back to the format's default, and raise only when the
    format cannot hold this audio at all. ``.opus`` names its codec, so it never falls back
    to Vorbis (a file called .opus that holds Vorbis is refused by Opus-only players). The file is
    written under a temporary name and renamed, so a failed write never leaves a
    half-written file or clobbers an existing one. Returns what was written.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be shaped (channels, samples), got {tuple(audio.shape)}")
    return save_blocks(path, [audio], sample_rate, audio.shape[0], like)


def save_blocks(
    path: str | os.PathLike[str],
    blocks: Iterable[torch.Tensor],
    sample_rate: int,
    channels: int,
    like: AudioInfo | None = None,
) -> AudioInfo:
    """:func:`save` for audio that arrives in `(channels, n)` blocks, so long files stream."""
    path = Path(path)
    fmt, subtypes = _output_choices(path, like)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        # Creating it ourselves first turns a missing folder or a permission problem into a
        # clear OSError, so a libsndfile refusal below can only mean the codec said no.
        tmp.open("xb").close()
        finite = (_finite_block(path, block) for block in blocks)
        written = _write_first(tmp, finite, sample_rate, channels, fmt, subtypes)
        if written is None:
            raise AudioError(path, _cannot_write(fmt, subtypes, sample_rate, channels))
        os.replace(tmp, path)
    except (OSError, sf.LibsndfileError) as err:
        raise AudioError(path, f"could not be written ({_reason(err)})") from err
    finally:
        # In a folder we may not even search, this unlink fails too; its error must not
        # replace the sentence above with a traceback naming the temporary file.
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
    subtype, frames = written
    return AudioInfo(str(path), sample_rate, channels, frames, fmt, subtype)


def _cannot_write(fmt: str, subtypes: list[str], sample_rate: int, channels: int) -> str:
    what = f"{fmt} cannot be written at {sample_rate} Hz with {channels} channel(s)"
    if subtypes == ["OPUS"]:
        what = (
            f"Opus cannot be written at {sample_rate} Hz with {channels} channel(s) (it takes "
            "8, 12, 16, 24 or 48 kHz); name the target .ogg for Ogg Vorbis at this rate"
        )
    return what


def _finite_block(path: Path, block: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(block).all():
        raise AudioError(path, "refusing to write NaN or infinite samples")
    return block


def _reason(err: Exception) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return getattr(err, "error_string", str(err)).rstrip(".")


def _output_choices(path: Path, like: AudioInfo | None) -> tuple[str, list[str]]:
    """The format to write and the subtypes to try, best first."""
    extension = path.suffix.lower()
    # Only a name without an extension borrows the input's format: a WAV written under
    # ``.aac`` would be a file whose name lies about what it holds.
    fmt = _FORMAT_BY_EXTENSION.get(
        extension, like.format if like is not None and not extension else None
    )
    if fmt is None:
        known = ", ".join(sorted(_FORMAT_BY_EXTENSION))
        what = f"cannot write {extension} files" if extension else "has no extension"
        raise AudioError(path, f"{what}; use one of {known}")
    if extension in _SUBTYPE_BY_EXTENSION:  # the name promises this codec: no fallback
        return fmt, [_SUBTYPE_BY_EXTENSION[extension]]
    fallback = sf.default_subtype(fmt)
    preferred = fallback
    if like is not None:
        preferred = like.subtype if sf.check_format(fmt, like.subtype) else fallback
    return fmt, [preferred] if preferred == fallback else [preferred, fallback]


def _write_first(
    tmp: Path,
    blocks: Iterable[torch.Tensor],
    sample_rate: int,
    channels: int,
    fmt: str,
    subtypes: list[str],
) -> tuple[str, int] | None:
    """Write with the first subtype libsndfile accepts for this rate and channel count.

    Asking libsndfile is the only reliable test: it alone knows which encoders it was built
    with and what each accepts. Returns the subtype and the frames written.
    """
    for subtype in subtypes:
        try:
            f = sf.SoundFile(_native(tmp), "w", sample_rate, channels, subtype, format=fmt)
        except (sf.LibsndfileError, ValueError):
            continue
        frames = 0
        with f:
            for block in blocks:
                data = block.detach().to("cpu", torch.float32).T.contiguous().numpy()
                if not np.isfinite(data).all():
                    raise AudioError(
                        tmp.name[1:].rsplit(".", 2)[0], "refusing to write NaN or infinite samples"
                    )
                f.write(data if subtype in _FLOAT_SUBTYPES else np.clip(data, -1.0, 1.0))
                frames += data.shape[0]
        return subtype, frames
    return None


def resample(audio: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis; the input itself when the rates match.

    In bounded memory at any rate pair, odd ones such as 44,099 Hz included (see
    :mod:`watermark.resampling`)."""
    return blocked_resample(audio, from_rate, to_rate)


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """The channels mixed into `(1, samples)`: their mean, or the loudest channel alone where
    the mean cancels (channels in antiphase), as every watermark check reads them (see
    :mod:`watermark.channels`); ordinary stereo is averaged as before, bit for bit."""
    return mix_down(audio).unsqueeze(0)


def iter_audio_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand folders into their audio files, in a stable order, for multi-file commands.

    Whatever the user named explicitly is yielded even when it is missing or has an unknown
    extension, so the command reports it instead of silently skipping it; so is a named folder
    that yields no audio (empty, or one we may not list), else a CI job that scans two folders
    passes with one of them judged and the other never read.
    """
    for given in paths:
        path = Path(given)
        if path.is_dir():
            # A dangling link is yielded too: it looks like audio, so the user should hear
            # that it leads nowhere rather than find it silently missing from the results.
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in AUDIO_EXTENSIONS and (p.is_file() or not p.exists())
            )
            yield from found or [path]
        else:
            yield path


_UNDECODABLE = re.compile("[\ud800-\udfff]")


def printable_name(text: str | os.PathLike[str]) -> str:
    """A file name (or a message holding one) as valid Unicode that can be printed and written.

    Linux file names are bytes; Python keeps a byte that is not UTF-8 as a lone surrogate
    (``bad\\udcffname.wav``), which no UTF-8 writer accepts. Each such byte is shown as
    ``\\xff``, so the name still says which file it is, and JSON and HTML stay valid UTF-8.
    """
    return _UNDECODABLE.sub(_escape_surrogate, os.fspath(text))


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape kept
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _native(path: str | os.PathLike[str]) -> str | bytes:
    """The path as libsndfile should get it: soundfile encodes a ``str`` strictly as UTF-8,
    so a name with a byte that is not UTF-8 must go as the bytes the file system holds."""
    return os.fspath(path) if os.name == "nt" else os.fsencode(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so large files cost no memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def _open(path: Path, limits: Limits) -> Iterator[tuple[sf.SoundFile, AudioInfo]]:
    """Open a file for reading after the checks that need no decoding.

    The size is checked before libsndfile touches the file, and the header before any
    sample is read, so an oversized upload costs a `stat` and a header parse at most.
    """
    _check_size(path, limits)
    try:
        with _quiet(path, _may_be_mp3(path)):
            f = sf.SoundFile(_native(path))
    except sf.SoundFileError as err:
        # libsndfile's own messages can mislead (an undecodable .mp3 "does not exist"), so
        # the user gets ours and --debug gets the chained original.
        raise UnsupportedFormat(
            path, "is not a WAV, FLAC, OGG or MP3 file, or its header is damaged"
        ) from err
    with f:
        info = AudioInfo(
            path=str(path),
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=f.frames,
            format=f.format,
            subtype=f.subtype,
        )
        _check_header(info, limits)
        yield f, info


def _quiet(path: str | Path, mp3: bool) -> AbstractContextManager[None]:
    """Only libmpg123 prints to stderr; the other decoders need no capture (and no lock)."""
    return decoder_messages(path) if mp3 else nullcontext()


def _may_be_mp3(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError:
        return True
    return magic not in (b"RIFF", b"RF64", b"fLaC", b"OggS")


def _check_size(path: Path, limits: Limits) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioError(path, "does not exist") from None
    except OSError as err:
        raise AudioError(path, f"cannot be read ({err.strerror or err})") from err
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, folder_problem(path))
    if not stat.S_ISREG(st.st_mode):
        # A pipe or device could block forever or never end; uploads are regular files.
        raise AudioError(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        # Else libsndfile's refusal reads as a damaged header, and the user hunts a codec bug.
        raise AudioError(path, "cannot be read (permission denied)")
    size = st.st_size
    if size == 0:
        raise AudioError(path, "is empty (0 bytes)")
    if size > limits.max_bytes:
        raise AudioError(path, f"is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes")


def folder_problem(path: Path) -> str:
    """Why a folder stands where a file was expected: which of three things a person fixes."""
    if not os.access(path, os.R_OK | os.X_OK):
        return "is a folder that cannot be read (permission denied)"
    if not any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.rglob("*")):
        return "is a folder with no WAV, FLAC, OGG or MP3 file in it"
    return "is a folder, not an audio file"


def _check_header(info: AudioInfo, limits: Limits) -> None:
    path = info.path
    if info.format not in _SUPPORTED_FORMATS:
        raise UnsupportedFormat(
            path, f"is {info.format} audio; only WAV, FLAC, OGG and MP3 are supported"
        )
    if info.sample_rate < limits.min_rate:
        raise AudioError(
            path, f"has a sample rate of {info.sample_rate} Hz, below {limits.min_rate} Hz"
        )
    if info.sample_rate > limits.max_rate:
        raise AudioError(
            path, f"has a sample rate of {info.sample_rate} Hz, above {limits.max_rate} Hz"
        )
    if info.channels > limits.max_channels:
        raise AudioError(
            path, f"has {info.channels} channels, more than the maximum of {limits.max_channels}"
        )
    if info.frames == 0:
        raise AudioError(path, "contains no audio (0 frames)")
    if info.duration > limits.max_seconds:
        raise AudioError(
            path, f"is {info.duration:.1f} s long, over the limit of {limits.max_seconds:g} s"
        )


def _read(f: sf.SoundFile, info: AudioInfo, frames: int) -> np.ndarray:
    try:
        with _quiet(info.path, info.format == "MP3"):
            return f.read(frames, dtype="float32", always_2d=True)
    except sf.SoundFileError as err:
        raise AudioError(info.path, "is damaged and could not be decoded") from err


def _check_finite(data: np.ndarray, info: AudioInfo) -> None:
    if not np.isfinite(data).all():
        raise AudioError(info.path, "contains NaN or infinite samples")


def _to_tensor(data: np.ndarray) -> torch.Tensor:
    """soundfile gives `(frames, channels)`; components expect `(channels, frames)`."""
    return torch.from_numpy(np.ascontiguousarray(data.T))
