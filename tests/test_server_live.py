"""The HTTP service on a real uvicorn, started by ``audioguard serve`` in a subprocess.

What only a real server shows: concurrent uploads over real sockets, a 2 GB upload cut off
while it is being sent with the server's memory flat, the queue and the rate limit under
real concurrency, several workers sharing metrics, a schemathesis run against the live
OpenAPI schema, and the review page in a real headless browser.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
import soundfile as sf

from guard.server_config import token_digest
from policies import verify_log
from watermark.keys import write_key

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCAN_TOKEN = "live-scan-token-0123456789"
EMBED_TOKEN = "live-embed-token-0123456789"
STARTUP_S = 180  # model loading on a busy 2-core machine
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def wav_bytes(seconds: float, seed: int, rate: int = 16000) -> bytes:
    samples = np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LiveServer:
    """``audioguard serve`` on a free loopback port, stopped (and its log kept) at the end."""

    def __init__(self, folder: Path, config: str, *args: str, env_keys: str = "") -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "serve.yaml").write_text(config)
        self.log = (folder / "server.log").open("w")
        env = {**os.environ, "AUDIOGUARD_API_KEYS": env_keys}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-c", "from guard.cli import main; main()", "serve"]
        command += ["--config", str(folder / "serve.yaml"), "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=folder
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not ready after {STARTUP_S} s: {self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "server.log").read_text()[-4000:]

    def metric(self, name: str) -> float:
        """The sum of a metric's samples whose line starts with ``name``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        ]
        return sum(values)

    def wait_metric(self, name: str, value: float) -> None:
        deadline = time.monotonic() + 30
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} never reached {value}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def config_text(
    folder: Path, limits: dict[str, object] | None = None, detector: bool = False
) -> str:
    write_key(folder / "org.key")
    config = {
        "api_keys": [
            {"id": "moderation", "sha256": token_digest(SCAN_TOKEN), "scopes": ["scan"]},
            {"id": "tts", "sha256": token_digest(EMBED_TOKEN), "scopes": ["scan", "embed"]},
        ],
        "limits": {
            "max_upload_bytes": 8 * MB,
            "max_duration_s": 120,
            "rate_limit_per_minute": 0,
            **(limits or {}),
        },
        "guard": {
            "detector": detector,
            "public_backends": [],
            "keys": {"org": "org.key"},
            "audit_log": "audit.jsonl",
        },
        "tmp_dir": str(folder / "tmp"),
    }
    return json.dumps(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("live")
    live = LiveServer(folder, config_text(folder), env_keys="ci:ci-token-0123456789:scan")
    yield live
    live.stop()
    # The worker removes its upload folder when it stops.
    assert list((folder / "tmp").iterdir()) == []


@pytest.fixture(scope="module")
def detector_server(tmp_path_factory) -> Iterator[LiveServer]:
    """The service with the shipped synthetic-voice detector."""
    folder = tmp_path_factory.mktemp("detector")
    live = LiveServer(folder, config_text(folder, detector=True))
    yield live
    live.stop()


def test_scan_and_detect_with_the_shipped_detector(detector_server, samples_dir):
    clip = samples_dir / "speech/warzone_tutorial_tut73.flac"
    files = {"file": (clip.name, clip.read_bytes())}
    with httpx.Client(base_url=detector_server.url, timeout=120) as client:
        scan = client.post("/v1/scan", headers=auth(SCAN_TOKEN), files=files).json()
        detect = client.post("/v1/detect", headers=auth(SCAN_TOKEN), files=files).json()
        ready = client.get("/readyz").json()
    assert 0.0 <= scan["synthetic_probability"] <= 1.0
    assert scan["model"] == ready["model"] == detect["model"]
    # detect rounds its probabilities for display; scan passes the policy its exact fact
    assert detect["synthetic_probability"] == pytest.approx(scan["synthetic_probability"], abs=1e-3)
    assert detect["path"] == clip.name
    segments = detect["segments"]
    assert segments and segments == scan["segments"]
    assert segments[0]["start"] == 0.0
    assert segments[-1]["end"] == pytest.approx(sf.info(clip).duration, abs=0.05)


def test_concurrent_uploads_each_get_their_own_answer(server):
    clips = [wav_bytes(1.0 + 0.25 * (i % 4), seed=i) for i in range(24)]

    def post(clip: bytes) -> tuple[int, str | None, float | None]:
        with httpx.Client(timeout=120) as client:
            response = client.post(
                f"{server.url}/v1/scan",
                headers=auth(SCAN_TOKEN),
                files={"file": ("clip.wav", clip)},
            )
        body = response.json()
        return response.status_code, body.get("sha256"), body.get("duration")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, clips))
    for clip, (status, digest, duration) in zip(clips, answers, strict=True):
        assert status == 200
        assert digest == hashlib.sha256(clip).hexdigest()
        assert duration == pytest.approx(sf.info(io.BytesIO(clip)).duration, abs=1e-3)
    assert server.metric('audioguard_decisions_total{action="allow"') >= len(clips)
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_a_2gb_upload_is_cut_off_early_with_memory_flat(server):
    pid = server.process.pid
    before = rss_bytes(pid)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="zeros.wav"\r\n\r\n'
        block = bytes(MB)
        while sent < 2048 * MB:
            sent += len(block)
            yield block

    # No Content-Length: the server must count as the bytes arrive.
    response = httpx.post(
        f"{server.url}/v1/scan",
        headers={**auth(SCAN_TOKEN), "Content-Type": "multipart/form-data; boundary=zz"},
        content=body(),
        timeout=120,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert sent < 2048 * MB, "the 413 came only after the whole body was sent"
    assert sent < 200 * MB
    growth = rss_bytes(pid) - before
    assert growth < 100 * MB, f"server RSS grew by {growth / MB:.0f} MB"
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_declared_oversize_is_refused_before_the_body(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /v1/scan HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {SCAN_TOKEN}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 2147483648\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = s.recv(4096)
    # No "100 Continue": the client never has to send a byte of the 2 GB.
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_missing_wrong_and_underscoped_keys(server):
    clip = {"file": ("a.wav", wav_bytes(1.0, seed=1))}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for headers in ({}, auth("not-a-key"), {"Authorization": f"Basic {SCAN_TOKEN}"}):
            response = client.post("/v1/scan", headers=headers, files=clip)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        response = client.post(
            "/v1/watermark/embed", headers=auth(SCAN_TOKEN), files=clip, data={"payload": "1"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        # the environment's key works alongside the config's
        response = client.post("/v1/scan", headers=auth("ci-token-0123456789"), files=clip)
        assert response.status_code == 200


def test_embed_over_http_streams_marked_audio(server, samples_dir):
    source = samples_dir / "speech/fillets_society_stebet0.flac"
    response = httpx.post(
        f"{server.url}/v1/watermark/embed",
        headers=auth(EMBED_TOKEN),
        files={"file": ("voice.flac", source.read_bytes())},
        data={"payload": "c0ffee"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-audioguard-verified"] == "true"
    assert response.headers["x-audioguard-payload"] == "00c0ffee"
    assert int(response.headers["content-length"]) == len(response.content)
    assert sf.info(io.BytesIO(response.content)).frames == sf.info(source).frames


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[LiveServer]:
    """One inference thread, no waiting room, and three requests per key before 429."""
    folder = tmp_path_factory.mktemp("limited")
    limits = {
        "inference_threads": 1,
        "queue_size": 0,
        "rate_limit_per_minute": 0.5,
        "rate_limit_burst": 3,
        "retry_after_s": 2,
    }
    live = LiveServer(folder, config_text(folder, limits))
    yield live
    live.stop()


def hold_a_slot(server: LiveServer) -> socket.socket:
    """Start an upload and stop sending: the request holds its place in the queue."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        b"POST /v1/scan HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {EMBED_TOKEN}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 100000\r\n\r\n"
        b'--zz\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'
    )
    return s


def test_a_full_queue_answers_503_with_retry_after(limited):
    clip = {"file": ("a.wav", wav_bytes(1.0, seed=2))}
    with hold_a_slot(limited):
        limited.wait_metric("audioguard_queue_depth", 1)
        response = httpx.post(
            f"{limited.url}/v1/scan", headers=auth(EMBED_TOKEN), files=clip, timeout=60
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "busy"
        assert response.headers["retry-after"] == "2"
        # the event loop is free: health checks still answer at once
        assert httpx.get(f"{limited.url}/healthz", timeout=5).status_code == 200
        assert limited.metric('audioguard_rejected_total{reason="busy"}') == 1
    # the client went away; its place is given back
    limited.wait_metric("audioguard_queue_depth", 0)
    response = httpx.post(
        f"{limited.url}/v1/scan", headers=auth(EMBED_TOKEN), files=clip, timeout=60
    )
    assert response.status_code == 200


def test_the_rate_limit_answers_429_per_key(limited):
    with httpx.Client(base_url=limited.url, timeout=60) as client:
        answers = [client.get("/v1/policies", headers=auth(SCAN_TOKEN)) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].json()["error"]["code"] == "rate_limited"
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert limited.metric('audioguard_rejected_total{reason="rate_limited"}') >= 1


@pytest.mark.slow
def test_two_workers_share_the_port_the_metrics_and_the_audit_log(tmp_path):
    live = LiveServer(tmp_path, config_text(tmp_path), "--workers", "2")
    clips = [wav_bytes(1.0, seed=i) for i in range(12)]

    def post(clip: bytes) -> int:
        with httpx.Client(base_url=live.url, timeout=120) as client:
            return client.post(
                "/v1/scan", headers=auth(SCAN_TOKEN), files={"file": ("a.wav", clip)}
            ).status_code

    try:
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(post, clips)) == [200] * len(clips)
        # /metrics sums over both workers, whichever one answers the scrape
        scans = 'audioguard_requests_total{endpoint="/v1/scan",status="200"}'
        assert live.metric(scans) == len(clips)
        # each worker has its share of the cores as inference threads, plus the queue (16)
        per_worker = max(1, (os.cpu_count() or 1) // 2) + 16
        assert live.metric("audioguard_queue_capacity") == 2 * per_worker
    finally:
        live.stop()
    # both workers appended to one hash chain without breaking it
    check = verify_log(tmp_path / "audit.jsonl")
    assert check.ok, check.problem
    assert check.records == len(clips)
    digests = {json.loads(line)["sha256"] for line in (tmp_path / "audit.jsonl").open()}
    assert digests == {hashlib.sha256(clip).hexdigest() for clip in clips}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(detector_server, tmp_path):
    server = detector_server
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        ",".join(checks),
        "--header",
        f"Authorization: Bearer {EMBED_TOKEN}",
        "--max-examples",
        "50",
        "--workers",
        "2",
        "--seed",
        "1",
        "--request-timeout",
        "60",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    failures = result.stdout[result.stdout.find("FAILURES") :]
    assert result.returncode == 0, failures[:8000] + result.stderr[-2000:]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    operations = {f"{m.upper()} {path}" for path, item in schema["paths"].items() for m in item}
    (report,) = tmp_path.glob("*.xml")
    suite = ElementTree.parse(report).getroot()
    assert {case.get("name") for case in suite.iter("testcase")} == operations
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")


# -- the review page in Debian's chromium, driven over the DevTools protocol ------------


class Page:
    """One page of a headless browser, driven through its DevTools websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)
        return value


def stop_process_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate a process started with ``start_new_session`` and every process in its group,
    and return once none of them is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def chromium_page() -> Iterator[Page]:
    """Debian's chromium, headless, with a throwaway profile; stopped on exit.

    Chromium's helper processes outlive a terminated browser for a moment and keep writing
    into the profile, which once made removing it fail with "Directory not empty"; so the
    browser gets its own process group, and the whole group is stopped and waited for.
    """
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="audioguard-chromium-") as profile:
        process = subprocess.Popen(
            [
                shutil.which("chromium") or "chromium",
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1200,1400",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                assert process.poll() is None, "chromium exited"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            target = next(t for t in targets if t["type"] == "page")
            with connect(target["webSocketDebuggerUrl"], max_size=64 * MB) as ws:
                yield Page(ws)
        finally:
            stop_process_group(process)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_review_page_shows_the_verdict_in_a_real_browser(detector_server, samples_dir, tmp_path):
    server = detector_server
    clip = samples_dir / "speech/warzone_tutorial_tut73.flac"
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all\n" * 10)
    with chromium_page() as page:
        page.call("Page.enable")
        page.call("Page.navigate", url=f"{server.url}/")
        page.wait_for("document.readyState === 'complete' && !!window.setup")
        page.evaluate(
            f"(() => {{ const t = document.getElementById('token'); t.value = '{SCAN_TOKEN}';"
            " t.dispatchEvent(new Event('change')); })()"
        )
        root = page.call("DOM.getDocument")["root"]["nodeId"]
        node = page.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        # What a drop or a pick does: the file input gets the file and fires "change".
        page.call("DOM.setFileInputFiles", nodeId=node, files=[str(clip)])
        page.wait_for("!document.getElementById('result').hidden")
        shown = page.evaluate(
            "({decision: document.getElementById('decision').textContent,"
            " rule: document.getElementById('rule').textContent,"
            " message: document.getElementById('message').textContent,"
            " file: document.getElementById('filename').textContent,"
            " timelines: document.querySelectorAll('#timeline svg').length,"
            " bands: document.querySelectorAll('#timeline rect.segment').length,"
            " probability: document.getElementById('probability').textContent,"
            " errorHidden: document.getElementById('error').hidden})"
        )
        shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        # a file the service refuses: the page says why instead of a verdict
        page.call("DOM.setFileInputFiles", nodeId=node, files=[str(not_audio)])
        refusal = page.wait_for(
            "(e => !e.hidden && e.textContent)(document.getElementById('error'))"
        )
        verdict_hidden = page.evaluate("document.getElementById('result').hidden")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "review-page.png").write_bytes(base64.b64decode(shot["data"]))
    expected = httpx.post(
        f"{server.url}/v1/scan",
        headers=auth(SCAN_TOKEN),
        files={"file": (clip.name, clip.read_bytes())},
        timeout=120,
    ).json()
    assert shown["decision"] == expected["decision"]
    assert shown["message"] == expected["message"]
    assert shown["rule"] == (", ".join(expected["matched_rules"]) or "none (policy default)")
    assert shown["file"] == clip.name
    assert shown["timelines"] == 1
    assert shown["bands"] == len(expected["segments"]) > 0
    assert shown["probability"] == f"{100 * expected['synthetic_probability']:.1f} %"
    assert shown["errorHidden"] is True
    assert refusal.startswith("415 unsupported_media_type: notes.wav:")
    assert verdict_hidden is True
