"""Connection limits uvicorn lacks: a cap on open connections, a deadline for headers, quiet accept errors."""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import RETRY_AFTER_SECONDS, HttpError

log = logging.getLogger(__name__)
# Descriptors kept back from client sockets: the model file, log and notify sockets, a module's devices, imports.
RESERVED_FDS = 64
ACCEPT_ERROR = "socket.accept() out of system resource"


def _raw_response(error: HttpError) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for use before any request has been read."""
    head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode(), b"connection: close",
            *(k + b": " + v for k, v in error.raw_headers())]
    return b"\r\n".join(head) + b"\r\n\r\n" + error.encoded()


BUSY_RESPONSE = _raw_response(HttpError(
    503, "too many open connections (server.max_connections); retry later", type="server_error",
    code="too_many_connections", headers=(("Retry-After", str(RETRY_AFTER_SECONDS)),)))


def protocol_class(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with these limits (uvicorn builds protocols from a class, so the limits live on it)."""
    return type("GuardedH11Protocol", (_Guarded,), {"max_connections": max_connections,
                                                     "header_timeout": header_timeout})


class _Guarded(H11Protocol):
    """Closes a connection beyond the cap at once (with a 503), and one whose request headers have not all
    arrived within `header_timeout` seconds of the connection or of its previous response. uvicorn itself only
    times out idle keep-alive connections, so a client that opens a socket and trickles a header held it for ever.
    """

    max_connections = 256
    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Answer before reading the request: reading it could take as long as the slow clients being shed.
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers():
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            log.debug("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()


def fd_budget(max_connections: int) -> int:
    """Raise the soft descriptor limit to the hard one and return the connection cap that fits under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + RESERVED_FDS)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # keep the soft limit we have; the cap below adapts to it
    fits = max(1, soft - RESERVED_FDS)
    if max_connections > fits:
        log.warning("server.max_connections %d does not fit the open-file limit %d; using %d (raise LimitNOFILE)",
                    max_connections, soft, fits)
        return fits
    return max_connections


class RateLimitedFilter(logging.Filter):
    """Lets one record starting with `prefix` through per `interval` seconds and counts the ones it drops.

    asyncio logs every failed accept(); out of descriptors that was 785,510 lines (330 MB) in 40 s.
    """

    def __init__(self, prefix: str = ACCEPT_ERROR, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg, record.args = f"{message} ({self._dropped} more since the last such line)", ()
        self._last, self._dropped = now, 0
        return True


def uvicorn_options(read_timeout: float, keep_alive_timeout: float, max_connections: int) -> dict[str, Any]:
    """The uvicorn.Config arguments that carry these limits."""
    return {"http": protocol_class(fd_budget(max_connections), read_timeout),
            "timeout_keep_alive": keep_alive_timeout}
