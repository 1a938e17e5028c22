"""The HTTP edge of the error hierarchy: every failure becomes an OpenAI-style JSON error body."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import ClawdError, EngineBusy, InvalidRequest, RegistryError, ToolCallError, WorkerLost

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
WORKER_LOST_RETRY_AFTER = 10
OLLAMA_PREFIX = "/api/"


def ollama_path(path: str) -> bool:
    """Routes of the Ollama API, whose errors are Ollama's `{"error": "message"}`."""
    return path.startswith(OLLAMA_PREFIX)


@dataclass(frozen=True)
class HttpError:
    """One error response: status, OpenAI body fields and extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, ollama: bool = False) -> dict[str, Any]:
        """OpenAI's error object, or with `ollama` Ollama's (the message alone: its clients read `error` as text)."""
        if ollama:
            return {"error": self.message}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def encoded(self, ollama: bool = False) -> bytes:
        return json.dumps(self.body(ollama)).encode("utf-8")

    def raw_headers(self, ollama: bool = False) -> list[tuple[bytes, bytes]]:
        body_len = str(len(self.encoded(ollama))).encode()
        return [(b"content-type", b"application/json"), (b"content-length", body_len),
                *((k.lower().encode(), v.encode()) for k, v in self.headers)]


class ApiError(Exception):
    """Raised inside route code for HTTP-only conditions (auth, limits); carries its HttpError."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.message)
        self.error = error


def from_clawd(exc: ClawdError) -> HttpError:
    """Map the project's error classes to statuses; the message is the user-facing one, never a traceback."""
    if isinstance(exc, InvalidRequest):
        return HttpError(400, str(exc), param=exc.param, code="invalid_value" if exc.param else None)
    if isinstance(exc, ToolCallError):
        # 422, not 5xx: OpenAI clients retry 5xx, and a seeded or greedy request would write the same call again.
        return HttpError(422, str(exc), type="server_error", code="invalid_tool_call")
    if isinstance(exc, RegistryError):
        return HttpError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, EngineBusy):
        return HttpError(503, str(exc) or "server busy: every slot and the queue are full; retry later",
                         type="server_error", code="server_busy",
                         headers=(("Retry-After", str(RETRY_AFTER_SECONDS)),))
    if isinstance(exc, WorkerLost):
        # The daemon is exiting to be restarted by systemd (RestartSec=5): a client may retry after that.
        return HttpError(503, str(exc), type="server_error", code="rpc_worker_lost",
                         headers=(("Retry-After", str(WORKER_LOST_RETRY_AFTER)),))
    return HttpError(500, str(exc) or type(exc).__name__, type="server_error", code=type(exc).__name__)


def from_status(status: int, detail: str) -> HttpError:
    code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return HttpError(status, detail, type=kind, code=code.get(status))


def _param(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def from_validation(errors: Sequence[Any], content_type: str | None = None) -> HttpError:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending field."""
    if not errors:
        return HttpError(400, "invalid request body")
    first = errors[0]
    if tuple(first.get("loc", ())) == ("body",) and "json" not in (content_type or "").lower():
        # Bodies are only parsed when declared JSON (FastAPI's strict_content_type, kept on purpose): a web page
        # can POST form, text/plain or untyped bodies cross-origin without a CORS preflight, JSON it cannot.
        # `curl -d` sends form encoding unless told otherwise, hence the hint.
        got = f"got Content-Type: {content_type}" if content_type else "no Content-Type header"
        return HttpError(400, f"request body must be JSON ({got}; send Content-Type: application/json)",
                         code="invalid_content_type")
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        where = ctx.get("error", "")
        return HttpError(400, f"request body is not valid JSON ({where})" if where
                         else "request body is not valid JSON", code="invalid_json")
    param = _param(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "field required"
    text = f"{param}: {message}" if param else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return HttpError(400, text, param=param, code="invalid_value" if param else None)


def install_handlers(app: FastAPI) -> None:
    """Register handlers so no framework default (422 `detail`, HTML 500) ever reaches a client."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    from .middleware import record_of  # middleware imports HttpError from here

    def respond(request: Request, error: HttpError) -> JSONResponse:
        record_of(request.scope).error = error.code or error.type
        return JSONResponse(error.body(ollama_path(request.url.path)), status_code=error.status,
                            headers=dict(error.headers))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return respond(request, from_validation(exc.errors(), request.headers.get("content-type")))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return respond(request, from_status(exc.status_code, detail))

    async def on_api(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return respond(request, exc.error)

    async def on_clawd(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ClawdError)
        error = from_clawd(exc)
        if error.status >= 500 and error.status != 503:
            log.error("request %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return respond(request, error)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug: log it with its traceback for the operator, tell the client nothing internal.
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return respond(request, HttpError(500, "internal server error", type="server_error",
                                          code="internal_error"))

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(ClawdError, on_clawd)
    app.add_exception_handler(Exception, on_unexpected)
