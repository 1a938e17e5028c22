"""Slow, idle and too many clients (no API key needed for any of it) against a real daemon with tight limits."""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_runtime.server.connections import ACCEPT_ERROR, RateLimitedFilter

from .conftest import Daemon, start_daemon

READ_TIMEOUT = 3.0
MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def strict(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # prlimit: 200 descriptors, so the daemon must also shrink its cap to fit (the log says so).
    daemon = start_daemon(tmp_path_factory.mktemp("strict"), smollm2_path, launcher=("prlimit", "--nofile=200:200"),
                          extra={"server": {"read_timeout": READ_TIMEOUT, "keep_alive_timeout": 1.0,
                                            "max_connections": 400, "max_request_bytes": 65536}})
    yield daemon
    assert daemon.terminate() == 0, daemon.log()


def _connect(daemon: Daemon) -> socket.socket:
    host, port = daemon.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass  # a 503 or 408 first is fine; what matters is that the server lets go of the socket
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _healthy(daemon: Daemon) -> None:
    start = time.monotonic()
    response = httpx.get(daemon.url + "/health", timeout=5)
    assert response.status_code == 200, response.text
    assert time.monotonic() - start < 2, "the daemon was slow to answer /health"
    assert daemon.proc.poll() is None


def test_the_connection_cap_shrinks_to_fit_the_descriptor_limit(strict: Daemon) -> None:
    assert "does not fit the open-file limit 200; using 136" in strict.log()


def test_a_connection_that_never_finishes_its_headers_is_closed(strict: Daemon) -> None:
    idle, partial = _connect(strict), _connect(strict)
    partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for sock in (idle, partial):
        with sock:
            assert _closed_by_server(sock, READ_TIMEOUT + 3)


def test_a_trickled_header_is_closed_at_the_deadline_however_often_it_sends(strict: Daemon) -> None:
    with _connect(strict) as sock:
        deadline = time.monotonic() + READ_TIMEOUT + 3
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                closed = sock.recv(4096) == b""
        assert closed, "a client sending a header line every 0.2 s kept its connection"


def test_a_stalled_body_gets_408(strict: Daemon) -> None:
    with _connect(strict) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + (strict.api_key or "").encode() +
                     b"\r\nContent-Length: 100\r\n\r\n{\"messages\"")
        sock.settimeout(READ_TIMEOUT + 5)
        reply = b""
        while b"read_timeout" not in reply and (part := sock.recv(4096)):
            reply += part
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"server.read_timeout" in reply


def test_a_flood_of_half_open_connections_leaves_health_answering(strict: Daemon) -> None:
    # 1,100 of these once exhausted the descriptors: /health hung and the log grew by 330 MB in 40 s.
    flood: list[socket.socket] = []
    try:
        start = time.monotonic()
        for _ in range(300):
            sock = _connect(strict)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            flood.append(sock)
        assert time.monotonic() - start < READ_TIMEOUT / 2, "the flood was too slow to test the cap"
        # Over the cap, a new client is shed with a 503 straight away instead of waiting in the backlog.
        response = httpx.get(strict.url + "/health", timeout=5)
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        assert "server.max_connections" in response.json()["error"]["message"]
        time.sleep(READ_TIMEOUT + 1.5)  # the flood's headers never complete: all of it is closed by now
        _healthy(strict)
    finally:
        for sock in flood:
            sock.close()
    assert strict.log().count(ACCEPT_ERROR) <= 1


def test_accept_errors_are_logged_once_per_interval_with_a_count() -> None:
    now = [0.0]
    limiter = RateLimitedFilter(interval=10.0, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), None)

    assert limiter.filter(record(ACCEPT_ERROR + "\nsocket: <...>"))
    assert not any(limiter.filter(record(ACCEPT_ERROR)) for _ in range(500))
    assert limiter.filter(record("another asyncio error"))
    now[0] = 10.5
    again = record(ACCEPT_ERROR)
    assert limiter.filter(again)
    assert "(500 more since the last such line)" in again.getMessage()
