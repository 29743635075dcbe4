"""Stream a multipart upload to a temporary file, cutting it off at the size limit.

Starlette's form parser spools every file to disk before the endpoint runs, with no size
limit, so a 2 GB upload would be read whole before anyone could refuse it. Here the body is
fed to python-multipart chunk by chunk as it arrives: the file part goes to disk (in 1 MB
writes, off the event loop), its SHA-256 is computed on the way, and the request is answered
413 the moment the file passes the limit. Memory stays bounded whatever the client sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from guard.audio import AUDIO_EXTENSIONS
from guard.server_errors import ApiError

FILE_FIELD = "file"
_FLUSH_BYTES = 1 << 20
# Multipart framing around the parts: boundaries and part headers.
_FRAMING_BYTES = 16_384
_TMP_PREFIX = "audioguard-serve-"


@dataclass
class Upload:
    """A received upload: where it lies, what the client called it, and the form fields."""

    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


class UploadDir:
    """This worker's folder for uploads, removed when the worker stops.

    Workers that died without cleaning up (killed, out of memory) leave their folders behind;
    the next worker to start removes the folders whose process is gone.
    """

    def __init__(self, parent: Path | None) -> None:
        base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        _remove_orphans(base)
        self.path = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=base))

    @contextmanager
    def request_dir(self) -> Iterator[Path]:
        """A private folder for one request, removed with everything in it when it ends."""
        path = Path(tempfile.mkdtemp(dir=self.path))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_orphans(base: Path) -> None:
    for folder in base.glob(f"{_TMP_PREFIX}*-*"):
        match = re.match(rf"{_TMP_PREFIX}(\d+)-", folder.name)
        if match and folder.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe_suffix(filename: str) -> str:
    """The upload's extension when it is one we write, so the output keeps the format."""
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in AUDIO_EXTENSIONS else ""


class _Receiver:
    """python-multipart callbacks that keep one file part and a few small text fields."""

    def __init__(self, folder: Path, fields: frozenset[str], max_file: int, max_field: int) -> None:
        self.folder = folder
        self.allowed = fields
        self.max_file = max_file
        self.max_field = max_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self.digest = hashlib.sha256()
        self.pending = bytearray()
        self.handle: BinaryIO | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._part: str | None = None
        self._is_file = False
        self._text = bytearray()
        self.complete = False

    # -- python-multipart callbacks (synchronous; file bytes are only buffered here) --

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._part = None
        self._is_file = False
        self._text = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError(400, "bad_request", "a form part has no name")
        part = name.decode("utf-8", "replace")
        if part not in self.allowed and part != FILE_FIELD:
            known = ", ".join([FILE_FIELD, *sorted(self.allowed)])
            raise ApiError(
                400, "bad_request", f"unknown form field {part!r}; this endpoint takes {known}"
            )
        if part == FILE_FIELD:
            if self.path is not None:
                raise ApiError(400, "bad_request", "send exactly one file per request")
            raw = options.get(b"filename", b"upload")
            self.filename = Path(raw.decode("utf-8", "replace").replace("\\", "/")).name
            self.filename = self.filename or "upload"
            self.path = self.folder / f"upload{_safe_suffix(self.filename)}"
            self.handle = self.path.open("xb")
            self._is_file = True
        elif part in self.fields:
            raise ApiError(400, "bad_request", f"form field {part!r} is given more than once")
        self._part = part

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.max_file:
                raise ApiError(
                    413,
                    "too_large",
                    f"the upload is over the limit of {self.max_file:,} bytes",
                    {"Connection": "close"},
                )
            self.digest.update(chunk)
            self.pending += chunk
            return
        self._text += chunk
        if len(self._text) > self.max_field:
            raise ApiError(
                413,
                "field_too_large",
                f"form field {self._part!r} is over the limit of {self.max_field:,} bytes",
                {"Connection": "close"},
            )

    def on_part_end(self) -> None:
        if not self._is_file and self._part is not None:
            try:
                self.fields[self._part] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(
                    400, "bad_request", f"form field {self._part!r} is not UTF-8 text"
                ) from None

    def on_end(self) -> None:
        """The closing boundary: only now is the last part known to be whole."""
        self.complete = True

    # -- file writes, off the event loop --

    async def flush(self, force: bool = False) -> None:
        if self.handle is None or not self.pending:
            return
        if force or len(self.pending) >= _FLUSH_BYTES:
            data, self.pending = bytes(self.pending), bytearray()
            await anyio.to_thread.run_sync(self.handle.write, data)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


async def receive_upload(
    request: Request,
    folder: Path,
    *,
    fields: frozenset[str],
    max_file_bytes: int,
    max_field_bytes: int,
    timeout_s: float,
    min_bytes_per_s: float,
) -> Upload:
    """Read a ``multipart/form-data`` body with one ``file`` part into ``folder``.

    Raises :class:`ApiError`: 415 when the body is not multipart, 413 as soon as the file or
    a field passes its limit (or the declared length already does), 408 when the client
    stops sending for ``timeout_s`` or, past its first ``timeout_s``, averages less than
    ``min_bytes_per_s`` (a byte every few seconds would otherwise hold a place in the queue
    for as long as the client likes, and six such clients shut everyone else out), 400 for
    malformed or unexpected parts.
    """
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the audio as multipart/form-data with a 'file' part",
        )
    body_limit = max_file_bytes + max_field_bytes * (len(fields) + 1) + _FRAMING_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(
            413,
            "too_large",
            f"the upload is over the limit of {max_file_bytes:,} bytes",
            {"Connection": "close"},
        )
    receiver = _Receiver(folder, fields, max_file_bytes, max_field_bytes)
    callbacks = {
        name: getattr(receiver, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
            "on_end",
        )
    }
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
        received = 0
        more = True
        clock = asyncio.get_running_loop().time
        started = clock()
        writing = 0.0  # our own disk time is not the client's slowness
        while more:
            left = started + writing + timeout_s + received / min_bytes_per_s - clock()
            wait = min(timeout_s, max(0.0, left))
            if received == 0 or wait == timeout_s:
                problem = f"no data arrived for {timeout_s:g} s"
            else:
                problem = f"the upload arrived slower than {min_bytes_per_s:,.0f} bytes per second"
            message = await _receive(request, wait, problem)
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client_disconnected", "the client went away mid-upload")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(chunk)
            if received > body_limit:
                raise ApiError(
                    413,
                    "too_large",
                    f"the upload is over the limit of {max_file_bytes:,} bytes",
                    {"Connection": "close"},
                )
            parser.write(chunk)
            began_writing = clock()
            await receiver.flush()
            writing += clock() - began_writing
        await receiver.flush(force=True)
    except FormParserError as err:
        raise ApiError(400, "bad_request", "the multipart body is malformed") from err
    finally:
        receiver.close()
    if receiver.path is None or receiver.filename is None:
        raise ApiError(400, "bad_request", "the request has no 'file' part")
    if not receiver.complete:
        raise ApiError(400, "bad_request", "the multipart body ends before its closing boundary")
    if receiver.size == 0:
        raise ApiError(422, "undecodable", f"{receiver.filename}: is empty (0 bytes)")
    return Upload(
        receiver.path,
        receiver.filename,
        receiver.size,
        receiver.digest.hexdigest(),
        receiver.fields,
    )


async def _receive(request: Request, wait_s: float, problem: str):
    """The next message of the body; a 408 saying ``problem`` if none comes in ``wait_s``."""
    try:
        return await asyncio.wait_for(request.receive(), wait_s)
    except TimeoutError:
        raise ApiError(
            408, "upload_timeout", f"{problem}; the upload was abandoned", {"Connection": "close"}
        ) from None
