"""Real `clawd-edge rpc-worker` processes on loopback for the RPC tests (the engine's and the daemon's)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.engine.rpc import Worker, reachable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RpcWorkers:
    """Starts workers on demand; stop_all() in the fixture's teardown."""

    log_dir: Path
    procs: dict[Worker, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, port: int | None = None, *, mem_mib: int | None = None) -> Worker:
        worker = Worker("127.0.0.1", port or _free_port())
        log = (self.log_dir / f"worker-{worker.port}.log").open("wb")
        memory = ("--mem", str(mem_mib)) if mem_mib is not None else ()
        self.procs[worker] = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "rpc-worker", "--port", str(worker.port), "--threads", "1",
             *memory], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not reachable(worker):
            if self.procs[worker].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"rpc-worker on {worker.endpoint} did not start: "
                                     + (self.log_dir / f"worker-{worker.port}.log").read_text())
            time.sleep(0.05)
        return worker

    def kill(self, worker: Worker) -> None:
        proc = self.procs.pop(worker)
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        for worker in list(self.procs):
            self.kill(worker)
