"""One GET of a board's /health with the standard library only: keepalived runs it every second."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..errors import ClawdError, UsageError

DEFAULT_TIMEOUT = 2.0
# A /health body is a few hundred bytes; a board answering megabytes is not one of ours.
MAX_BODY = 64 * 1024


class Unhealthy(ClawdError):
    """The board answered, and the answer is not "ok" (503 while loading or failed, or another status)."""

    exit_code = 1


class Unreachable(ClawdError):
    """No answer at all: connection refused, name unknown, timeout, or not HTTP."""

    exit_code = 3


@dataclass(frozen=True)
class HealthTarget:
    """Where /health is: scheme, host, port and path, parsed once and validated."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class Health:
    """A healthy board's report: the engine state and how full its slots are."""

    state: str
    model: str | None
    slots_total: int
    slots_busy: int
    queue_depth: int

    def summary(self) -> str:
        return (f"ok: {self.state}, model {self.model or '-'}, {self.slots_busy}/{self.slots_total} slots busy, "
                f"{self.queue_depth} queued")


def parse_target(url: str) -> HealthTarget:
    """`http://host:port` (the path defaults to /health) or a full /health URL; UsageError says what is wrong."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"{url}: only http:// and https:// URLs can be probed")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{url}: the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise UsageError(f"{url}: no host in the URL")
    path = parts.path if parts.path not in ("", "/") else "/health"
    if parts.query:
        path += f"?{parts.query}"
    return HealthTarget(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def _get(target: HealthTarget, timeout: float, api_key: str | None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    # /health needs no key on the daemon; the key is sent only when asked for, for a proxy in front that wants it.
    headers = {"Accept": "application/json", "Connection": "close", "User-Agent": "clawd-edge-health"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request("GET", target.path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(MAX_BODY)
    finally:
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is clawd-edge serve running?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) else 0


def probe(url: str, timeout: float = DEFAULT_TIMEOUT, api_key: str | None = None) -> Health:
    """The board's Health when /health answers 200 with status "ok"; Unhealthy or Unreachable (one line) if not."""
    target = parse_target(url)
    try:
        status, body = _get(target, timeout, api_key)
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{target.url}: {_describe(exc)}") from None
    data = _json(body)
    if status == 200 and data.get("status") == "ok":
        model = data.get("model")
        return Health(str(data.get("state", "?")), model if isinstance(model, str) else None,
                      _int(data, "slots_total"), _int(data, "slots_busy"), _int(data, "queue_depth"))
    if data.get("state") and data.get("status"):
        reason = data.get("reason") or "no reason given"
        raise Unhealthy(f"{target.url}: {status} {data['status']}: model {data['state']}: {reason}")
    text = body[:200].decode(errors="replace").strip().replace("\n", " ")
    raise Unhealthy(f"{target.url}: {status} {text or '(empty body)'}")
