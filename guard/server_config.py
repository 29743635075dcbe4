"""Configuration of the HTTP service: one YAML or JSON file, plus API keys from the environment.

The file is validated completely when the service starts, so a typo (an unknown field, a scope
that does not exist, a key file that is missing) stops it with one sentence naming the field,
instead of surfacing on the first request. API keys are stored as SHA-256 digests of their
tokens: tokens are random strings of at least 128 bits, so a fast hash cannot be brute-forced
and keeps authentication cheap on every request (the same choice GitHub and PyPI make for
their tokens); a stolen config file does not let anyone call the service.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

SCOPES = ("scan", "embed")
"""``scan``: scan, detect, watermark detect, policies. ``embed``: mark audio with a server key."""

ENV_API_KEYS = "AUDIOGUARD_API_KEYS"
ENV_CONFIG = "AUDIOGUARD_CONFIG"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ValueError):
    """The service configuration is unusable; the message names the field and the problem."""


@dataclass(frozen=True)
class ApiKey:
    """A client's key: who it is, the SHA-256 of its token, and what it may do."""

    id: str
    sha256: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class ServerConfig:
    """Everything the service needs; paths are absolute once loaded from a file."""

    host: str = "127.0.0.1"
    port: int = 8000
    docs: bool = True
    insecure_no_auth: bool = False
    api_keys: tuple[ApiKey, ...] = ()
    # Limits. The upload limit counts the multipart body; the duration comes from the header.
    max_upload_bytes: int = 100_000_000
    max_duration_s: float = 600.0
    max_field_bytes: int = 65_536
    upload_timeout_s: float = 60.0
    # After its first `upload_timeout_s`, an upload must average at least this (408 if not).
    upload_min_bytes_per_s: float = 16_384.0
    # Requests admitted at once per worker: `inference_threads` running plus `queue_size`
    # waiting (uploads in progress count, so a busy server refuses before the body is sent).
    queue_size: int = 16
    inference_threads: int | None = None
    # torch's intra-op threads for this process; None leaves torch's setting alone (an app
    # mounted in someone else's process should not change it). The CLI sets a fair share.
    torch_threads: int | None = None
    retry_after_s: int = 1
    # Per API key and per worker: a token bucket refilled at this rate. 0 turns it off.
    rate_limit_per_minute: float = 600.0
    rate_limit_burst: int = 60
    # What the Guard is built from.
    policy: str = "upload-screening"
    generator_policy: str = "generator-output"
    policies_dir: Path | None = None
    keys: Mapping[str, Path] = field(default_factory=dict)
    use_detector: bool = True
    detector_head: Path | None = None
    public_backends: tuple[str, ...] = ("audioseal", "perth")
    audit_log: Path | None = None
    audit_signing_key: Path | None = None
    tmp_dir: Path | None = None

    def validate(self) -> ServerConfig:
        """Check what can be checked without loading models; returns self for chaining."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: {self.port} is not a TCP port")
        positive = {
            "limits.max_upload_bytes": self.max_upload_bytes,
            "limits.max_duration_s": self.max_duration_s,
            "limits.max_field_bytes": self.max_field_bytes,
            "limits.upload_timeout_s": self.upload_timeout_s,
            "limits.upload_min_bytes_per_s": self.upload_min_bytes_per_s,
            "limits.retry_after_s": self.retry_after_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name}: must be positive, got {value}")
        if self.queue_size < 0:
            raise ConfigError(f"limits.queue_size: must be 0 or more, got {self.queue_size}")
        if self.inference_threads is not None and self.inference_threads < 1:
            raise ConfigError(
                f"limits.inference_threads: must be 1 or more, got {self.inference_threads}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"limits.torch_threads: must be 1 or more, got {self.torch_threads}")
        if self.rate_limit_per_minute < 0 or self.rate_limit_burst < 1:
            raise ConfigError(
                "limits.rate_limit_per_minute must be 0 (off) or more and "
                "limits.rate_limit_burst 1 or more"
            )
        ids = [k.id for k in self.api_keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"api_keys: id {duplicates[0]!r} is given more than once")
        digests = [k.sha256 for k in self.api_keys]
        if len(set(digests)) != len(digests):
            raise ConfigError("api_keys: two keys have the same token")
        if not self.api_keys:
            if not self.insecure_no_auth:
                raise ConfigError(
                    "no API keys: add api_keys to the config or set "
                    f"{ENV_API_KEYS}=id:token:scan+embed (or, on loopback only, "
                    "--insecure-no-auth)"
                )
            if not is_loopback(self.host):
                raise ConfigError(
                    f"refusing to serve without API keys on {self.host}; "
                    "--insecure-no-auth is only allowed on a loopback address"
                )
        for key_id, path in self.keys.items():
            # The Guard, its audit records and policies name a key by its file's stem; one
            # name everywhere beats a mapping that each answer would have to apply.
            if path.stem != key_id:
                raise ConfigError(
                    f"guard.keys: the key id {key_id!r} must be its file's name without the "
                    f"extension ({path.name} gives {path.stem!r}); rename one of them"
                )
        # Checked here, before any worker starts: a worker that fails to load one prints a
        # traceback per process instead of this one sentence.
        files = [(f"guard.keys.{key_id}", path) for key_id, path in self.keys.items()]
        files += [("guard.detector_head", self.detector_head)]
        files += [("guard.audit_signing_key", self.audit_signing_key)]
        for name, path in files:
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: {path} does not exist or is not a file")
        return self

    @property
    def threads(self) -> int:
        """Inference threads: the configured number, or one per core."""
        return self.inference_threads or max(1, os.cpu_count() or 1)

    def to_json(self) -> str:
        """The resolved config, so uvicorn's worker processes rebuild exactly this one.

        Only token digests travel, never tokens.
        """
        data = asdict(self)
        for name in _PATH_FIELDS:
            data[name] = None if data[name] is None else str(data[name])
        data["keys"] = {k: str(v) for k, v in self.keys.items()}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data = json.loads(text)
        data["api_keys"] = tuple(
            ApiKey(k["id"], k["sha256"], tuple(k["scopes"])) for k in data["api_keys"]
        )
        data["public_backends"] = tuple(data["public_backends"])
        data["keys"] = {k: Path(v) for k, v in data["keys"].items()}
        for name in _PATH_FIELDS:
            data[name] = None if data[name] is None else Path(data[name])
        return cls(**data)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_digest(token: str) -> str:
    """The hex SHA-256 stored for a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh 256-bit token, URL-safe, prefixed so it is recognisable in a leaked log."""
    return "ag_" + secrets.token_urlsafe(32)


def parse_env_keys(value: str) -> tuple[ApiKey, ...]:
    """``id:token:scope+scope`` entries separated by commas; tokens are hashed at once."""
    keys = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        key_id, sep, rest = entry.partition(":")
        token, sep2, scopes = rest.rpartition(":")
        if not sep or not sep2 or not key_id or not token:
            raise ConfigError(
                f"{ENV_API_KEYS}: entry {key_id or entry!r} is not id:token:scope+scope"
            )
        keys.append(
            ApiKey(_key_id(key_id, ENV_API_KEYS), token_digest(token), _scopes(scopes.split("+")))
        )
    return tuple(keys)


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """The config file (if any) with the environment's API keys added, validated."""
    environ = os.environ if environ is None else environ
    config = ServerConfig() if path is None else _from_file(Path(path))
    env_keys = environ.get(ENV_API_KEYS, "")
    if env_keys.strip():
        config = replace(config, api_keys=config.api_keys + parse_env_keys(env_keys))
    return config


_LIMIT_FIELDS = {
    "max_upload_bytes": int,
    "max_duration_s": float,
    "max_field_bytes": int,
    "upload_timeout_s": float,
    "upload_min_bytes_per_s": float,
    "queue_size": int,
    "inference_threads": int,
    "torch_threads": int,
    "retry_after_s": int,
    "rate_limit_per_minute": float,
    "rate_limit_burst": int,
}
_PATH_FIELDS = ("policies_dir", "detector_head", "audit_log", "audit_signing_key", "tmp_dir")
_GUARD_FIELDS = {
    "policy",
    "generator_policy",
    "policies_dir",
    "keys",
    "detector",
    "detector_head",
    "public_backends",
    "audit_log",
    "audit_signing_key",
}
_TOP_FIELDS = {"host", "port", "docs", "api_keys", "limits", "guard", "tmp_dir"}


def _from_file(path: Path) -> ServerConfig:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML or JSON ({err})") from err
    try:
        return _from_mapping(data, path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def _from_mapping(data: Any, base: Path) -> ServerConfig:
    top = _mapping(data, "the config", _TOP_FIELDS)
    limits = _mapping(top.get("limits", {}), "limits", set(_LIMIT_FIELDS))
    guard = _mapping(top.get("guard", {}), "guard", _GUARD_FIELDS)
    values: dict[str, Any] = {}
    if "host" in top:
        values["host"] = _typed(top["host"], str, "host")
    if "port" in top:
        values["port"] = _typed(top["port"], int, "port")
    if "docs" in top:
        values["docs"] = _typed(top["docs"], bool, "docs")
    if top.get("tmp_dir") is not None:
        values["tmp_dir"] = _path(top["tmp_dir"], base, "tmp_dir")
    values["api_keys"] = tuple(
        _api_key(entry, i)
        for i, entry in enumerate(_typed(top.get("api_keys") or [], list, "api_keys"))
    )
    for name, kind in _LIMIT_FIELDS.items():
        if limits.get(name) is not None:
            values[name] = _typed(limits[name], kind, f"limits.{name}")
    for name in ("policy", "generator_policy"):
        if name in guard:
            values[name] = _typed(guard[name], str, f"guard.{name}")
    for name in ("policies_dir", "detector_head", "audit_log", "audit_signing_key"):
        if guard.get(name) is not None:
            values[name] = _path(guard[name], base, f"guard.{name}")
    if "detector" in guard:
        values["use_detector"] = _typed(guard["detector"], bool, "guard.detector")
    if "public_backends" in guard:
        backends = _typed(guard["public_backends"], list, "guard.public_backends")
        values["public_backends"] = tuple(_typed(b, str, "guard.public_backends") for b in backends)
    keys = _typed(guard.get("keys", {}), dict, "guard.keys")
    values["keys"] = {
        _key_id(str(k), "guard.keys"): _path(v, base, f"guard.keys.{k}") for k, v in keys.items()
    }
    return ServerConfig(**values)


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of names to values")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return value


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int in Python; a port of `true` is a mistake, not 1.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = {list: "a list", dict: "a mapping", str: "a string", bool: "true or false"}
        raise ConfigError(f"{where} must be {names.get(kind, f'a number ({kind.__name__})')}")
    return value


def _path(value: Any, base: Path, where: str) -> Path:
    path = Path(_typed(value, str, where)).expanduser()
    return path if path.is_absolute() else base / path


def _key_id(value: str, where: str) -> str:
    if not _ID.match(value):
        raise ConfigError(f"{where}: {value!r} is not a usable id (letters, digits, ._-)")
    return value


def _scopes(values: list[Any]) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(str(s).strip() for s in values if str(s).strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ConfigError(
            f"scope {unknown[0]!r} does not exist; scopes are {', '.join(SCOPES)}"
            if unknown
            else f"a key needs at least one scope ({', '.join(SCOPES)})"
        )
    return scopes


def _api_key(entry: Any, index: int) -> ApiKey:
    where = f"api_keys[{index}]"
    entry = _mapping(entry, where, {"id", "sha256", "scopes"})
    for name in ("id", "sha256", "scopes"):
        if name not in entry:
            raise ConfigError(f"{where}: missing {name!r}")
    key_id = _key_id(_typed(entry["id"], str, f"{where}.id"), f"{where}.id")
    digest = _typed(entry["sha256"], str, f"{where}.sha256").strip().lower()
    if not _HEX64.match(digest):
        raise ConfigError(
            f"{where}.sha256: must be the 64-hex-digit SHA-256 of the token "
            "(`audioguard serve --new-api-key ID` prints one)"
        )
    try:
        scopes = _scopes(_typed(entry["scopes"], list, f"{where}.scopes"))
    except ConfigError as err:
        raise ConfigError(f"{where}.scopes: {err}") from err
    return ApiKey(key_id, digest, scopes)
