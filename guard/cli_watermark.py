"""``audioguard watermark ...``: keygen, embed and detect from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from guard import audio as audio_io
from guard.progress import progress
from watermark.keys import read_key, write_key
from watermark.registry import BACKENDS, create_backend
from watermark.types import Detection, WatermarkBackend, WatermarkError


def _backend(name: str, key_file: str | None, weights: str | None) -> WatermarkBackend:
    key = read_key(key_file) if key_file else None
    if name == "keyed" and key is None:
        raise WatermarkError("the keyed watermark needs --key KEYFILE (create one with keygen)")
    return create_backend(name, key=key, weights=weights)


@click.group()
def watermark() -> None:
    """Embed and verify watermarks (keyed, audioseal, perth)."""


@watermark.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
def keygen(keyfile: str) -> None:
    """Write a new 256-bit secret key to KEYFILE (mode 0600)."""
    write_key(keyfile)
    click.echo(f"wrote a new key to {keyfile} (mode 0600); keep it secret, keep a backup")


backend_option = click.option(
    "--backend", type=click.Choice(BACKENDS), default="keyed", show_default=True
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
@click.option("--payload", help="Hex payload (keyed: up to 32 bits; audioseal: 16 bits).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def embed(
    source: str,
    target: str,
    backend: str,
    key_file: str | None,
    weights: str | None,
    payload: str | None,
    as_json: bool,
) -> None:
    """Watermark SOURCE into TARGET (same format, rate, channels and length)."""
    if Path(source).resolve() == Path(target).resolve():
        raise click.UsageError("TARGET must differ from SOURCE; the original is never overwritten")
    mark = _backend(backend, key_file, weights)
    samples, info = audio_io.load(source)
    result = mark.embed(samples, info.sample_rate, payload)
    written = audio_io.save(target, result.audio, info.sample_rate, like=info)
    check = result.verification
    report = {
        "path": target,
        "source": source,
        "backend": backend,
        "marked_seconds": round(result.marked_seconds, 2),
        "duration": round(info.duration, 2),
        "snr_db": round(result.snr_db, 2),
        "format": written.format,
        "subtype": written.subtype,
        "verification": check.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{target}: marked {result.marked_seconds:.1f} s of {info.duration:.1f} s "
        f"({written.format}/{written.subtype}, {info.sample_rate} Hz), SNR {result.snr_db:.1f} dB; "
        f"verified: p-value {check.p_value:.2g}"
        + (f", payload {check.payload}" if check.payload else "")
    )


@watermark.command()
@click.argument("paths", nargs=-1, required=True)
@backend_option
@key_option
@weights_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input, one per line.")
def detect(
    paths: tuple[str, ...],
    backend: str,
    key_file: str | None,
    weights: str | None,
    as_json: bool,
) -> None:
    """Look for a watermark in each file (folders are walked); exit 1 if any input failed."""
    mark = _backend(backend, key_file, weights)
    failed = False
    for path in progress(list(audio_io.iter_audio_paths(paths)), quiet=as_json):
        try:
            samples, info = audio_io.load(path)
            found = mark.detect(samples, info.sample_rate)
        except (audio_io.AudioError, WatermarkError) as exc:
            failed = True
            _emit_error(path, exc, as_json)
            continue
        _emit_detection(path, found, as_json)
    if failed:
        sys.exit(1)


def _emit_error(path: Path, exc: Exception, as_json: bool) -> None:
    message = str(exc)
    if as_json:
        click.echo(json.dumps({"path": str(path), "error": message}))
    else:
        click.echo(f"error: {message}", err=True)


def _emit_detection(path: Path, found: Detection, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"path": str(path), **found.to_dict()}))
        return
    if not found.detected:
        click.echo(f"{path}: no {found.backend} mark (p-value {found.p_value:.2g})")
        return
    spans = ", ".join(f"{s.start:.1f}-{s.end:.1f} s" for s in found.segments) or "none"
    payload = f", payload {found.payload}" if found.payload else ""
    click.echo(
        f"{path}: {found.backend} mark DETECTED (p-value {found.p_value:.2g}{payload}); "
        f"segments {spans}"
    )
