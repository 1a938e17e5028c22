"""llama.cpp RPC workers: their addresses, a probe that fails with a clear error, the layer split over boards."""
from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError, EngineError, MemoryPlanError

DEFAULT_PORT = 50052
# The protocol version of the vendored ggml-rpc (ggml-rpc.h): a worker must speak the same major version, and a
# newer minor than ours is refused by llama.cpp with an abort, so the probe refuses it first.
PROTO_MAJOR, PROTO_MINOR = 7, 0
_CMD_HELLO = 14  # RPC_CMD_HELLO, fixed by the protocol (static_assert in ggml-rpc.cpp)
_CMD_GET_DEVICE_MEMORY = 11  # RPC_CMD_GET_DEVICE_MEMORY in the enum of this protocol version
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE: our capabilities are all zero, so the worker keeps plain TCP
PROBE_TIMEOUT = 3.0
MIB = 1024**2


@dataclass(frozen=True)
class Worker:
    """One `ggml-rpc-server` (`clawd-edge rpc-worker`) reachable at host:port."""

    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_workers(values: Iterable[str], key: str = "rpc") -> tuple[Worker, ...]:
    """`host:port` strings (port optional, default 50052; IPv6 in brackets) -> workers; ConfigError naming `key`."""
    workers: list[Worker] = []
    for raw in values:
        text = raw.strip()
        host, sep, port_text = text.rpartition(":") if not text.endswith("]") else (text, "", "")
        if not sep or (host.startswith("[") != host.endswith("]")):
            host, port_text = text, str(DEFAULT_PORT)
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{raw!r} is not a worker address; expected host:port, e.g. 10.0.0.2:50052", key=key)
        worker = Worker(host, int(port_text))
        if worker in workers:
            raise ConfigError(f"{worker.endpoint} is listed twice", key=key)
        workers.append(worker)
    if len(workers) > 16:  # GGML_RPC_MAX_SERVERS
        raise ConfigError("at most 16 RPC workers", key=key)
    return tuple(workers)


def is_private(host: str) -> bool:
    """Loopback, private (RFC 1918 / ULA) or link-local: where an unauthenticated protocol may listen."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_loopback or (address.is_private and not address.is_unspecified) or address.is_link_local


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker told the probe: its protocol version and its (first) device's memory."""

    worker: Worker
    version: tuple[int, int, int]
    free_bytes: int
    total_bytes: int


def probe(worker: Worker, timeout: float = PROBE_TIMEOUT) -> WorkerInfo:
    """Ask the worker what llama.cpp will ask it: HELLO (the protocol version), then its device's free memory.

    llama.cpp aborts the whole process (GGML_ABORT) when a worker cannot be reached or answers wrongly, so every
    worker is asked here first and a dead or foreign one becomes an EngineError naming it.
    """
    try:
        with socket.create_connection((worker.host, worker.port), timeout=timeout) as sock:
            major, minor, patch = _call(sock, _CMD_HELLO, bytes(_CAPS_SIZE), 4 + _CAPS_SIZE, worker)[:3]
            if major != PROTO_MAJOR or minor > PROTO_MINOR:
                raise EngineError(f"RPC worker {worker.endpoint} speaks protocol {major}.{minor}.{patch}, this "
                                  f"llama.cpp {PROTO_MAJOR}.{PROTO_MINOR}: install the same clawd-edge build on "
                                  "both boards")
            free, total = struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", 0), 16, worker))
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise EngineError(f"RPC worker {worker.endpoint} is unreachable ({reason}); start `clawd-edge "
                          "rpc-worker` there or remove it from rpc") from None
    return WorkerInfo(worker, (major, minor, patch), free, total)


def reachable(worker: Worker, timeout: float = 0.3) -> bool:
    """Whether the worker still accepts connections (a live worker serving another client accepts and waits)."""
    try:
        socket.create_connection((worker.host, worker.port), timeout=timeout).close()
    except OSError:
        return False
    return True


def unreachable(workers: Sequence[Worker], within: float = 0.5) -> list[Worker]:
    """The workers that refuse connections, looked at for up to `within` seconds: a worker that just died may
    close our connection to it a moment before its listening socket (the kernel closes its files in order)."""
    deadline = time.monotonic() + within
    while True:
        dead = [w for w in workers if not reachable(w, timeout=0.1)]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def _call(sock: socket.socket, cmd: int, payload: bytes, answer_size: int, worker: Worker) -> bytes:
    """One request/response of the protocol: | cmd (1 byte) | size (8 bytes LE) | payload | -> | size | answer |."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    size = struct.unpack("<Q", _recv(sock, 8, worker))[0]
    if size != answer_size:
        raise EngineError(f"RPC worker {worker.endpoint} is not a ggml-rpc-server of this llama.cpp (command "
                          f"{cmd} answered {size} bytes, expected {answer_size})")
    return _recv(sock, size, worker)


def _recv(sock: socket.socket, n: int, worker: Worker) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise EngineError(f"RPC worker {worker.endpoint} closed the connection during the handshake")
        data += part
    return data


@dataclass(frozen=True)
class Board:
    """One board's share of the model: layers, and the bytes they need there (weights + KV)."""

    name: str  # "local", or the worker's endpoint
    layers: int
    weights_bytes: int
    kv_bytes: int
    free_bytes: int | None = None  # what the worker reported; None for this board (the memory planner's job)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes


@dataclass(frozen=True)
class Split:
    """Which layers run where: this board keeps the first `local.layers` (and the embeddings and output), the
    workers the rest, in order (llama.cpp offloads the last n_gpu_layers layers)."""

    local: Board
    workers: tuple[Board, ...]

    @property
    def offloaded_layers(self) -> int:
        return sum(b.layers for b in self.workers)

    @property
    def local_share(self) -> float:
        total = self.local.layers + self.offloaded_layers
        return self.local.layers / total if total else 1.0

    def layers(self) -> dict[str, int]:
        """Layers per board: "local" and each worker's endpoint."""
        return {b.name: b.layers for b in (self.local, *self.workers)}

    def describe(self) -> str:
        boards = (self.local, *self.workers)
        return "layers " + ", ".join(f"{b.name if b is self.local else 'rpc ' + b.name} {b.layers} "
                                     f"({b.total_bytes / MIB:.0f} MiB)" for b in boards)


def split_layers(n_layers: int, layer_weights: float, layer_kv: float, workers: Sequence[tuple[str, int]]) -> Split:
    """Layers split evenly over this board and the workers (a remainder stays here: it has the embeddings).

    `layer_weights`/`layer_kv` are one layer's weight bytes and KV bytes for the whole context; `workers` are
    (endpoint, free bytes reported) in device order. A worker whose share does not fit its free memory is a
    MemoryPlanError naming it.
    """
    boards = len(workers) + 1
    each = n_layers // boards
    local_layers = n_layers - each * len(workers)

    def board(name: str, layers: int, free: int | None) -> Board:
        return Board(name, layers, int(layers * layer_weights), int(layers * layer_kv), free)

    remote = tuple(board(endpoint, each, free) for endpoint, free in workers)
    for b in remote:
        if b.free_bytes is not None and b.total_bytes > b.free_bytes:
            raise MemoryPlanError(f"RPC worker {b.name} has {b.free_bytes / MIB:.0f} MiB free but its {b.layers} "
                                  f"layers need {b.total_bytes / MIB:.0f} MiB; add a worker or use a smaller model")
    return Split(board("local", local_layers, None), remote)
