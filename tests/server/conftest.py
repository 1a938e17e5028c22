"""Fixtures that run the real daemon (`clawd-edge serve`, real SmolLM2) as a subprocess on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

API_KEY = "test-key-123"
SERVER_MAX_TOKENS = 256
SLOT_CONTEXT = 512
START_TIMEOUT = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """A running `clawd-edge serve` and the sd_notify socket it reports to."""

    proc: subprocess.Popen[bytes]
    url: str
    model: str
    notify: socket.socket
    log_path: Path
    api_key: str | None
    notifications: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 180.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_notification(self, prefix: str, timeout: float) -> str:
        """The first sd_notify datagram line starting with `prefix` (READY=1, STOPPING=1...)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.notifications:
                for line in message.splitlines():
                    if line.startswith(prefix):
                        return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {prefix} from the daemon in {timeout} s; got {self.notifications}\n"
                                     + self.log())
            if self.proc.poll() is not None and prefix == "READY=1":
                raise AssertionError(f"daemon exited with {self.proc.returncode} before READY:\n{self.log()}")
            self.notify.settimeout(min(remaining, 0.5))
            try:
                self.notifications.append(self.notify.recv(4096).decode())
            except TimeoutError:
                continue

    def drain(self) -> None:
        """Read every datagram queued on the notify socket now. It holds only net.unix.max_dgram_qlen (often 10)
        of them: unread watchdog pings (two a second) would make the daemon drop the next state change."""
        self.notify.setblocking(False)
        try:
            while True:
                self.notifications.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.notify.setblocking(True)

    def metrics(self) -> dict[str, float]:
        """Samples by name (labels appended as {k=v,...}), parsed with prometheus-client's own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        with self.client() as client:
            text = client.get("/metrics").text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return samples

    def kill(self) -> None:
        """Stop it at once, for cleanup after a test that has already checked how the daemon ended."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM for {timeout} s:\n{self.log()}") from None
        finally:
            self.notify.close()


def start_daemon(workdir: Path, model: Path, *, api_key: str | None = API_KEY, extra: dict[str, Any] | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 launcher: tuple[str, ...] = ()) -> Daemon:
    """Start `python -m edge_runtime serve` (after `launcher`, e.g. a W^X wrapper) and wait for READY=1."""
    server: dict[str, Any] = {"max_tokens": SERVER_MAX_TOKENS, "max_request_bytes": 65536, "shutdown_timeout": 5}
    if api_key:
        server["api_key"] = api_key
    config: dict[str, Any] = {"threads": 2, "parallel": 4, "max_sequence_length": SLOT_CONTEXT, "server": server,
                              "models_dir": str(workdir / "models")}
    config.update(extra or {})
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # A short path: unix socket addresses are limited to 108 bytes and pytest's tmp paths can be long.
    notify_path = Path(tempfile.mkdtemp(prefix="clawd-sd-", dir="/tmp")) / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    port = free_port()
    full_env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "XDG_DATA_HOME": str(workdir / "data"),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("CLAWD_EDGE_API_KEY", None)
    log_path = workdir / "daemon.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*launcher, sys.executable, "-m", "edge_runtime", "--config", str(config_path), "serve",
             "--model", str(model), "--port", str(port), *args],
            stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    daemon = Daemon(proc, f"http://127.0.0.1:{port}", model.stem, notify, log_path, api_key)
    try:
        daemon.wait_notification("READY=1", START_TIMEOUT)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        raise
    return daemon


@pytest.fixture(scope="session")
def daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the HTTP tests (4 slots x 512 ctx, API key on); it must exit 0 on SIGTERM."""
    running = start_daemon(tmp_path_factory.mktemp("daemon"), smollm2_path)
    yield running
    code = running.terminate()
    assert code == 0, running.log()
