"""``audioguard watermark ...``: keygen, embed and detect from the command line."""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import torch

from guard import audio as audio_io
from guard.progress import each_audio_file, emit_error, say
from watermark.keyed import EMBED_CHUNK_SECONDS, KeyedBackend
from watermark.keys import read_key, write_key
from watermark.registry import BACKENDS, create_backend
from watermark.types import Detection, WatermarkBackend, WatermarkError


def _backend(name: str, key_file: str | None, weights: str | None) -> WatermarkBackend:
    key = read_key(key_file) if key_file else None
    return create_backend(name, key=key, weights=weights)


def _backend_for(
    ctx: click.Context,
    inputs: list[str],
    name: str,
    key_file: str | None,
    weights: str | None,
    as_json: bool,
) -> WatermarkBackend:
    """The backend, or, when it cannot be built (a missing key, say), the reason once on
    stderr; under ``--json``, one ``{"path", "error"}`` object per input instead, as promised."""
    try:
        return _backend(name, key_file, weights)
    except (WatermarkError, OSError, ValueError) as exc:
        if not as_json or (ctx.obj or {}).get("debug"):
            raise  # one sentence on stderr (guard.cli.main), or the traceback with --debug
        for path in audio_io.iter_audio_paths(inputs):
            emit_error(path, exc, as_json)
        sys.exit(1)


STREAM_SECONDS = 300  # longer keyed embeds stream block by block
VERIFY_SECONDS = 120  # how much of a streamed output is read back to verify it


@click.group()
def watermark() -> None:
    """Embed and verify watermarks (keyed, audioseal, perth)."""


@watermark.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
def keygen(keyfile: str) -> None:
    """Write a new 256-bit secret key to KEYFILE (mode 0600)."""
    write_key(keyfile)
    click.echo(
        f"wrote a new key to {audio_io.printable_name(keyfile)} (mode 0600); keep it secret, "
        "keep a backup"
    )


backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="keyed",
    show_default=True,
    help="keyed: our secret-key mark with a payload; audioseal: Meta's AudioSeal (16-bit "
    "payload); perth: Resemble AI's PerthNet (presence only).",
)
key_option = click.option(
    "--key", "key_file", type=click.Path(dir_okay=False), help="Key file (keyed backend)."
)
weights_option = click.option(
    "--weights", help="AudioSeal weights: a folder, a converted file, or 'small'."
)


@watermark.command()
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("target", type=click.Path(dir_okay=False))
@backend_option
@key_option
@weights_option
@click.option(
    "--payload",
    help="Hex payload, required by keyed (1 to 8 hex digits, 32 bits) and audioseal (1 to 4, "
    "16 bits); a shorter one is left-padded with zeros (12 is 0012). perth carries none.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def embed(
    ctx: click.Context,
    source: str,
    target: str,
    backend: str,
    key_file: str | None,
    weights: str | None,
    payload: str | None,
    as_json: bool,
) -> None:
    """Watermark SOURCE into TARGET (same format, rate, channels and length).

    The mark is verified by reading TARGET back from disk, as a recipient would; a TARGET
    whose mark does not read back is deleted and the command fails.
    """
    if Path(source).resolve() == Path(target).resolve():
        raise click.UsageError("TARGET must differ from SOURCE; the original is never overwritten")
    mark = _backend_for(ctx, [source], backend, key_file, weights, as_json)
    try:
        report = _embed_file(mark, backend, source, target, payload)
    except (audio_io.AudioError, WatermarkError, OSError, ValueError) as exc:
        if (ctx.obj or {}).get("debug"):
            raise
        message = str(exc)
        if not message.startswith((f"{source}:", f"{target}:")):
            message = f"{source}: {message}"
        emit_error(source, message, as_json)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report))
        return
    check = report["verification"]
    say(
        f"{target}: marked {report['marked_seconds']:.1f} s of {report['duration']:.1f} s "
        f"({report['format']}/{report['subtype']}, {report['sample_rate']} Hz), "
        f"SNR {report['snr_db']:.1f} dB; verified: p-value {check['p_value']:.2g}"
        + (f", payload {check['payload']}" if check["payload"] else "")
    )


def _embed_file(
    mark: WatermarkBackend, backend: str, source: str, target: str, payload: str | None
) -> dict[str, object]:
    """Mark ``source`` into ``target`` and return the report ``embed --json`` prints."""
    info = audio_io.probe(source)
    if isinstance(mark, KeyedBackend) and info.duration > STREAM_SECONDS:
        written, marked_seconds, snr, check = _embed_streaming(mark, source, target, info, payload)
    else:
        samples, info = audio_io.load(source)
        result = mark.embed(samples, info.sample_rate, payload)
        written = audio_io.save(target, result.audio, info.sample_rate, like=info)
        check = _read_back(mark, target, written, result.verification.payload)
        marked_seconds, snr = result.marked_seconds, result.snr_db
    return {
        "path": audio_io.printable_name(target),
        "source": audio_io.printable_name(source),
        "backend": backend,
        # The streamed mark is tallied in whole frames, and the last may reach past the end.
        "marked_seconds": round(min(marked_seconds, info.duration), 2),
        "duration": round(info.duration, 2),
        "sample_rate": info.sample_rate,
        "snr_db": round(snr, 2),
        "format": written.format,
        "subtype": written.subtype,
        "verification": check.to_dict(),
    }


def _read_back(
    mark: WatermarkBackend, target: str, written: audio_io.AudioInfo, expected: str | None
) -> Detection:
    """Detect the mark in the file as written: a lossy format (MP3, Vorbis, Opus) or 16-bit
    samples change the audio after the embedder verified it in memory."""
    samples, info = audio_io.load(target)
    found = mark.detect(samples, info.sample_rate)
    if not found.detected or found.payload != expected:
        Path(target).unlink(missing_ok=True)
        read = f", payload {found.payload}" if found.payload else ""
        raise WatermarkError(
            f"{target}: the mark did not read back from the {written.format}/{written.subtype} "
            f"file written (p-value {found.p_value:.2g}{read}), so it was deleted; "
            "a lossless format (WAV, FLAC) keeps the mark as embedded"
        )
    return found


def _embed_streaming(
    mark: KeyedBackend, source: str, target: str, info: audio_io.AudioInfo, payload: str | None
) -> tuple[audio_io.AudioInfo, float, float, Detection]:
    """Mark a long file block by block so memory stays bounded, then verify the output.

    Verification reads back the minutes of the written file that carry the most mark (the
    whole file would cost as much memory as we just saved; the first minutes may be a silent
    intro, which carries none); the SNR is accumulated as blocks go by.
    """
    rate = info.sample_rate
    tally: list[float] = []
    energy = [0.0, 0.0]  # host, mark

    # Blocks as long as the embedder's chunks, so the n-th marked chunk pairs with the n-th
    # input block. The queue holds only the blocks the embedder has read ahead (two at most);
    # itertools.tee would keep up to 57 of them, since it frees its storage 57 items at a time.
    hosts: deque[torch.Tensor] = deque()

    def feed() -> Iterator[torch.Tensor]:
        for block in audio_io.iter_blocks(source, EMBED_CHUNK_SECONDS * rate):
            hosts.append(block)
            yield block

    def measured(marked_blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for marked in marked_blocks:
            host = hosts.popleft()
            energy[0] += float(host.double().square().sum())
            energy[1] += float((marked - host).double().square().sum())
            yield marked
        if hosts:
            raise RuntimeError(f"{len(hosts)} input block(s) of {source} were never marked")

    marked = mark.embed_stream(feed(), rate, payload, tally)
    written = audio_io.save_blocks(target, measured(marked), rate, info.channels, like=info)
    start, window_seconds = _most_marked_window(tally)
    blocks = audio_io.iter_blocks(target, EMBED_CHUNK_SECONDS * rate)
    window = list(itertools.islice(blocks, start, start + VERIFY_SECONDS // EMBED_CHUNK_SECONDS))
    blocks.close()
    try:
        check = mark.verify(torch.cat(window, dim=1), rate, payload, window_seconds)
    except WatermarkError as exc:
        Path(target).unlink(missing_ok=True)
        at = start * EMBED_CHUNK_SECONDS
        raise WatermarkError(
            f"{target}: {exc} (read back from {at}-{at + VERIFY_SECONDS} s of the file written, "
            "the stretch that carries the most mark), so it was deleted"
        ) from None
    snr = 10 * math.log10(energy[0] / energy[1]) if energy[1] > 0 else math.inf
    return written, sum(tally), snr, check


def _most_marked_window(tally: list[float]) -> tuple[int, float]:
    """The first chunk of the ``VERIFY_SECONDS`` that carry the most mark, and their marked
    seconds (``tally`` has one entry per chunk the embedder marked)."""
    width = VERIFY_SECONDS // EMBED_CHUNK_SECONDS
    sums = [sum(tally[i : i + width]) for i in range(max(1, len(tally) - width + 1))]
    best = max(range(len(sums)), key=sums.__getitem__)
    return best, sums[best]


@watermark.command()
@click.argument("paths", nargs=-1, required=True)
@backend_option
@key_option
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, one per line.")
@click.pass_context
def detect(
    ctx: click.Context,
    paths: tuple[str, ...],
    backend: str,
    key_file: str | None,
    weights: str | None,
    as_json: bool,
) -> None:
    """Look for a watermark in each file (folders are walked); exit 1 if any input failed."""
    mark = _backend_for(ctx, list(paths), backend, key_file, weights, as_json)
    each_audio_file(
        paths,
        as_json,
        mark.detect,
        lambda p, found: _emit_detection(p, found, as_json),
        (WatermarkError,),
    )


def _emit_detection(path: Path, found: Detection, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"path": str(path), **found.to_dict()}))
        return
    if not found.detected:
        say(f"{path}: no {found.backend} mark (p-value {found.p_value:.2g})")
        return
    spans = ", ".join(f"{s.start:.1f}-{s.end:.1f} s" for s in found.segments) or "none"
    payload = f", payload {found.payload}" if found.payload else ""
    say(
        f"{path}: {found.backend} mark DETECTED (p-value {found.p_value:.2g}{payload}); "
        f"segments {spans}"
    )
