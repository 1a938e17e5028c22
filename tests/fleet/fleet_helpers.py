"""Helpers shared by the fleet tests: boards (real daemons) started together, and a real haproxy process."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.server.conftest import Daemon, free_port, start_daemon

# Small boards: one thread and two slots each, so three of them share this machine's two cores sanely.
BOARD_CONFIG: dict[str, Any] = {"threads": 1, "parallel": 2}
CLI = (sys.executable, "-m", "edge_runtime")


def start_boards(root: Path, model: Path, count: int, *, api_key: str | None,
                 launchers: tuple[tuple[str, ...], ...] | None = None,
                 args: tuple[tuple[str, ...], ...] | None = None) -> list[Daemon]:
    """`count` daemons started in parallel (each loads in 1-2 s); all of them or an exception, none left over."""

    def one(index: int) -> Daemon:
        workdir = root / f"board{index}"
        workdir.mkdir(parents=True, exist_ok=True)
        return start_daemon(workdir, model, api_key=api_key, extra=BOARD_CONFIG,
                            launcher=launchers[index] if launchers else (), args=args[index] if args else ())

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(one, index) for index in range(count)]
        wait(futures)
    daemons = [f.result() for f in futures if f.exception() is None]
    failure = next((f.exception() for f in futures if f.exception() is not None), None)
    if failure is not None:
        for daemon in daemons:
            daemon.kill()
        raise AssertionError(f"a board did not start: {failure!r}")
    return daemons


def port_of(daemon: Daemon) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


@dataclass
class Haproxy:
    """A foreground `haproxy -db` on a generated config, with its runtime socket."""

    proc: subprocess.Popen[bytes]
    url: str
    stats_socket: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, dict[str, str]]:
        """svname -> its `show stat` row (status, scur, smax, qmax...) for backend `boards`, BACKEND included."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r.get("pxname") == "boards"}

    def server_status(self) -> dict[str, str]:
        """svname -> UP / DOWN / MAINT (with transition details) of each board."""
        return {name: row["status"] for name, row in self.stats().items() if name != "BACKEND"}

    def wait_status(self, server: str, prefix: str, timeout: float) -> float:
        """Seconds until `server`'s status starts with `prefix` (UP, DOWN)."""
        started = time.monotonic()
        while True:
            status = self.server_status().get(server, "")
            if status.startswith(prefix):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{server} is {status!r}, not {prefix} after {timeout} s\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_haproxy(workdir: Path, boards: list[Daemon], *, api_key: str | None) -> tuple[Haproxy, str]:
    """Write the config with `clawd-edge fleet haproxy` (slots read from /health), check it, run it."""
    port = free_port()
    config = workdir / "haproxy.cfg"
    stats = workdir / "haproxy.sock"
    argv = [*CLI, "fleet", "haproxy", "--bind", f"127.0.0.1:{port}", "--stats-socket", str(stats),
            "-o", str(config)]
    for daemon in boards:
        argv += ["--board", daemon.url]
    if api_key:
        argv += ["--api-key", api_key]
    written = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert written.returncode == 0, written.stderr
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = workdir / "haproxy.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    balancer = Haproxy(proc, f"http://127.0.0.1:{port}", stats, log_path)
    deadline = time.monotonic() + 15
    while not stats.exists() or len(balancer.server_status()) < len(boards):
        if proc.poll() is not None or time.monotonic() > deadline:
            balancer.stop()
            raise AssertionError(f"haproxy did not start:\n{balancer.log()}")
        time.sleep(0.05)
    return balancer, config.read_text()
