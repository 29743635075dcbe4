"""Back-pressure: a per-key rate limit (429) and a bounded queue in front of the models (503).

Both live on the event loop and are only touched from it, so they need no locks. Both are per
worker process; with several workers the effective limits multiply by the worker count (put a
global limit in the reverse proxy if you need one).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``per_minute``.

    ``clock`` is injectable so the arithmetic can be tested without sleeping.
    """

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float | None:
        """Take one token; None when granted, else the seconds until one is available."""
        if not self.enabled:
            return None
        now = self.clock()
        bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(seconds)))


class AdmissionGate:
    """Counts requests admitted to the models; refuses when ``capacity`` are already in.

    A request enters before its upload is read and leaves when its answer is ready, so a busy
    worker refuses at once, before the client spends time sending the file (and with
    ``Expect: 100-continue`` before the body is sent at all). One holder (an API key) may
    hold at most ``per_holder`` places: uploads hold theirs while they arrive, and a key
    that sent several slowly would otherwise shut every other key out.
    """

    def __init__(
        self,
        capacity: int,
        on_change: Callable[[int], None] | None = None,
        per_holder: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.per_holder = capacity if per_holder is None else max(1, min(per_holder, capacity))
        self.depth = 0
        self._held: Counter[str] = Counter()
        self._on_change = on_change

    def try_enter(self, holder: str = "") -> bool:
        if self.depth >= self.capacity or self._held[holder] >= self.per_holder:
            return False
        self.depth += 1
        self._held[holder] += 1
        self._changed()
        return True

    def leave(self, holder: str = "") -> None:
        self.depth -= 1
        self._held[holder] -= 1
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.depth)
