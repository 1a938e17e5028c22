"""The written HAProxy and keepalived configs pass the real tools' checks; `clawd-edge health` answers right."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError, UsageError
from edge_runtime.fleet import haproxy, keepalived
from edge_runtime.fleet.preflight import check_script_runs

CLI = (sys.executable, "-m", "edge_runtime")
needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy missing (apt-get install haproxy)")
needs_keepalived = pytest.mark.skipif(shutil.which("keepalived") is None,
                                      reason="keepalived missing (apt-get install keepalived)")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


# --- HAProxy -------------------------------------------------------------------------------------------------

def _haproxy_config(tmp_path: Path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / "haproxy.cfg"
    result = run_cli("fleet", "haproxy", "--board", "http://127.0.0.1:18081", "--board", "10.0.0.7:8080",
                     "--slots", "3", "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out, out.read_text()


@needs_haproxy
def test_haproxy_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    out, text = _haproxy_config(tmp_path, "--api-key", "s3cret-key", "--stats-socket", str(tmp_path / "s.sock"))
    check = subprocess.run(["haproxy", "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "balance leastconn" in text
    assert "server 127.0.0.1_18081 127.0.0.1:18081 maxconn 3" in text
    assert "server 10.0.0.7_8080 10.0.0.7:8080 maxconn 3" in text
    assert "http-check send meth GET uri /health" in text
    assert "retry-on conn-failure empty-response junk-response 503" in text
    assert out.stat().st_mode & 0o777 == 0o600


@needs_haproxy
def test_haproxy_rejects_a_broken_config(tmp_path: Path) -> None:
    # The check above can fail: the same file with one keyword broken is refused by haproxy -c.
    out, text = _haproxy_config(tmp_path)
    out.write_text(text.replace("balance leastconn", "balance fewestconn"))
    check = subprocess.run(["haproxy", "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
    assert check.returncode != 0


def test_api_key_is_written_only_as_its_hash(tmp_path: Path) -> None:
    _, text = _haproxy_config(tmp_path, "--api-key", "s3cret-key")
    assert "s3cret-key" not in text
    assert hashlib.sha256(b"Bearer s3cret-key").hexdigest().upper() in text
    # Health checks and /health carry no key.
    check_lines = [line for line in text.splitlines() if "http-check" in line]
    assert check_lines and not any("uthorization" in line for line in check_lines)
    _, without = _haproxy_config(tmp_path)
    assert "key_ok" not in without


@pytest.mark.parametrize(("url", "message"), [
    ("https://10.0.0.1:8080", "plain http"),
    ("http://10.0.0.1:8080/v1", "without a path"),
    ("http://10.0.0.1:99999", "port"),
])
def test_bad_board_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        haproxy.parse_board(url, 2)


def test_duplicate_boards_and_bad_bind_are_refused() -> None:
    board = haproxy.parse_board("http://10.0.0.1:8080", 2)
    with pytest.raises(ConfigError, match="twice"):
        haproxy.HaproxySettings((board, board))
    with pytest.raises(ConfigError, match="ADDRESS:PORT"):
        haproxy.HaproxySettings((board,), bind="8080")


def test_slots_are_read_from_health_when_not_given(health_server: HealthServer, tmp_path: Path) -> None:
    health_server.reply(200, {"status": "ok", "state": "ready", "slots_total": 5, "slots_busy": 0,
                              "queue_depth": 0})
    result = run_cli("fleet", "haproxy", "--board", health_server.base)
    assert result.returncode == 0, result.stderr
    assert "maxconn 5" in result.stdout
    health_server.reply(503, {"status": "unavailable", "state": "loading", "reason": "loading model"})
    result = run_cli("fleet", "haproxy", "--board", health_server.base)
    assert result.returncode == 2
    assert "--slots" in result.stderr and result.stderr.count("\n") == 1


# --- keepalived ----------------------------------------------------------------------------------------------

def _interface() -> str:
    """A real non-loopback interface: keepalived's config test refuses lo and unknown names."""
    names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not names:
        pytest.skip("this machine has no network interface but lo; keepalived refuses lo for VRRP")
    return names[0]


def _keepalived_config(tmp_path: Path, role: str, *extra: str) -> tuple[Path, str]:
    out = tmp_path / f"keepalived-{role}.conf"
    # root: keepalived 2.2.7's --config-test kills itself (SIGTERM) after checking a script as another user,
    # so the check runs with the script user it can test; the netns test runs the default user for real.
    result = run_cli("fleet", "keepalived", "--role", role, "--vip", "192.0.2.200/24", "--interface", _interface(),
                     "--script-user", "root", "-o", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out, out.read_text()


@needs_keepalived
@pytest.mark.parametrize("role", ["primary", "standby"])
def test_keepalived_config_passes_config_test(tmp_path: Path, role: str) -> None:
    out, text = _keepalived_config(tmp_path, role, "--peer", "192.0.2.2")
    check = subprocess.run(["keepalived", "--config-test", "-f", str(out)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"priority {keepalived.ROLES[role].priority}" in text
    assert "health --quiet --url http://127.0.0.1:8080/health --timeout 0.8" in text
    assert "init_fail" in text and "enable_script_security" in text


@needs_keepalived
def test_keepalived_config_test_can_fail(tmp_path: Path) -> None:
    out, text = _keepalived_config(tmp_path, "primary")
    name = _interface()
    out.write_text(text.replace(f"dev {name}", "dev nosuchif0").replace(f"interface {name}", "interface nosuchif0"))
    check = subprocess.run(["keepalived", "--config-test", "-f", str(out)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode != 0


def test_keepalived_preempt_choices(tmp_path: Path) -> None:
    _, delayed = _keepalived_config(tmp_path, "primary", "--preempt-delay", "2.5")
    assert "preempt_delay 2.5" in delayed and "nopreempt" not in delayed
    _, never = _keepalived_config(tmp_path, "primary", "--no-preempt")
    assert "nopreempt" in never and "preempt_delay" not in never


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run the probe as another user to check it")
def test_script_user_that_cannot_run_the_probe_is_refused(tmp_path: Path) -> None:
    # keepalived 2.2.7 counts a script it cannot execute as healthy; the writer checks before it writes.
    script = tmp_path / "private" / "clawd-edge"
    script.parent.mkdir(mode=0o700)
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    with pytest.raises(UsageError, match="cannot run"):
        check_script_runs((str(script), "health"), "nobody")
    check_script_runs((str(script), "health"), "root")
    check_script_runs(("/bin/true", "health"), "nobody")
    with pytest.raises(UsageError, match="does not exist"):
        check_script_runs(("/bin/true",), "no-such-user-here")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("vip", "2001:db8::1", "only IPv4"),
    ("vip", "10.0.0.1/40", "prefix"),
    ("interface", "eth0; rm -rf /", "interface name"),
    ("role", "leader", "primary"),
    ("script_user", "Bad User", "user name"),
])
def test_keepalived_settings_are_validated(field: str, value: str, message: str) -> None:
    fields = {"role": "primary", "vip": "10.0.0.1", "interface": "eth0", "script_user": "nobody"}
    fields[field] = value
    with pytest.raises(ConfigError, match=message):
        keepalived.KeepalivedSettings(health_command=("/bin/true",), **fields)  # type: ignore[arg-type]


# --- clawd-edge health ---------------------------------------------------------------------------------------

class HealthServer:
    """A stdlib HTTP server whose /health answer the test sets (status, JSON body, delay)."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.delay = 0.0
        self.headers_seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.headers_seen.append(dict(self.headers))
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reply(self, status: int, body: dict[str, object] | bytes, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_health_ok_exits_zero(health_server: HealthServer) -> None:
    health_server.reply(200, {"status": "ok", "state": "unloaded", "model": "m", "slots_total": 2,
                              "slots_busy": 1, "queue_depth": 0})
    result = run_cli("health", "--url", health_server.base)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: unloaded, model m, 1/2 slots busy, 0 queued"
    assert "Authorization" not in health_server.headers_seen[-1]
    quiet = run_cli("health", "--url", health_server.base + "/health", "--quiet", "--api-key", "k")
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert health_server.headers_seen[-1]["Authorization"] == "Bearer k"


def test_health_503_gives_the_reason(health_server: HealthServer) -> None:
    health_server.reply(503, {"status": "unavailable", "state": "failed", "reason": "out of memory"})
    result = run_cli("health", "--url", health_server.base)
    assert result.returncode == 1
    assert result.stderr == f"error: {health_server.base}/health: 503 unavailable: model failed: out of memory\n"


def test_health_not_our_json_is_unhealthy(health_server: HealthServer) -> None:
    health_server.reply(200, b"<html>captive portal</html>")
    result = run_cli("health", "--url", health_server.base)
    assert result.returncode == 1
    assert "200 <html>captive portal</html>" in result.stderr and result.stderr.count("\n") == 1


def test_health_timeout_and_refused(health_server: HealthServer) -> None:
    health_server.reply(200, {"status": "ok", "state": "ready"}, delay=3.0)
    started = time.monotonic()
    result = run_cli("health", "--url", health_server.base, "--timeout", "0.3")
    assert result.returncode == 3
    assert result.stderr.endswith("/health: timed out\n")
    assert time.monotonic() - started < 2.5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        result = run_cli("health", "--url", f"127.0.0.1:{port}")
    assert result.returncode == 3
    assert "connection refused" in result.stderr and result.stderr.count("\n") == 1


def test_health_defaults_to_the_configured_daemon(health_server: HealthServer, tmp_path: Path) -> None:
    health_server.reply(200, {"status": "ok", "state": "ready", "slots_total": 4})
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  host: 0.0.0.0\n  port: {health_server.base.rsplit(':', 1)[1]}\n")
    result = run_cli("--config", str(config), "health")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ready")


def test_writing_to_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = run_cli("fleet", "haproxy", "--board", "10.0.0.1:8080", "--slots", "2",
                     "-o", str(tmp_path / "nope" / "haproxy.cfg"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write") and result.stderr.count("\n") == 1


def test_health_bad_url_is_a_usage_error() -> None:
    result = run_cli("health", "--url", "ftp://x/health")
    assert result.returncode == 2
    assert result.stderr == "error: ftp://x/health: only http:// and https:// URLs can be probed\n"


def test_health_imports_nothing_heavy() -> None:
    code = ("import sys; from edge_runtime.cli import main\n"
            "try:\n    main(['health', '--url', 'http://127.0.0.1:1', '--timeout', '0.2'])\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('fastapi', 'numpy', 'llama_cpp', 'starlette', 'httpx') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
