"""The shapes of the service's answers, for its OpenAPI schema.

Endpoints return plain dicts from the Guard (no second validation pass on the hot path);
these models document them, and the schemathesis test checks every answer against them.
Extra fields are allowed: fields may be added, the ones listed stay.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every answer other than success."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(_Open):
    status: Literal["ready"]
    model: str | None
    policies: list[str]
    default_policy: str
    keys: list[str]
    watermark_backends: list[str]


class RuleInfo(_Open):
    id: str
    action: str


class PolicyInfo(_Open):
    name: str
    policy_name: str
    version: int | str
    default: str
    rules: list[RuleInfo]


class PolicyList(BaseModel):
    default: str
    policies: list[PolicyInfo]


class SegmentScore(_Open):
    start: float
    end: float
    synthetic_probability: float


class WatermarkFinding(_Open):
    backend: str
    detected: bool
    p_value: float | None
    payload: str | None = None
    segments: list[dict[str, Any]] = []


class PolicyRef(_Open):
    name: str
    version: int | str


class ScanResult(_Open):
    path: str | None
    decision: Literal["allow", "label", "review", "block"]
    matched_rules: list[str]
    message: str
    synthetic_probability: float | None
    segments: list[SegmentScore]
    watermarks: list[WatermarkFinding]
    sha256: str | None
    duration: float
    policy: PolicyRef
    model: str | None
    trace: list[dict[str, Any]]


class DetectResult(_Open):
    path: str
    # None when no window held speech to judge (silence, music, effects).
    synthetic_probability: float | None
    segments: list[SegmentScore]
    model: str
    speech_seconds: float


class WatermarkResult(BaseModel):
    path: str
    watermarks: list[WatermarkFinding]


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}
_DESCRIPTIONS = {
    400: "Malformed request: missing file, bad field, unknown policy or key.",
    401: "Missing or unknown API key.",
    403: "The API key lacks the scope this endpoint needs.",
    408: "The client stopped sending the upload.",
    413: "The upload is over the size limit, or the audio over the duration limit.",
    415: "Not multipart, or not a WAV, FLAC, OGG or MP3 file.",
    422: "Audio that cannot be used: damaged, NaN samples, unsupported rate or channels.",
    429: "This API key is over its rate limit.",
    503: "The service is at capacity, or its models are still loading.",
}
ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    | ({"headers": _RETRY_AFTER} if status in (429, 503) else {})
    for status, text in _DESCRIPTIONS.items()
}


def _example_wav() -> str:
    """A valid half-second WAV whose every byte is ASCII, so it can be a schema example.

    8 kHz, 8-bit PCM, 4096 samples of a quiet saw-tooth below the mid level (8-bit PCM is
    unsigned, so these bytes stay under 0x80): the header's numbers were chosen so none of
    its bytes reaches 0x80 either. Fuzzers and the docs' "try it out" then have a file the
    service accepts.
    """
    samples = bytes(0x40 + (i % 32) for i in range(4096))
    header = (
        b"RIFF"
        + (36 + len(samples)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")  # PCM
        + (1).to_bytes(2, "little")  # mono
        + (8000).to_bytes(4, "little")  # rate
        + (8000).to_bytes(4, "little")  # bytes per second
        + (1).to_bytes(2, "little")  # block align
        + (8).to_bytes(2, "little")  # bits
        + b"data"
        + len(samples).to_bytes(4, "little")
    )
    return (header + samples).decode("ascii")


EXAMPLE_WAV = _example_wav()


def multipart_body(
    *,
    policies: list[str] | None = None,
    meta: bool = False,
    payload: bool = False,
    key_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI request body of an upload endpoint (parsed by hand, so declared by hand).

    ``policies`` and ``key_ids`` list the names this server knows, so clients and fuzzers
    see the valid values.
    """
    properties: dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "WAV, FLAC, OGG or MP3.",
            "example": EXAMPLE_WAV,
        }
    }
    required = ["file"]
    if meta:
        properties["meta"] = {
            "type": "string",
            "description": "The caller's metadata as a JSON object; policies read it as meta.*.",
            "example": '{"uploader": "u1"}',
        }
    if policies is not None:
        properties["policy"] = {
            "type": "string",
            "enum": policies,
            "description": "A policy from GET /v1/policies; the default when absent.",
        }
    if payload:
        properties["payload"] = {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{1,8}$",
            "description": "1 to 8 hex digits (32 bits) carried by the mark.",
            "example": "2026112a",
        }
        required.append("payload")
    if key_ids is not None:
        properties["key_id"] = {
            "type": "string",
            "enum": key_ids,
            "description": "A key held by the server; optional when it holds exactly one.",
        }
    schema = {"type": "object", "properties": properties, "required": required}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }
