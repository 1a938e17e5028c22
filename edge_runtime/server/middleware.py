"""Pure-ASGI middlewares (streaming-safe): access log + request metrics, API-key auth, request size limit."""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .errors import HttpError, ollama_path
from .metrics import ServerMetrics

access_log = logging.getLogger("edge_runtime.server.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Any  # Starlette's ASGIApp; kept loose so this module imports without starlette
SCOPE_KEY = "clawd_request"
PUBLIC_PATHS = frozenset({"/health"})


@dataclass
class RequestRecord:
    """What a route learned about one request, for its log line and metrics (one object per request)."""

    start: float = 0.0
    model: str | None = None
    stream: bool | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    ttft: float | None = None
    finish_reason: str | None = None
    error: str | None = None


def record_of(scope: Scope) -> RequestRecord:
    """The request's record (created by AccessLog); a fresh throwaway one when the middleware is absent."""
    record = scope.get(SCOPE_KEY)
    return record if isinstance(record, RequestRecord) else RequestRecord(start=time.perf_counter())


async def send_error(send: Any, error: HttpError, scope: Scope | None = None) -> None:
    """Answer with `error`, in the Ollama API's shape on its routes (`scope` tells which)."""
    ollama = scope is not None and ollama_path(str(scope.get("path", "")))
    await send({"type": "http.response.start", "status": error.status, "headers": error.raw_headers(ollama)})
    await send({"type": "http.response.body", "body": error.encoded(ollama), "more_body": False})


def _fmt(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "='):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class AccessLog:
    """One key=value line per request (journald-friendly) and the HTTP counters/histograms."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        record = RequestRecord(start=start)
        scope[SCOPE_KEY] = record
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            latency = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(latency)
            self._log(scope, status, latency, record)

    @staticmethod
    def _log(scope: Scope, status: int, latency: float, record: RequestRecord) -> None:
        client = scope.get("client")
        fields: list[tuple[str, object]] = [
            ("method", scope["method"]), ("path", scope["path"]), ("status", status),
            ("latency_ms", f"{latency * 1000:.1f}"),
        ]
        optional: list[tuple[str, object]] = [
            ("model", record.model), ("stream", None if record.stream is None else str(record.stream).lower()),
            ("ttft_ms", None if record.ttft is None else f"{record.ttft * 1000:.1f}"),
            ("prompt_tokens", record.prompt_tokens), ("cached_tokens", record.cached_tokens),
            ("completion_tokens", record.completion_tokens), ("finish_reason", record.finish_reason),
            ("error", record.error), ("client", f"{client[0]}:{client[1]}" if client else None),
        ]
        fields += [(k, v) for k, v in optional if v is not None]
        access_log.info("request " + " ".join(f"{k}={_fmt(v)}" for k, v in fields))


class ApiKeyAuth:
    """Bearer API key on every route but the public ones; constant-time comparison. `allow` may let a request in
    without the header (the kiosk screen: a browser's EventSource cannot send one)."""

    def __init__(self, app: ASGIApp, api_key: str, allow: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()
        self._allow = allow

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or (self._allow is not None
                                                                         and self._allow(scope)):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "invalid API key"
        record_of(scope).error = "unauthorized"
        await send_error(send, HttpError(401, message, code="invalid_api_key",
                                         headers=(("WWW-Authenticate", "Bearer"),)), scope)


class BodyLimit:
    """Request size limits. JSON routes: the body is read up to `limit` bytes before the app sees it (larger, or
    a lying Content-Length -> 413). Upload routes (`upload_paths`, multipart): the body streams through to the
    app and is cut off with 413 once it passes `upload_limit`, so an upload is never buffered whole here.
    """

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None,
                 upload_paths: frozenset[str] = frozenset(), read_timeout: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit if upload_limit is not None else limit
        self.upload_paths = upload_paths
        self.read_timeout = read_timeout

    async def _next_body_part(self, receive: Any) -> Message | None:
        """The next message while the body is still arriving, or None if the client stalled longer than
        read_timeout (it would otherwise hold its connection, and the app's request, for ever)."""
        try:
            return dict(await asyncio.wait_for(receive(), self.read_timeout))
        except TimeoutError:
            return None

    def _stalled(self) -> str:
        return f"the request body stalled for over {self.read_timeout:g} s (server.read_timeout)"

    def _too_large(self, upload: bool) -> HttpError:
        return HttpError(413, too_large_message(upload, self.upload_limit if upload else self.limit),
                         code="request_too_large")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in self.upload_paths
        limit = self.upload_limit if upload else self.limit
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_error(send, HttpError(400, "malformed Content-Length header"), scope)
                return
            if size > limit:
                record_of(scope).error = "request_too_large"
                await send_error(send, self._too_large(upload), scope)
                return
        if upload:
            await self._stream(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self._next_body_part(receive)
            if message is None:
                record_of(scope).error = "request_timeout"
                await send_error(send, HttpError(408, self._stalled(), code="request_timeout"), scope)
                return
            if message["type"] != "http.request":
                return  # client went away before sending its body; nothing to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                record_of(scope).error = "request_too_large"
                await send_error(send, self._too_large(False), scope)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # Afterwards the real channel, so disconnects still reach StreamingResponse.
            return dict(await receive())

        await self.app(scope, replay, send)

    async def _stream(self, scope: Scope, receive: Any, send: Any) -> None:
        from starlette.exceptions import HTTPException

        total = 0
        body_done = False

        async def counted() -> Message:
            nonlocal total, body_done
            if body_done:
                return dict(await receive())  # e.g. a disconnect watch during the response: no deadline
            message = await self._next_body_part(receive)
            if message is None:
                raise HTTPException(408, self._stalled())
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.upload_limit:
                    # Raised inside the app's body parser: FastAPI re-raises HTTPException, the app's handler
                    # renders it as the OpenAI-style 413, and the multipart parser drops what it spooled.
                    raise HTTPException(413, too_large_message(True, self.upload_limit))
            return message

        await self.app(scope, counted, send)


def too_large_message(upload: bool, limit: int) -> str:
    if upload:
        return (f"request body is larger than this server's upload limit of {limit} bytes "
                "(server.max_upload_bytes)")
    return f"request body is larger than this server's limit of {limit} bytes (server.max_request_bytes)"
