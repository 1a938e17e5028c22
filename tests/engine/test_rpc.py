"""RPC workers without a daemon: addresses, the handshake probe (against real and wrong servers), the layer split."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.config import Settings
from edge_runtime.engine.planner import plan_for
from edge_runtime.engine.rpc import Worker, is_private, parse_workers, probe, reachable, split_layers
from edge_runtime.errors import ConfigError, EngineError, MemoryPlanError

from ..rpc_workers import RpcWorkers

MIB = 1024**2


def test_worker_addresses_parse_with_default_port_and_ipv6() -> None:
    assert parse_workers(["10.0.0.2:6000", "10.0.0.3", "[fd00::7]:7000", "[fd00::8]"]) == (
        Worker("10.0.0.2", 6000), Worker("10.0.0.3", 50052), Worker("fd00::7", 7000), Worker("fd00::8", 50052))
    assert Worker("fd00::7", 7000).endpoint == "[fd00::7]:7000"
    for bad in (["10.0.0.2:0"], ["10.0.0.2:port"], [":50052"], ["10.0.0.2:1", "10.0.0.2:1"]):
        with pytest.raises(ConfigError, match="rpc"):
            parse_workers(bad)


def test_only_loopback_private_and_link_local_addresses_count_as_trusted() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "10.1.2.3", "192.168.1.20", "172.16.0.5", "fd00::1",
                 "169.254.3.4"):
        assert is_private(host), host
    public = ("0.0.0.0", "::", "8.8.8.8", "example.org", "100.64.0.1")  # noqa: S104 - refused, that is the point
    for host in public:
        assert not is_private(host), host


def test_layers_split_evenly_and_a_worker_too_small_is_named() -> None:
    split = split_layers(30, 2 * MIB, 1 * MIB, [("a:1", 10**10), ("b:2", 10**10)])
    assert [b.layers for b in (split.local, *split.workers)] == [10, 10, 10]
    assert split.offloaded_layers == 20 and split.local_share == pytest.approx(1 / 3)
    assert split.workers[0].total_bytes == 30 * MIB
    uneven = split_layers(31, 1, 1, [("a:1", None), ("b:2", None)])  # type: ignore[list-item]
    assert [b.layers for b in (uneven.local, *uneven.workers)] == [11, 10, 10]  # the remainder stays here
    with pytest.raises(MemoryPlanError, match="RPC worker b:2 has 20 MiB free but its 10 layers need 30 MiB"):
        split_layers(30, 2 * MIB, 1 * MIB, [("a:1", 10**10), ("b:2", 20 * MIB)])


def test_probe_reads_a_real_workers_version_and_memory(rpc_workers: RpcWorkers) -> None:
    worker = rpc_workers.start()
    info = probe(worker)
    assert info.version[0] == 7 and 0 < info.free_bytes <= info.total_bytes
    assert reachable(worker)


@pytest.fixture()
def wrong_server() -> Iterator[Worker]:
    """A TCP server that answers the HELLO with something else (another protocol on the port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Worker("127.0.0.1", listener.getsockname()[1])
    listener.close()


def test_a_dead_or_foreign_worker_is_an_error_naming_it_never_an_abort(wrong_server: Worker) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = Worker("127.0.0.1", sock.getsockname()[1])  # bound, never listening: connection refused
    with pytest.raises(EngineError, match=rf"RPC worker 127.0.0.1:{dead.port} is unreachable \(Connection refused"):
        probe(dead)
    assert not reachable(dead)
    with pytest.raises(EngineError, match=rf"{wrong_server.endpoint} is not a ggml-rpc-server"):
        probe(wrong_server)


def test_the_plan_puts_only_this_boards_share_in_the_budget(rpc_workers: RpcWorkers, smollm2_path: Path) -> None:
    local = plan_for(Settings(parallel=2), smollm2_path)
    workers = [rpc_workers.start(), rpc_workers.start()]
    split = plan_for(Settings(parallel=2, rpc=tuple(w.endpoint for w in workers)), smollm2_path)
    assert split.split is not None and local.split is None
    assert [b.name for b in split.split.workers] == [w.endpoint for w in workers]
    assert split.weights_bytes < local.weights_bytes / 2 and split.kv_bytes < local.kv_bytes / 2
    assert f"rpc {workers[0].endpoint}" in split.describe()


def test_rpc_worker_refuses_an_address_anyone_could_reach() -> None:
    import subprocess
    import sys

    for host in ("0.0.0.0", "8.8.8.8"):  # noqa: S104 - refused, that is the point
        result = subprocess.run([sys.executable, "-m", "edge_runtime", "rpc-worker", "--host", host],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "no authentication" in result.stderr, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
