"""Prometheus metrics of the service.

Each app gets its own registry, so several apps in one process (tests, mounting) never
collide. Under ``audioguard serve --workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start; prometheus_client then keeps values in files there and
``/metrics`` answers with the sum over all live workers, whichever worker serves the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Scans of a few seconds of audio take tens to hundreds of milliseconds; uploads of minutes
# of audio take seconds.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "audioguard_requests",
            "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "audioguard_request_duration_seconds",
            "Time from the request's first byte to its last answer byte, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "audioguard_decisions",
            "Scan decisions, by action and policy.",
            ["action", "policy"],
            registry=r,
        )
        self.rejected = Counter(
            "audioguard_rejected",
            "Requests refused before or instead of inference, by reason.",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "audioguard_queue_depth",
            "Requests admitted to the models and not yet answered (running and waiting).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "audioguard_queue_capacity",
            "Most requests admitted at once before the service answers 503.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess:
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every answer and times it, labelled by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
