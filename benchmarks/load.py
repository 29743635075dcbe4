"""Load on the HTTP service: concurrent clients posting 5-second clips to ``/v1/scan``.

Starts ``audioguard serve`` on a free loopback port (its own process, as in production),
then for each client count runs that many clients for ``--seconds``, each posting the next
clip as soon as its previous answer arrives (closed loop, keep-alive connections). Reports
throughput, latency percentiles and errors; then keeps the load on until ``--requests``
requests have been answered since warm-up, sampling the server's resident memory (all of
its processes) along the way, to show whether memory grows. Writes the ``http-load``
section of ``BENCHMARKS.md``.

    python -m benchmarks.load                       # shipped detector, 1 and 8 clients
    python -m benchmarks.load --no-detector --requests 2000 --clients 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from benchmarks.markdown import machine, write_section
from guard.server_config import new_token, token_digest
from watermark.keys import write_key

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
BOUNDARY = "audioguard-load-boundary"
MB = 1 << 20


@dataclass
class Run:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get("200", 0)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def clips(seconds: float, folder: Path) -> list[tuple[str, bytes]]:
    """Each bundled sample cut (or looped) to ``seconds``, in its own format and rate."""
    out = []
    for path in sorted(SAMPLES.glob("*/*.flac")):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        frames = int(seconds * rate)
        data = np.tile(data, (frames // len(data) + 1, 1))[:frames]
        target = folder / f"{path.stem}.flac"
        sf.write(target, data, rate, format="FLAC")
        out.append((target.name, target.read_bytes()))
    return out


def multipart(name: str, data: bytes) -> bytes:
    """The request body, built once per clip so the clients spend no CPU on encoding."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(pid: int) -> set[int]:
    """A process and all its descendants (uvicorn's workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    members, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in members} - members
        members |= more
        grew = bool(more)
    return members


def tree_rss(pid: int) -> int:
    """Resident bytes of the server, all its processes together."""
    total = 0
    for member in family(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += sum(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
        )
    return total


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used so far.

    Divided by the requests answered, this is the cost of a scan whatever else the machine
    is running, where throughput and latency depend on what the other processes leave.
    """
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Server:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.token = new_token()
        write_key(folder / "org.key")
        config = {
            "api_keys": [{"id": "load", "sha256": token_digest(self.token), "scopes": ["scan"]}],
            "limits": {
                "rate_limit_per_minute": 0,
                "queue_size": max(64, 2 * max(args.clients)),
                "max_duration_s": 60,
            },
            "guard": {
                "detector": not args.no_detector,
                "public_backends": args.public_backends,
                "keys": {"org": str(folder / "org.key")},
            },
        }
        if args.inference_threads:
            config["limits"]["inference_threads"] = args.inference_threads
        (folder / "serve.json").write_text(json.dumps(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "server.log").open("w")
        command = [sys.executable, "-c", "from guard.cli import main; main()", "serve"]
        command += ["--config", str(folder / "serve.json"), "--port", str(self.port)]
        command += ["--workers", str(args.workers), "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if k != "AUDIOGUARD_API_KEYS"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited: {(folder / 'server.log').read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
                if ready.status_code == 200:
                    self.ready = ready.json()
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server not ready after 300 s")
            time.sleep(0.25)

    def rss(self) -> int:
        return tree_rss(self.process.pid)

    def cpu(self) -> float:
        return tree_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def load(
    server: Server,
    bodies: list[bytes],
    clients: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
    on_progress=None,
) -> Run:
    """``clients`` closed-loop clients until ``seconds`` pass or ``requests`` are answered."""
    run = Run(clients, 0.0)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds if seconds is not None else float("inf")
    headers = {
        "Authorization": f"Bearer {server.token}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }

    def client(index: int) -> None:
        turn = index
        with httpx.Client(base_url=server.url, timeout=120, headers=headers) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if requests is not None and run.requests >= requests:
                        return
                body = bodies[turn % len(bodies)]
                turn += clients
                start = time.perf_counter()
                try:
                    status = str(http.post("/v1/scan", content=body).status_code)
                except httpx.HTTPError as err:
                    status = type(err).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    run.statuses[status] = run.statuses.get(status, 0) + 1
                    if status == "200":
                        run.latencies.append(elapsed)
                    done = run.requests
                if on_progress is not None:
                    on_progress(done)

    started, cpu = time.monotonic(), server.cpu()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.monotonic() - started
    run.server_cpu = server.cpu() - cpu
    return run


def section(
    args: argparse.Namespace,
    server: Server,
    runs: list[Run],
    memory: list[tuple[int, int]],
    memory_errors: int,
    clip_count: int,
) -> str:
    ready = server.ready
    detector = ready.get("model") or "off"
    backends = ", ".join(ready.get("watermark_backends") or []) or "none"
    mib = [rss / MB for _, rss in memory]
    target_run = next((r for r in runs if r.clients == 8), None)
    lines = [
        "## HTTP service: load",
        "",
        f"Command: `{' '.join(['python -m benchmarks.load', *map(shlex.quote, sys.argv[1:])])}`  ",
        f"Machine: {machine()}  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Server: `audioguard serve --workers {args.workers}` on loopback; "
        f"detector `{detector}`, public watermark checks: {backends}, one keyed key; "
        f"clients: closed loop on this machine (they share its cores), each posting the next "
        f"{args.clip_seconds:g}-second clip (the {clip_count} bundled samples, FLAC) "
        "to `/v1/scan` on a keep-alive connection.",
        "",
        "| clients | requests | seconds | scans/s | p50 ms | p95 ms | p99 ms | max ms | errors "
        "| server CPU ms/scan |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        worst = max(r.latencies) * 1000 if r.latencies else float("nan")
        lines.append(
            f"| {r.clients} | {r.requests} | {r.seconds:.0f} | {r.requests / r.seconds:.1f} | "
            f"{r.percentile(50):.0f} | {r.percentile(95):.0f} | {r.percentile(99):.0f} | "
            f"{worst:.0f} | {r.errors} | {1000 * r.server_cpu / max(r.requests, 1):.0f} |"
        )
    lines += [
        "",
        f"Memory: the server's resident memory (all its processes) after warm-up and every "
        f"{args.sample_every} requests up to {memory[-1][0]}: "
        + ", ".join(f"{m:.0f}" for m in mib)
        + f" MiB; growth {mib[-1] - mib[0]:+.0f} MiB over {memory[-1][0]} requests, "
        f"{memory_errors} errors.",
    ]
    lines += [
        "",
        "Server CPU ms/scan: CPU time of the server's processes over the run divided by the "
        "scans answered; it does not depend on what else the machine runs, so "
        f"{os.cpu_count()} cores idle but for the server would answer about "
        f"{os.cpu_count()} x 1000 / that many scans per second.",
    ]
    if target_run is not None:
        rate = target_run.requests / target_run.seconds
        growth = mib[-1] - mib[0]
        checks = [
            (f"{rate:.1f} scans/s (at least 15)", rate >= 15),
            (
                f"p95 {target_run.percentile(95):.0f} ms (under 300)",
                target_run.percentile(95) < 300,
            ),
            (
                f"{target_run.errors + memory_errors} errors (zero)",
                target_run.errors + memory_errors == 0,
            ),
            (f"memory {growth:+.0f} MiB (under 50 MiB of growth)", growth < 50),
        ]
        lines += [
            "",
            "Target (2 cores, shipped detector, 8 clients): "
            + "; ".join(f"{text}: {'met' if ok else 'NOT met'}" for text, ok in checks)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each timed run")
    parser.add_argument("--requests", type=int, default=10_000, help="for the memory check")
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--inference-threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--no-detector", action="store_true")
    parser.add_argument(
        "--public-backends",
        default="",
        type=lambda s: [b for b in s.split(",") if b],
        help="public watermark checks in each scan, e.g. audioseal,perth (default: none)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="audioguard-load-") as tmp:
        folder = Path(tmp)
        named = clips(args.clip_seconds, folder)
        bodies = [multipart(name, data) for name, data in named]
        server = Server(args, folder)
        try:
            warm = load(server, bodies, max(args.clients), requests=4 * max(args.clients))
            if warm.errors:
                raise SystemExit(f"warm-up failed: {warm.statuses}")
            memory = [(0, server.rss())]
            runs = []
            for count in args.clients:
                run = load(server, bodies, count, seconds=args.seconds)
                runs.append(run)
                print(
                    f"{count} clients: {run.requests / run.seconds:.1f} scans/s, "
                    f"p50 {run.percentile(50):.0f} ms, p95 {run.percentile(95):.0f} ms, "
                    f"p99 {run.percentile(99):.0f} ms, statuses {run.statuses}",
                    flush=True,
                )
            done = sum(r.requests for r in runs)
            next_sample = (done // args.sample_every + 1) * args.sample_every
            lock = threading.Lock()

            def sample(count: int) -> None:
                nonlocal next_sample
                with lock:
                    if done + count >= next_sample:
                        memory.append((done + count, server.rss()))
                        print(f"{done + count} requests: {memory[-1][1] / MB:.0f} MiB", flush=True)
                        next_sample += args.sample_every

            memory_errors = 0
            if args.requests > done:
                rest = load(
                    server,
                    bodies,
                    max(args.clients),
                    requests=args.requests - done,
                    on_progress=sample,
                )
                memory_errors = rest.errors
                memory.append((done + rest.requests, server.rss()))
        finally:
            server.stop()
    text = section(args, server, runs, memory, memory_errors, len(bodies))
    print(text)
    if not args.no_write:
        write_section(args.out, "http-load", text)


if __name__ == "__main__":
    main()
