"""Bearer-token authentication with scopes.

Tokens are looked up by their SHA-256, so the service never holds a token and the lookup's
timing depends on the digest, which tells an attacker nothing about any real token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from guard.server_config import SCOPES, ApiKey
from guard.server_errors import ApiError


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id and what it may do."""

    id: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))
"""The caller when the service runs with ``--insecure-no-auth`` (loopback only)."""

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="audioguard"'}


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, or a 401."""

    def __init__(self, keys: tuple[ApiKey, ...], allow_anonymous: bool = False) -> None:
        self._keys = {bytes.fromhex(k.sha256): k for k in keys}
        self._anonymous = allow_anonymous and not keys

    def authenticate(self, authorization: str | None) -> Principal:
        if self._anonymous:
            return ANONYMOUS
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key; send it as 'Authorization: Bearer <token>'",
                _CHALLENGE,
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "unauthorized",
                "the Authorization header must be 'Bearer <token>'",
                _CHALLENGE,
            )
        key = self._keys.get(hashlib.sha256(token.encode()).digest())
        if key is None:
            raise ApiError(401, "unauthorized", "unknown API key", _CHALLENGE)
        return Principal(key.id, frozenset(key.scopes))


def require_scope(principal: Principal, scope: str) -> None:
    """403 unless the caller's key carries ``scope``."""
    if scope not in principal.scopes:
        granted = ", ".join(sorted(principal.scopes)) or "none"
        raise ApiError(
            403,
            "forbidden",
            f"API key {principal.id!r} lacks the {scope!r} scope (it has: {granted})",
        )
