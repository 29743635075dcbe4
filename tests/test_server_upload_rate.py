"""An upload must keep arriving: a stall, and past the first seconds a trickle, are a 408.

One byte every couple of seconds never tripped the per-read timeout, so six such clients
held every place in the queue and every other key got 503 for as long as they liked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guard.server_errors import ApiError
from guard.server_upload import receive_upload

BOUNDARY = "b0undary"
BODY = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    "Content-Type: audio/wav\r\n\r\n" + "x" * 200 + f"\r\n--{BOUNDARY}--\r\n"
).encode()


class TrickledRequest:
    """What ``receive_upload`` reads of a Starlette request: headers and ``receive``."""

    def __init__(self, chunk: int, pause_s: float) -> None:
        self.headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        self.chunks = [BODY[i : i + chunk] for i in range(0, len(BODY), chunk)]
        self.pause_s = pause_s

    async def receive(self) -> dict:
        await asyncio.sleep(self.pause_s)
        body = self.chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}


def receive(request: TrickledRequest, folder: Path, timeout_s: float, min_rate: float):
    return asyncio.run(
        receive_upload(
            request,  # type: ignore[arg-type]
            folder,
            fields=frozenset(),
            max_file_bytes=10_000,
            max_field_bytes=100,
            timeout_s=timeout_s,
            min_bytes_per_s=min_rate,
        )
    )


def test_a_trickle_is_abandoned_once_it_falls_below_the_rate(tmp_path):
    # 1 byte per 10 ms is 100 bytes/s: each read comes well within the 0.3 s timeout
    with pytest.raises(ApiError) as err:
        receive(TrickledRequest(chunk=1, pause_s=0.01), tmp_path, timeout_s=0.3, min_rate=1000)
    assert err.value.status == 408
    assert "slower than 1,000 bytes per second" in str(err.value)


def test_an_upload_at_the_rate_arrives(tmp_path):
    # 100 bytes per 10 ms: 100 times the rate asked for, so a busy machine cannot fail it
    upload = receive(
        TrickledRequest(chunk=100, pause_s=0.01), tmp_path, timeout_s=0.3, min_rate=100
    )
    assert upload.size == 200 and upload.filename == "a.wav"


def test_a_stall_is_still_named_as_one(tmp_path):
    with pytest.raises(ApiError) as err:
        receive(TrickledRequest(chunk=50, pause_s=0.5), tmp_path, timeout_s=0.2, min_rate=1)
    assert err.value.status == 408
    assert "no data arrived for 0.2 s" in str(err.value)


def test_time_spent_writing_the_upload_to_disk_is_not_held_against_the_client(
    tmp_path, monkeypatch
):
    # A client sending 10,000 bytes/s against a 2,000 bytes/s floor got 408 "slower than"
    # because each half-second flush to a slow disk counted as its own time.
    from guard import server_upload

    flush = server_upload._Receiver.flush

    async def slow_disk(self, force: bool = False) -> None:
        await flush(self, force)
        await asyncio.sleep(0.5)

    monkeypatch.setattr(server_upload._Receiver, "flush", slow_disk)
    upload = receive(
        TrickledRequest(chunk=100, pause_s=0.01), tmp_path, timeout_s=0.3, min_rate=2000
    )
    assert upload.size == 200
