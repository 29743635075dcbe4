"""Build a watermark backend from its name, so callers never import a backend module directly.

Imports are lazy: the public backends pull in large packages (audioseal, perth) that a user of
the keyed mark alone should not pay for.
"""

from __future__ import annotations

from pathlib import Path

from watermark.types import WatermarkBackend, WatermarkError

BACKENDS = ("keyed", "audioseal", "perth")


def create_backend(
    name: str, *, key: bytes | None = None, weights: str | Path | None = None
) -> WatermarkBackend:
    """The backend called ``name``: ``key`` is for ``keyed``, ``weights`` for ``audioseal``."""
    if name == "keyed":
        if key is None:
            raise WatermarkError(
                "the keyed watermark needs a key (--key KEYFILE; create one with keygen)"
            )
        from watermark.keyed import KeyedBackend

        return KeyedBackend(key)
    if name == "audioseal":
        from watermark.backends.audioseal_backend import AudioSealBackend

        return AudioSealBackend(weights=weights)
    if name == "perth":
        from watermark.backends.perth_backend import PerthBackend

        return PerthBackend()
    raise WatermarkError(f"unknown watermark backend {name!r}; choose one of {', '.join(BACKENDS)}")
