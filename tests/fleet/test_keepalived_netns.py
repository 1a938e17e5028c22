"""Two boards in network namespaces run keepalived on generated configs: killing the primary's daemon moves the
virtual IP to the standby; the primary's return takes it back (preempt)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server.conftest import Daemon, free_port, start_daemon

from .fleet_helpers import BOARD_CONFIG, CLI, start_boards
from .netns import SUBNET, Lan, can_create_namespaces

VIP = f"{SUBNET}.100"
# The daemons answer on the board's own address and on the VIP once it holds it; the namespaces are private.
ANY = "0.0.0.0"  # noqa: S104
FAILOVER_GOAL = 3.0  # seconds from SIGKILL of the primary's daemon to the address on the standby
CYCLES = int(os.environ.get("CLAWD_FLEET_CYCLES", "2"))

_why_not = None if shutil.which("keepalived") else "keepalived missing (apt-get install keepalived)"
_why_not = _why_not or (None if os.geteuid() == 0 else "network namespaces and VRRP need root")
_why_not = _why_not or can_create_namespaces()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]

# Runs in the LAN namespace: GET the VIP's /health every 50 ms, print "<monotonic> <status or error>".
PROBER = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
while True:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=0.3)
        conn.request("GET", "/health")
        status = str(conn.getresponse().status)
        conn.close()
    except OSError as exc:
        status = type(exc).__name__
    print(f"{time.monotonic():.3f} {status}", flush=True)
    time.sleep(0.05)
"""

# Runs in the LAN namespace: one real chat completion through the VIP; prints the status.
CHAT = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=30)
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8})
conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
print(conn.getresponse().status)
"""


@dataclass
class Prober:
    """The VIP's /health as the LAN sees it, sampled every 50 ms."""

    proc: subprocess.Popen[str]
    samples: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, status = line.split(maxsplit=1)
            self.samples.append((float(stamp), status.strip()))

    def first_ok_after_failure(self, since: float) -> float | None:
        """When the VIP answered 200 again after the first failed probe after `since`."""
        failed = False
        for stamp, status in list(self.samples):
            if stamp < since:
                continue
            if status != "200":
                failed = True
            elif failed:
                return stamp
        return None


@dataclass
class Pair:
    lan: Lan
    port: int
    daemons: list[Daemon]
    keepalived: list[subprocess.Popen[bytes]]
    workdir: Path
    model: Path

    def vip_on(self) -> list[int]:
        return [i for i, board in enumerate(self.lan.boards) if self.lan.has_address(board, VIP)]

    def wait_vip(self, index: int, timeout: float) -> float:
        started = time.monotonic()
        while self.vip_on() != [index]:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"VIP on {self.vip_on()}, not on board {index} after {timeout} s\n"
                                     + self.logs())
            time.sleep(0.02)
        return time.monotonic()

    def restart(self, index: int) -> Daemon:
        self.daemons[index] = start_daemon(self.workdir / f"board{index}", self.model, api_key=None,
                                           extra=BOARD_CONFIG, launcher=("ip", "netns", "exec", self.lan.boards[index]),
                                           args=("--host", ANY, "--port", str(self.port)))
        return self.daemons[index]

    def in_lan(self, script: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.lan.lan, sys.executable, "-c", script, *args]

    def logs(self) -> str:
        return "\n".join((self.workdir / f"keepalived-{i}.log").read_text(errors="replace")[-3000:]
                         for i in range(len(self.keepalived)))


def _write_config(workdir: Path, role: str, port: int) -> Path:
    out = workdir / f"keepalived-{role}.conf"
    # Root runs the probe here: this venv's Python lives under /root (mode 0700), which the default script user
    # (nobody) cannot read, and `fleet keepalived` refuses a user that cannot run the probe.
    result = subprocess.run([*CLI, "fleet", "keepalived", "--role", role, "--vip", f"{VIP}/24", "--interface", "eth0",
                             "--health-url", f"http://127.0.0.1:{port}/health", "--script-user", "root",
                             "-o", str(out)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def pair(smollm2_path: Path, tmp_path: Path) -> Iterator[Pair]:
    lan = Lan(f"clawd{os.getpid() % 100000}").create(2)
    daemons: list[Daemon] = []
    keepalived: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        launchers = tuple(("ip", "netns", "exec", board) for board in lan.boards)
        args = (("--host", ANY, "--port", str(port)),) * 2
        daemons = start_boards(tmp_path, smollm2_path, 2, api_key=None, launchers=launchers, args=args)
        for index, (board, role) in enumerate(zip(lan.boards, ("primary", "standby"), strict=True)):
            config = _write_config(tmp_path, role, port)
            with (tmp_path / f"keepalived-{index}.log").open("wb") as log:
                keepalived.append(subprocess.Popen(
                    ["ip", "netns", "exec", board, "keepalived", "--dont-fork", "--log-console", "--log-detail",
                     "--vrrp", "--use-file", str(config), "--pid", str(tmp_path / f"ka-{index}.pid"),
                     "--vrrp_pid", str(tmp_path / f"ka-vrrp-{index}.pid")],
                    stdout=log, stderr=subprocess.STDOUT))
        yield Pair(lan, port, daemons, keepalived, tmp_path, smollm2_path)
    finally:
        for proc in keepalived:
            proc.terminate()
        for proc in keepalived:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for daemon in daemons:
            daemon.kill()
        lan.destroy()


def test_vip_follows_the_healthy_daemon(pair: Pair) -> None:
    pair.wait_vip(0, 30)  # the primary wins the first election
    prober = Prober(subprocess.Popen(pair.in_lan(PROBER, VIP, str(pair.port)), stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True))
    runs: list[dict[str, float]] = []
    try:
        time.sleep(0.5)
        assert prober.samples and prober.samples[-1][1] == "200", prober.samples[-5:]
        for _ in range(CYCLES):
            killed_at = time.monotonic()
            pair.daemons[0].kill()  # SIGKILL the primary's daemon; keepalived itself keeps running
            moved_at = pair.wait_vip(1, 15)
            time.sleep(0.3)
            served_at = prober.first_ok_after_failure(killed_at)
            chat = subprocess.run(pair.in_lan(CHAT, VIP, str(pair.port)), capture_output=True, text=True,
                                  timeout=60)
            assert chat.stdout.strip() == "200", chat.stdout + chat.stderr
            restarted_at = time.monotonic()
            pair.restart(0)
            ready_at = time.monotonic()
            back_at = pair.wait_vip(0, 20)
            runs.append({"failover_s": round(moved_at - killed_at, 2),
                         "vip_serving_again_s": round((served_at or moved_at) - killed_at, 2),
                         "restart_to_ready_s": round(ready_at - restarted_at, 2),
                         "preempt_after_ready_s": round(back_at - ready_at, 2)})
            time.sleep(0.5)
    finally:
        prober.proc.kill()
        prober.proc.wait()
    report = json.dumps({"runs": runs})
    print(f"\nFLEET_KEEPALIVED {report}")
    if path := os.environ.get("CLAWD_FLEET_REPORT"):
        with open(path, "a") as handle:
            handle.write(report + "\n")
    for run in runs:
        assert run["failover_s"] <= FAILOVER_GOAL, (runs, pair.logs())
        assert run["vip_serving_again_s"] <= FAILOVER_GOAL + 1, runs
    # The probe answered 200 through the VIP at the end, from the primary again.
    assert prober.samples[-1][1] == "200", prober.samples[-5:]
    assert all(proc.poll() is None for proc in pair.keepalived), pair.logs()
