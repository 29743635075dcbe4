"""The Guard: detector, watermark backends and policies built once, then applied per input.

This is where component results become the flat *facts* a policy reads, and where every
decision is written to the audit log. The CLI, the model wrappers and the HTTP service all go
through it, so the three always decide the same way on the same audio.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from guard.audio import Limits, load, sha256_file
from policies import AuditLog, Policy, builtin_policy_path, load_signing_key
from watermark.keys import read_key
from watermark.registry import create_backend
from watermark.types import WatermarkBackend, WatermarkError


@dataclass(frozen=True)
class GuardConfig:
    """What to build. Policies are shipped names or YAML paths; keys are key files."""

    policy: str | Path = "upload-screening"
    generator_policy: str | Path = "generator-output"
    keys: tuple[Path, ...] = ()
    detector_head: str | Path | None = None
    use_detector: bool = True
    public_backends: tuple[str, ...] = ("audioseal", "perth")
    audit_log: Path | None = None
    audit_signing_key: Path | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Verdict:
    """One screened input: the decision, why, and every fact it was taken on."""

    path: str | None
    decision: str
    matched_rules: list[str]
    message: str
    synthetic_probability: float | None
    segments: list[dict[str, float]]
    watermarks: list[dict[str, Any]]
    sha256: str | None
    duration: float
    policy: dict[str, Any]
    model: str | None
    trace: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProtectResult:
    """Marked audio (or the input, when marking failed) and what the policy made of it."""

    audio: torch.Tensor
    verified: bool
    detection: dict[str, Any] | None
    decision: dict[str, Any]
    marked_seconds: float
    snr_db: float | None


def _keyed_backends(paths: tuple[Path, ...]) -> dict[str, WatermarkBackend]:
    """One keyed backend per key file, by the file's stem: the id findings and embeds name.

    Two different files with one stem (``a/org.key``, ``b/org.key``) would leave one key
    unchecked without a word, so they are refused; the same file named twice is one key.
    """
    files: dict[str, Path] = {}
    for path in paths:
        path = Path(path)
        seen = files.setdefault(path.stem, path)
        if seen != path and not _same_file(seen, path):
            raise WatermarkError(
                f"the keys {seen} and {path} would both be called {path.stem!r} in the "
                "findings: rename one of the files"
            )
    return {stem: create_backend("keyed", key=read_key(path)) for stem, path in files.items()}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one is missing: read_key says so
        return False


def resolve_policy(policy: str | Path) -> Path:
    """A shipped policy by name (``upload-screening``) or a YAML file by path."""
    path = Path(policy)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return builtin_policy_path(str(policy))


class Guard:
    """Built once per process; ``screen`` and ``protect`` are safe to call from many threads."""

    def __init__(self, config: GuardConfig = GuardConfig()) -> None:
        self.config = config
        self.policy = Policy.load(resolve_policy(config.policy))
        self.generator_policy = Policy.load(resolve_policy(config.generator_policy))
        self.detector = self._build_detector(config)
        self.keyed = _keyed_backends(config.keys)
        self.public: list[WatermarkBackend] = [create_backend(n) for n in config.public_backends]
        self.audit = None
        if config.audit_log:
            key = load_signing_key(config.audit_signing_key) if config.audit_signing_key else None
            self.audit = AuditLog(config.audit_log, signing_key=key)

    @staticmethod
    def _build_detector(config: GuardConfig):
        if not config.use_detector:
            return None
        from detectors import load_detector

        return load_detector(config.detector_head)

    def with_policy(self, policy: str | Path) -> Guard:
        """The same models, keys and audit log under another screening policy.

        A service offering several policies builds the expensive parts once and shares them.
        """
        other = copy.copy(self)
        other.policy = Policy.load(resolve_policy(policy))
        return other

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.keyed)

    @property
    def model_id(self) -> str | None:
        return self.detector.model_id if self.detector is not None else None

    def versions(self) -> dict[str, Any]:
        """What an audit record and a report cite so a decision can be reproduced."""
        return {
            "policy": {"name": self.policy.name, "version": self.policy.version},
            "model": self.model_id,
            "watermark_backends": [*(f"keyed:{k}" for k in self.key_ids)]
            + [b.name for b in self.public],
        }

    def screen_file(self, path: str | Path, meta: dict[str, Any] | None = None) -> Verdict:
        """Decode (raising ``AudioError`` with one sentence on bad input) and screen."""
        audio, info = load(path, self.config.limits)
        return self.screen(audio, info.sample_rate, meta, sha256=sha256_file(path), path=str(path))

    def screen(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        meta: dict[str, Any] | None = None,
        sha256: str | None = None,
        path: str | None = None,
        tags: list[str] | None = None,
    ) -> Verdict:
        """Screen one waveform; ``tags`` are labels a model gave it, for rules to read."""
        facts = self.facts(audio, sample_rate, meta, tags)
        decision = self.policy.decide(facts)
        verdict = Verdict(
            path=path,
            decision=decision.action,
            matched_rules=list(decision.matched_rules),
            message=decision.message,
            synthetic_probability=facts["synthetic_probability"],
            segments=facts["segments"],
            watermarks=facts["watermarks"],
            sha256=sha256,
            duration=facts["duration"],
            policy={"name": decision.policy_name, "version": decision.policy_version},
            model=self.model_id,
            trace=decision.to_dict().get("trace", []),
        )
        self._log(sha256, decision, facts)
        return verdict

    def facts(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        meta: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> dict[str, Any]:
        """Run every component once and flatten the answers into policy facts."""
        probability, segments, speech = None, [], None
        if self.detector is not None:
            result = self.detector.predict(audio, sample_rate)
            # The policy decides on the figures `detect` prints, rounded the same way.
            found = result.to_dict()
            probability, segments = found["synthetic_probability"], found["segments"]
            speech = result.speech_seconds
        return {
            "synthetic_probability": probability,
            "segments": segments,
            "speech_seconds": speech,
            "watermarks": self.watermark_findings(audio, sample_rate),
            "duration": round(audio.shape[-1] / sample_rate, 3),
            "sample_rate": sample_rate,
            "channels": int(audio.shape[0]),
            "tags": list(tags or []),
            "meta": dict(meta or {}),
            # nothing was embedded here, so nothing was verified either way: a policy reads
            # null, and generator-output then judges the keyed mark it finds in the audio
            "mark_verified": None,
        }

    def watermark_findings(self, audio: torch.Tensor, sample_rate: int) -> list[dict[str, Any]]:
        """Every keyed mark this Guard holds a key for, then every public mark."""
        found = []
        for key_id, backend in sorted(self.keyed.items()):
            found.append({**_finding(backend, audio, sample_rate), "key_id": key_id})
        for backend in self.public:
            found.append(_finding(backend, audio, sample_rate))
        return found

    def protect(
        self,
        audio: torch.Tensor,
        sample_rate: int,
        payload: str,
        key_id: str | None = None,
        meta: dict[str, Any] | None = None,
        sha256: str | None = None,
    ) -> ProtectResult:
        """Mark with the keyed backend, verify, and let the generator policy judge the result."""
        backend = self._keyed_backend(key_id)
        marked, detection, verified, seconds, snr = audio, None, False, 0.0, None
        try:
            result = backend.embed(audio, sample_rate, payload)
            marked, detection = result.audio, result.verification.to_dict()
            verified, seconds, snr = True, result.marked_seconds, result.snr_db
        except WatermarkError as exc:
            detection = {
                "backend": "keyed",
                "detected": False,
                "p_value": 1.0,
                "payload": None,
                "segments": [],
                "error": str(exc),
            }
        facts = {
            "synthetic_probability": None,
            "segments": [],
            "speech_seconds": None,
            "watermarks": [detection],
            "duration": round(audio.shape[-1] / sample_rate, 3),
            "sample_rate": sample_rate,
            "channels": int(audio.shape[0]),
            "tags": [],
            "meta": dict(meta or {}),
            "mark_verified": verified,
        }
        decision = self.generator_policy.decide(facts)
        self._log(sha256 or samples_sha256(marked), decision, facts)
        return ProtectResult(marked, verified, detection, decision.to_dict(), seconds, snr)

    def _keyed_backend(self, key_id: str | None) -> WatermarkBackend:
        if key_id is None and len(self.keyed) == 1:
            return next(iter(self.keyed.values()))
        if key_id in self.keyed:
            return self.keyed[key_id]
        known = ", ".join(self.key_ids) or "none"
        raise WatermarkError(f"no watermark key {key_id!r} is loaded (loaded: {known})")

    def _log(self, sha256: str | None, decision: Any, facts: dict[str, Any]) -> None:
        if self.audit is None:
            return
        self.audit.append(
            {
                "sha256": sha256,
                "decision": decision.action,
                "matched_rules": list(decision.matched_rules),
                "message": decision.message,
                "facts": facts,
                **self.versions(),
                "policy": {"name": decision.policy_name, "version": decision.policy_version},
            }
        )


MAX_META_DEPTH = 32


def parse_meta(text: str) -> dict[str, Any]:
    """The caller's metadata (the facts ``meta.*``) from JSON text, for the CLI and the service.

    Raises ValueError with a sentence. Nesting is bounded: thousands of brackets fit in a
    small field, and json, the policy engine and the audit log all recurse through them.
    Every value must also be one the audit log can write: NaN, infinities and text that is
    not Unicode passed here, the models ran, and the log's refusal came back as a 500.
    """
    too_deep = f"meta is nested too deeply (at most {MAX_META_DEPTH} levels)"
    try:
        meta = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"meta is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError(too_deep) from None
    except JsonNumberError as exc:
        if exc.constant is None:
            raise ValueError("meta holds a number too long to read") from None
        raise ValueError(
            f"meta holds {exc.constant}, which is not a number the audit log can record"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError('meta must be a JSON object, e.g. {"uploader": "alice"}')
    if _depth(meta) > MAX_META_DEPTH:
        raise ValueError(too_deep)
    _check_values(meta)
    return meta


class JsonNumberError(ValueError):
    """A number JSON text holds that no fact can: NaN or an infinity (``constant`` names it),
    or an integer too long for Python to read (``constant`` is None)."""

    def __init__(self, constant: str | None) -> None:
        super().__init__(constant or "an integer too long to read")
        self.constant = constant


def loads_strict(text: str) -> Any:
    """``json.loads`` for facts a caller hands us (``meta``, ``--facts``).

    Python's json reads NaN and Infinity, which JSON has not got and which compare false with
    every threshold; and its refusal of a 5,000-digit integer is a sentence about
    ``sys.set_int_max_str_digits``. Both become :class:`JsonNumberError`. Decoding errors
    and ``RecursionError`` (deep nesting) pass through for the caller to word.
    """

    def refuse(constant: str) -> float:
        raise JsonNumberError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except (json.JSONDecodeError, JsonNumberError):
        raise
    except ValueError:  # the limit on an integer's digits
        raise JsonNumberError(None) from None


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value``, without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _check_values(meta: dict[str, Any]) -> None:
    """Refuse an overflowing number (``1e999`` reads as infinity) and text with a lone
    surrogate (``"\\ud800"`` is valid JSON, but not UTF-8 the log can write)."""
    stack: list[Any] = [meta]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("meta holds a number too large to record")
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("meta holds text that is not valid Unicode") from None


def samples_sha256(audio: torch.Tensor) -> str:
    """A digest of generated samples, so a generator's audit record names its exact output."""
    return hashlib.sha256(audio.detach().float().contiguous().numpy().tobytes()).hexdigest()


def _finding(backend: WatermarkBackend, audio: torch.Tensor, sample_rate: int) -> dict[str, Any]:
    """One backend's answer as a fact; a backend that cannot run says why instead of failing."""
    try:
        found = backend.detect(audio, sample_rate).to_dict()
    except WatermarkError as exc:
        return {
            "backend": backend.name,
            "detected": False,
            "p_value": None,
            "payload": None,
            "segments": [],
            "error": str(exc),
        }
    return {k: found[k] for k in ("backend", "detected", "p_value", "payload", "segments", "score")}
