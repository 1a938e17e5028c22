"""sd_notify over real unix datagram sockets: filesystem path and abstract namespace, watchdog settings."""
from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from edge_runtime.sdnotify import Notifier


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_path_socket_receives_ready_status_and_stopping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _listener(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.enabled
        assert notifier.ready("serving m on http://127.0.0.1:1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving m on http://127.0.0.1:1"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"clawd-edge-test-{uuid.uuid4().hex}"
    with _listener(b"\0" + name.encode()) as sock:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("loading model")
        assert sock.recv(4096) == b"STATUS=loading model"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_unsupported_or_dead_socket_never_raises(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.enabled
    assert not gone.ready()  # supervisor gone: reported as not delivered, no exception


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
])
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], interval: float | None) -> None:
    assert Notifier(env).watchdog_interval == interval


def test_a_full_receiver_queue_never_blocks_the_sender(tmp_path: Path) -> None:
    path = str(tmp_path / "slow.sock")
    with _listener(path):  # nobody reads: the kernel queue fills after net.unix.max_dgram_qlen datagrams
        notifier = Notifier({"NOTIFY_SOCKET": path})
        start = time.monotonic()
        results = [notifier.watchdog() for _ in range(500)]
        assert time.monotonic() - start < 5
        assert results[0] and not results[-1]  # the overflow is dropped and reported, not waited for
