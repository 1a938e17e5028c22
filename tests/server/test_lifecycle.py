"""Daemon lifecycle: sd_notify READY/WATCHDOG/STOPPING, W^X memory (MemoryDenyWriteExecute), SIGTERM mid-stream."""
from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, start_daemon

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
# What systemd's MemoryDenyWriteExecute=yes enforces, via the kernel's own prctl (Linux >= 6.3), inherited
# across exec: no writable+executable mapping, no mapping made executable later.
WX_LAUNCHER = (sys.executable, "-c",
               "import ctypes, os, sys\n"
               f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
               "    sys.exit('PR_SET_MDWE failed: errno %d' % ctypes.get_errno())\n"
               "os.execv(sys.argv[1], sys.argv[1:])\n")
SHUTDOWN_TIMEOUT = 2
LONG_STREAM = 2000  # tokens: ~10 s even at 200 tok/s, far beyond the shutdown bound


def _mdwe_supported() -> bool:
    # PR_GET_MDWE (66) fails with EINVAL on kernels without the feature.
    return int(ctypes.CDLL(None, use_errno=True).prctl(66, 0, 0, 0, 0)) >= 0


def _open_stream(url: str, body: dict[str, object]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=180)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_notify_watchdog_wx_and_sigterm_mid_stream(smollm2_path: Path, tmp_path: Path) -> None:
    wx = _mdwe_supported()
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, env={"WATCHDOG_USEC": "1000000"},
                          extra={"server": {"shutdown_timeout": SHUTDOWN_TIMEOUT, "max_tokens": LONG_STREAM},
                                 "max_sequence_length": 2048, "parallel": 2},
                          launcher=WX_LAUNCHER if wx else ())
    try:
        ready = daemon.wait_notification("READY=1", 5)
        assert f"STATUS=serving {daemon.model} on {daemon.url}" in ready
        daemon.wait_notification("WATCHDOG=1", 10)  # pinged every WATCHDOG_USEC/2 while the engine is alive
        with httpx.Client(base_url=daemon.url, timeout=180) as client:  # a real generation under W^X
            reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                               "max_tokens": 8})
            assert reply.status_code == 200, reply.text

        sock = _open_stream(daemon.url, {"prompt": "1, 2, 3, 4, 5,", "max_tokens": LONG_STREAM, "temperature": 0,
                                         "stream": True})
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_notification("STOPPING=1", 5)
        # Stop accepting: the listening socket closes at once while the stream is drained.
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(daemon.url.rsplit(":", 1)[1])), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.1)
        code = daemon.proc.wait(SHUTDOWN_TIMEOUT + 30)
        elapsed = time.monotonic() - sent
        sock.settimeout(5)
        while chunk := sock.recv(65536):  # the in-flight stream ends (finished or cut), never hangs
            received += chunk
        sock.close()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
        daemon.notify.close()
    assert code == 0, daemon.log()
    assert elapsed < SHUTDOWN_TIMEOUT + 20, elapsed
    # The stream could not finish within the bound: it was ended with a final error event just before it (not
    # cut by uvicorn's own cancellation), and the daemon still exited 0.
    assert b"data: [DONE]" not in received
    assert b"server is shutting down" in received and received.endswith(b"\r\n0\r\n\r\n"), received[-300:]
    log = daemon.log()
    assert "path=/v1/completions status=200" in log and "error=cancelled" in log, log
    assert "Traceback" not in log, log


def test_port_in_use_is_a_one_line_error(smollm2_path: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "edge_runtime", "serve", "--model", str(smollm2_path),
                                 "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: server.port: cannot listen on 127.0.0.1:")


def test_model_too_large_for_budget_is_refused_before_loading(smollm2_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("memory_budget: 64MiB\n")
    result = subprocess.run([sys.executable, "-m", "edge_runtime", "--config", str(config), "serve", "--model",
                             str(smollm2_path), "--port", str(free_port())], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert "does not fit in the memory budget" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_wx_launcher_really_forbids_writable_executable_memory() -> None:
    # The W^X check above is only meaningful if the launcher's restriction bites: mmap(RWX) must fail.
    probe = ("import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
             "except PermissionError:\n    print('denied')\nelse:\n    print('allowed')\n")
    result = subprocess.run([*WX_LAUNCHER, sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "denied", result.stdout + result.stderr


def test_health_is_503_while_unloaded_and_a_request_loads_on_demand(smollm2_path: Path, tmp_path: Path) -> None:
    # keep_alive 0: nothing is preloaded and the model unloads as soon as the engine is idle (Ollama-like).
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, extra={"keep_alive": 0})
    try:
        health = httpx.get(daemon.url + "/health", timeout=30)
        assert health.status_code == 503
        body = health.json()
        assert body["state"] == "unloaded" and body["reason"]
        assert set(body["error"]) == {"message", "type", "param", "code"}
        reply = httpx.post(daemon.url + "/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3},
                           timeout=180)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 3
    finally:
        assert daemon.terminate() == 0, daemon.log()


def test_full_queue_is_503_with_retry_after_and_the_daemon_recovers(smollm2_path: Path, tmp_path: Path) -> None:
    # One slot and no queue: a second request while the first streams must be turned away, not buffered.
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None,
                          extra={"parallel": 1, "server": {"max_queue": 0, "max_tokens": LONG_STREAM}})
    try:
        sock = _open_stream(daemon.url, {"prompt": "1, 2, 3, 4, 5,", "max_tokens": LONG_STREAM, "stream": True})
        received = b""
        while received.count(b"data: ") < 2:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        busy = httpx.post(daemon.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "1"
        error = busy.json()["error"]
        assert error["code"] == "server_busy" and error["type"] == "server_error"
        assert daemon.metrics()["clawd_edge_rejected_requests_total"] == 1
        sock.close()  # frees the slot
        deadline = time.monotonic() + 60
        while True:
            ok = httpx.post(daemon.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
            if ok.status_code == 200:
                break
            assert ok.status_code == 503 and time.monotonic() < deadline, ok.text
            time.sleep(0.2)
    finally:
        assert daemon.terminate() == 0, daemon.log()
