"""The HTTP service: FastAPI endpoints that parse, call the Guard once, and format.

A request for the models goes through, in order: authentication (401) and scope (403), the
per-key rate limit (429), admission to the bounded queue (503 with ``Retry-After``), the
upload streamed to a private temporary folder (413 at the size limit), decoding by
:mod:`guard.audio` (415 when it is not audio we read, 413 over the duration limit, 422 when
it is damaged) and finally the Guard in a thread pool sized to the cores, so the event loop
keeps answering health checks and rejections while models run. The folder is removed
whatever happens. Every answer other than success is ``{"error": {"code", "message"}}``.

``create_app(config)`` builds an app to mount inside another ASGI app (run its lifespan);
``app_factory()`` is what ``audioguard serve`` hands uvicorn, so every worker builds its own
Guard from the same configuration before it accepts a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar
from urllib.parse import quote

import anyio.to_thread
import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from guard import audio as audio_io
from guard.guard import Guard, GuardConfig, parse_meta
from guard.server_auth import Authenticator, Principal, require_scope
from guard.server_config import ENV_CONFIG, ServerConfig, load_config
from guard.server_errors import ApiError, error_response
from guard.server_limits import AdmissionGate, RateLimiter, retry_after
from guard.server_metrics import Metrics, MetricsMiddleware
from guard.server_schema import (
    ERROR_RESPONSES,
    DetectResult,
    Health,
    PolicyList,
    Readiness,
    ScanResult,
    WatermarkResult,
    multipart_body,
)
from guard.server_upload import Upload, UploadDir, receive_upload
from policies.policy import POLICY_DIR, Policy, builtin_policy_path
from watermark import coding

log = logging.getLogger("audioguard.server")

ENV_SERVE_CONFIG = "AUDIOGUARD_SERVE_CONFIG"
"""Set by ``audioguard serve``: the resolved config as JSON, for uvicorn's worker processes."""

STATIC = Path(__file__).resolve().parent / "static"
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MEDIA_TYPES = {
    "WAV": "audio/wav",
    "WAVEX": "audio/wav",
    "FLAC": "audio/flac",
    "OGG": "audio/ogg",
    "MP3": "audio/mpeg",
}
_STREAM_CHUNK = 1 << 16
# The review page runs only its own script and shows the dropped file from a blob: URL.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
T = TypeVar("T")


class Service:
    """Per-worker state: the Guard per policy, the pools, the limits and the metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.auth = Authenticator(config.api_keys, allow_anonymous=config.insecure_no_auth)
        self.limiter = RateLimiter(config.rate_limit_per_minute, config.rate_limit_burst)
        places = config.threads + config.queue_size
        # With several API keys, none may hold more than half the places (see AdmissionGate).
        share = max(1, places // 2) if len(config.api_keys) > 1 else None
        self.gate = AdmissionGate(places, on_change=self.metrics.queue_depth.set, per_holder=share)
        self.metrics.queue_capacity.set(self.gate.capacity)
        self.key_ids = sorted(config.keys)
        self.guards: dict[str, Guard] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.uploads: UploadDir | None = None

    # -- lifecycle --

    def start(self) -> None:
        """Load models, keys and every policy; runs before the worker accepts a request."""
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        limits = audio_io.Limits(
            max_bytes=self.config.max_upload_bytes, max_seconds=self.config.max_duration_s
        )
        guard = Guard(
            GuardConfig(
                policy=self._policy_path(self.config.policy),
                generator_policy=self._policy_path(self.config.generator_policy),
                keys=tuple(self.config.keys.values()),
                detector_head=self.config.detector_head,
                use_detector=self.config.use_detector,
                public_backends=self.config.public_backends,
                audit_log=self.config.audit_log,
                audit_signing_key=self.config.audit_signing_key,
                limits=limits,
            )
        )
        # One Guard per policy, sharing the models, backends and audit log of the first.
        guards = {self.config.policy: guard}
        for name in self.policy_names():
            if name not in guards:
                guards[name] = guard.with_policy(self._policy_path(name))
        self.uploads = UploadDir(self.config.tmp_dir)
        self.executor = ThreadPoolExecutor(self.config.threads, "audioguard-inference")
        self.guards = guards

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.uploads is not None:
            self.uploads.close()
        self.guards = {}

    @property
    def guard(self) -> Guard:
        """The Guard of the default policy; 503 until the models are loaded."""
        if not self.guards:
            raise ApiError(503, "not_ready", "the models are still loading", self._retry())
        return self.guards[self.config.policy]

    # -- policies --

    def policy_names(self) -> list[str]:
        """Shipped policies, then those in ``policies_dir`` (which win on a name clash)."""
        names = dict.fromkeys(sorted(p.stem for p in POLICY_DIR.glob("*.yaml")))
        if self.config.policies_dir is not None:
            for path in sorted(self.config.policies_dir.glob("*.y*ml")):
                if _POLICY_NAME.match(path.stem):
                    names[path.stem] = None
        names[self.config.policy] = None
        return list(names)

    def _policy_path(self, name: str) -> Path:
        if self.config.policies_dir is not None:
            for suffix in (".yaml", ".yml"):
                candidate = self.config.policies_dir / f"{name}{suffix}"
                if candidate.exists():
                    return candidate
        path = Path(name)
        if path.suffix in (".yaml", ".yml"):
            return path
        return builtin_policy_path(name)

    def guard_for(self, policy: str | None) -> Guard:
        """The Guard deciding with ``policy`` (the default when None); 503 while loading."""
        default = self.guard
        name = policy or self.config.policy
        if name == self.config.policy:
            return default
        if name not in self.guards:
            known = ", ".join(self.guards)
            raise ApiError(400, "unknown_policy", f"no policy {name!r} (known: {known})")
        return self.guards[name]

    # -- request plumbing --

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.config.retry_after_s)}

    def authorize(self, principal: Principal, scope: str) -> None:
        """Scope (403), then the key's rate limit (429)."""
        require_scope(principal, scope)
        wait = self.limiter.acquire(principal.id)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                f"API key {principal.id!r} is over its rate limit; retry later",
                {"Retry-After": retry_after(wait)},
            )

    def admit(self, principal: Principal, scope: str) -> None:
        """:meth:`authorize`, then a place in the queue (503); the caller must ``leave``."""
        self.authorize(principal, scope)
        if not self.gate.try_enter(principal.id):
            why = (
                "the service is at capacity"
                if self.gate.depth >= self.gate.capacity
                else f"API key {principal.id!r} holds its share of the service "
                f"({self.gate.per_holder} requests at once)"
            )
            raise ApiError(503, "busy", f"{why}; retry shortly", self._retry())

    def uploads_dir(self) -> AbstractContextManager[Path]:
        """A private temporary folder for one request, removed when it ends."""
        if self.uploads is None:
            raise ApiError(503, "not_ready", "the models are still loading", self._retry())
        return self.uploads.request_dir()

    async def upload(self, request: Request, folder: Path, fields: frozenset[str]) -> Upload:
        return await receive_upload(
            request,
            folder,
            fields=fields,
            max_file_bytes=self.config.max_upload_bytes,
            max_field_bytes=self.config.max_field_bytes,
            timeout_s=self.config.upload_timeout_s,
            min_bytes_per_s=self.config.upload_min_bytes_per_s,
        )

    async def run(self, fn: Callable[[], T]) -> T:
        """Run model work in the inference pool, off the event loop."""
        assert self.executor is not None
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def decode(self, upload: Upload) -> tuple[torch.Tensor, audio_io.AudioInfo]:
        """Decode with guard.audio, mapping its refusals onto HTTP statuses.

        A first look at the header with every bound relaxed tells "not audio we read" (415)
        from "audio, but refused" (413 over the duration limit, 422 otherwise).
        """
        relaxed = audio_io.Limits(
            max_bytes=upload.size,
            max_seconds=float("inf"),
            min_rate=1,
            max_rate=2**31,
            max_channels=2**31,
        )
        try:
            info = audio_io.probe(upload.path, relaxed)
        except audio_io.UnsupportedFormat as err:
            raise ApiError(415, "unsupported_media_type", _sentence(err, upload)) from None
        except audio_io.AudioError as err:  # a header we read, of a file with no audio in it
            raise ApiError(422, "undecodable", _sentence(err, upload)) from None
        if info.duration > self.config.max_duration_s:
            raise ApiError(
                413,
                "too_long",
                f"{upload.filename}: is {info.duration:.1f} s long, over the limit of "
                f"{self.config.max_duration_s:g} s",
            )
        problem = audio_io.too_many_samples(info, self.guard.config.limits)
        if problem:
            # A 44 KB FLAC of 29 s of silence at 192 kHz and 8 channels decodes to 180 MB,
            # and one under 1 MB within the duration limit to gigabytes.
            raise ApiError(413, "too_long", f"{upload.filename}: {problem}")
        try:
            return audio_io.load(upload.path, self.guard.config.limits)
        except audio_io.AudioError as err:
            raise ApiError(422, "undecodable", _sentence(err, upload)) from None
        except MemoryError:
            # The decoder sizes its buffer from the header, which a small file can inflate.
            raise ApiError(
                413, "too_large", f"{upload.filename}: the decoded audio does not fit in memory"
            ) from None


def _sentence(err: audio_io.AudioError, upload: Upload) -> str:
    """guard.audio's sentence with the client's file name instead of our temporary path."""
    return f"{upload.filename}: {str(err).removeprefix(f'{err.path}: ')}"


def _meta(upload: Upload) -> dict[str, Any]:
    text = upload.fields.get("meta")
    if text is None or not text.strip():
        return {}
    try:
        return parse_meta(text)
    except ValueError as err:
        raise ApiError(400, "bad_request", str(err)) from None


def _content_disposition(filename: str, suffix: str) -> str:
    stem = Path(filename).stem or "audio"
    name = f"{stem}.marked{suffix}"
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def _stream(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_STREAM_CHUNK):
            yield chunk


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <token>`")


def _principal(
    request: Request,
    # Declared so the OpenAPI schema documents the bearer scheme; the header itself is
    # parsed by the Authenticator, whose errors are clearer than FastAPI's.
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    service: Service = request.app.state.service
    return service.auth.authenticate(request.headers.get("authorization"))


Caller = Annotated[Principal, Security(_principal)]


def create_app(config: ServerConfig | str | os.PathLike[str] | None = None) -> FastAPI:
    """The service as an ASGI app. ``None`` reads ``$AUDIOGUARD_CONFIG`` and the API keys
    from the environment; a path is a config file. Raises ConfigError on a bad config."""
    if not isinstance(config, ServerConfig):
        config = load_config(config if config is not None else os.environ.get(ENV_CONFIG))
    config.validate()
    service = Service(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(service.start)
        log.info("audioguard ready: policies %s, keys %s", list(service.guards), service.key_ids)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(
        title="audioguard",
        summary="Screen uploads for synthetic voice and watermarks; mark generated audio.",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if config.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if config.docs else None,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    _install_error_handlers(app, service)

    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: ERROR_RESPONSES[503]},
        tags=["operations"],
    )
    def readyz() -> dict[str, Any]:
        """Models, keys and policies are loaded; the worker takes requests."""
        guard = service.guard
        return {
            "status": "ready",
            "model": guard.model_id,
            "policies": list(service.guards),
            "default_policy": config.policy,
            "keys": service.key_ids,
            "watermark_backends": [b.name for b in guard.public],
        }

    # Load balancers and uptime checkers probe with HEAD as often as with GET (405 marked the
    # worker down); the schema lists the GET only, so no operation id appears twice.
    for probe in (healthz, readyz):
        app.add_api_route(f"/{probe.__name__}", probe, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get(
        "/v1/policies",
        response_model=PolicyList,
        responses=_errors(401, 403, 429, 503),
        tags=["scan"],
    )
    async def policies(who: Caller) -> dict[str, Any]:
        """The policies a scan may name, with their rules."""
        service.authorize(who, "scan")
        service.guard_for(None)  # 503 while the models load
        return {
            "default": config.policy,
            "policies": [_describe(name, guard.policy) for name, guard in service.guards.items()],
        }

    upload_errors = _errors(400, 401, 403, 408, 413, 415, 422, 429, 503)

    async def answer(
        request: Request,
        who: Principal,
        fields: frozenset[str],
        work: Callable[[Upload], dict[str, Any]],
    ) -> dict[str, Any]:
        """Admit the request, stream its upload to a private folder, run ``work`` off the loop."""
        service.admit(who, "scan")
        try:
            with service.uploads_dir() as folder:
                upload = await service.upload(request, folder, fields)
                return await service.run(lambda: work(upload))
        finally:
            service.gate.leave(who.id)

    @app.post(
        "/v1/scan",
        response_model=ScanResult,
        responses=upload_errors,
        openapi_extra=multipart_body(meta=True, policies=service.policy_names()),
        tags=["scan"],
    )
    async def scan(request: Request, who: Caller) -> JSONResponse:
        """Detector, every watermark check and the policy's decision for one upload."""

        def work(upload: Upload) -> dict[str, Any]:
            guard = service.guard_for(upload.fields.get("policy") or None)
            meta = _meta(upload)
            audio, info = service.decode(upload)
            verdict = guard.screen(
                audio, info.sample_rate, meta, sha256=upload.sha256, path=upload.filename
            )
            return verdict.to_dict()

        result = await answer(request, who, frozenset({"meta", "policy"}), work)
        service.metrics.decisions.labels(result["decision"], result["policy"]["name"]).inc()
        return JSONResponse(result)

    @app.post(
        "/v1/detect",
        response_model=DetectResult,
        responses=upload_errors,
        openapi_extra=multipart_body(),
        tags=["scan"],
        # Without a detector the endpoint does not exist, and the schema says so.
        include_in_schema=config.use_detector,
    )
    async def detect(request: Request, who: Caller) -> JSONResponse:
        """The synthetic-voice detector alone: probability overall and per segment."""
        if not config.use_detector:
            raise ApiError(404, "detector_disabled", "this service runs without the detector")

        def work(upload: Upload) -> dict[str, Any]:
            audio, info = service.decode(upload)
            found = service.guard.detector.predict(audio, info.sample_rate)
            return {"path": upload.filename, **found.to_dict()}

        return JSONResponse(await answer(request, who, frozenset(), work))

    @app.post(
        "/v1/watermark/detect",
        response_model=WatermarkResult,
        responses=upload_errors,
        openapi_extra=multipart_body(),
        tags=["watermark"],
    )
    async def watermark_detect(request: Request, who: Caller) -> JSONResponse:
        """Every watermark check alone: the server's keyed marks, then the public ones."""

        def work(upload: Upload) -> dict[str, Any]:
            audio, info = service.decode(upload)
            found = service.guard.watermark_findings(audio, info.sample_rate)
            return {"path": upload.filename, "watermarks": found}

        return JSONResponse(await answer(request, who, frozenset(), work))

    @app.post(
        "/v1/watermark/embed",
        responses={
            200: {
                "description": "The marked audio in the upload's format; the verification "
                "is in the X-Audioguard-* headers.",
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in sorted(set(_MEDIA_TYPES.values()))
                },
                "headers": _EMBED_HEADERS,
            },
            **upload_errors,
        },
        openapi_extra=multipart_body(payload=True, key_ids=service.key_ids, meta=True),
        response_class=StreamingResponse,
        tags=["watermark"],
    )
    async def watermark_embed(request: Request, who: Caller) -> StreamingResponse:
        """Mark one upload with a key held by the server; key material never travels."""
        service.admit(who, "embed")
        try:
            with service.uploads_dir() as folder:
                upload = await service.upload(
                    request, folder, frozenset({"payload", "key_id", "meta"})
                )
                payload, key_id = _embed_arguments(service, upload)
                meta = _meta(upload)

                def work() -> tuple[Any, BinaryIO, audio_io.AudioInfo]:
                    audio, info = service.decode(upload)
                    # The audit record names the marked samples (the Guard hashes them).
                    result = service.guard.protect(
                        audio, info.sample_rate, payload, key_id, meta=meta
                    )
                    if not result.verified or result.decision.get("action") == "block":
                        reason = (result.detection or {}).get("error") or result.decision.get(
                            "message", "the policy refused the marked audio"
                        )
                        raise ApiError(
                            422, "not_marked", f"{upload.filename}: not marked ({reason})"
                        )
                    # Written back in the format the upload really has, and named for it,
                    # whatever it was called: a WAV named .mp3 came back as lossy MP3.
                    written = audio_io.save(
                        folder / f"marked{info.extension}",
                        result.audio,
                        info.sample_rate,
                        like=info,
                    )
                    # Open before the folder is removed; the data lives until the handle
                    # closes, so nothing is left behind even if the client goes away.
                    return result, Path(written.path).open("rb"), written

                result, handle, written = await service.run(work)
                size = os.fstat(handle.fileno()).st_size
        finally:
            service.gate.leave(who.id)
        detection = result.detection or {}
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": _content_disposition(upload.filename, Path(written.path).suffix),
            "X-Audioguard-Verified": "true" if result.verified else "false",
            "X-Audioguard-P-Value": f"{detection.get('p_value') or 1.0:.3g}",
            "X-Audioguard-Payload": detection.get("payload") or "",
            "X-Audioguard-Key-Id": key_id,
            "X-Audioguard-Decision": str(result.decision.get("action", "")),
            "X-Audioguard-Marked-Seconds": f"{result.marked_seconds:.2f}",
        }
        return StreamingResponse(
            _stream(handle), media_type=_MEDIA_TYPES[written.format], headers=headers
        )

    return app


_EMBED_HEADERS = {
    "X-Audioguard-Verified": {
        "description": "The mark was read back from the output.",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "X-Audioguard-P-Value": {
        "description": "p-value of the read-back (chance of this score in unmarked audio).",
        "schema": {"type": "string"},
    },
    "X-Audioguard-Payload": {"description": "The payload read back.", "schema": {"type": "string"}},
    "X-Audioguard-Key-Id": {"description": "The server key used.", "schema": {"type": "string"}},
    "X-Audioguard-Decision": {
        "description": "The generator policy's action on the marked output.",
        "schema": {"type": "string"},
    },
}


def _embed_arguments(service: Service, upload: Upload) -> tuple[str, str]:
    """The payload (validated) and the key the client named (or the only one held)."""
    payload = (upload.fields.get("payload") or "").strip().lower()
    try:
        coding.payload_to_bits(payload)
    except ValueError as err:
        raise ApiError(400, "bad_request", str(err)) from None
    key_id = (upload.fields.get("key_id") or "").strip()
    if not key_id:
        if len(service.key_ids) != 1:
            known = ", ".join(service.key_ids) or "none"
            raise ApiError(400, "bad_request", f"name a key_id (this server holds: {known})")
        key_id = service.key_ids[0]
    if key_id not in service.key_ids:
        known = ", ".join(service.key_ids) or "none"
        raise ApiError(400, "unknown_key", f"no key {key_id!r} on this server (holds: {known})")
    return payload, key_id


def _describe(name: str, policy: Policy) -> dict[str, Any]:
    return {
        "name": name,
        "policy_name": policy.name,
        "version": policy.version,
        "default": policy.default,
        "rules": [{"id": r.id, "action": r.action} for r in policy.rules],
    }


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: ERROR_RESPONSES[status] for status in statuses}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audioguard")
    except PackageNotFoundError:
        return "0"


def _install_error_handlers(app: FastAPI, service: Service) -> None:
    def count(code: str) -> None:
        service.metrics.rejected.labels(code).inc()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        count(exc.code)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        count("bad_request")
        problems = "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()
        )
        return error_response(400, "bad_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        count(code)
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (Starlette re-raises after this answer).
        count("internal")
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal error; the server log has the details")


def app_factory() -> FastAPI:
    """For ``uvicorn --factory``: the config ``audioguard serve`` resolved, or the file in
    ``$AUDIOGUARD_CONFIG`` plus ``$AUDIOGUARD_API_KEYS``."""
    resolved = os.environ.get(ENV_SERVE_CONFIG)
    if resolved:
        return create_app(ServerConfig.from_json(resolved))
    return create_app(None)
