"""Daemon lifecycle: sd_notify READY/WATCHDOG/STOPPING, W^X memory (MemoryDenyWriteExecute), SIGTERM mid-stream."""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_runtime.config import Settings
from edge_runtime.engine import create_engine
from edge_runtime.engine.types import EngineState
from edge_runtime.server import create_app

from .conftest import Daemon, free_port, start_daemon

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
# What systemd's MemoryDenyWriteExecute=yes enforces, via the kernel's own prctl (Linux >= 6.3), inherited
# across exec: no writable+executable mapping, no mapping made executable later.
WX_LAUNCHER = (sys.executable, "-c",
               "import ctypes, os, sys\n"
               f"if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
               "    sys.exit('PR_SET_MDWE failed: errno %d' % ctypes.get_errno())\n"
               "os.execv(sys.argv[1], sys.argv[1:])\n")
SHUTDOWN_TIMEOUT = 4
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


def _chat_answers(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, timeout=180) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                           "max_tokens": 8})
    assert reply.status_code == 200, reply.text


def test_wx_daemon_loads_generates_and_exits_cleanly(smollm2_path: Path, tmp_path: Path) -> None:
    # Its own test, so a kernel without the feature reports a skip instead of a pass that checked nothing.
    if not _mdwe_supported():
        pytest.skip("kernel < 6.3 has no PR_SET_MDWE (what MemoryDenyWriteExecute=yes enforces): W^X not tested")
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, launcher=WX_LAUNCHER)
    try:
        ready = daemon.wait_notification("READY=1", 5)
        assert f"STATUS=serving {daemon.model} on {daemon.url}" in ready
        _chat_answers(daemon)  # the model loaded and a real generation ran under W^X
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


def test_notify_watchdog_and_sigterm_mid_stream(smollm2_path: Path, tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, env={"WATCHDOG_USEC": "1000000"},
                          extra={"server": {"shutdown_timeout": SHUTDOWN_TIMEOUT, "max_tokens": LONG_STREAM},
                                 "max_sequence_length": 2048, "parallel": 2})
    try:
        ready = daemon.wait_notification("READY=1", 5)
        assert f"STATUS=serving {daemon.model} on {daemon.url}" in ready
        daemon.wait_notification("WATCHDOG=1", 10)  # pinged every WATCHDOG_USEC/2 while the engine is alive
        _chat_answers(daemon)

        sock = _open_stream(daemon.url, {"prompt": "1, 2, 3, 4, 5,", "max_tokens": LONG_STREAM, "temperature": 0,
                                         "stream": True})
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        daemon.drain()  # the watchdog pings of a slow run must not crowd out STOPPING=1
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
        daemon.kill()
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


@pytest.mark.parametrize("config", [
    "modules:\n  voice: {enabled: true, langauge: en}\n",
    # The kiosk builds a voice module of its own from modules.voice when the daemon's is not enabled.
    "kiosk: {enabled: true}\nmodules:\n  voice: {enabled: false, langauge: en}\n",
], ids=["module", "kiosk"])
def test_a_module_option_typo_fails_at_once_before_the_port_and_the_model(smollm2_path: Path, tmp_path: Path,
                                                                          config: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config + f"models_dir: {tmp_path / 'models'}\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "edge_runtime", "--config", str(path), "serve", "--model",
                             str(smollm2_path), "--port", str(free_port())], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")})
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: modules.voice.langauge: unknown option; "
                                                             "allowed options are:"), result.stderr
    # Nothing was logged before it: the build profile line comes right after the port is bound, then the memory
    # plan and the load. 0.5 s measured (Python and imports); loading the model first made it 1.9 s.
    for later in ("build profile", "memory plan", "loaded in", "ready in"):
        assert later not in result.stderr, result.stderr
    assert elapsed < 5, elapsed


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


def _health(daemon: Daemon) -> dict[str, Any]:
    response = httpx.get(daemon.url + "/health", timeout=30)
    body: dict[str, Any] = response.json()
    # Idle-unloaded is healthy: the next request reloads the model in well under a second, so a load balancer
    # that polls /health must keep the board (a 503 here once made it drop a board after 300 s of quiet).
    assert response.status_code == 200, response.text
    assert body["status"] == "ok" and "error" not in body, body
    return body


def test_health_is_200_while_unloaded_and_a_request_loads_on_demand(smollm2_path: Path, tmp_path: Path) -> None:
    # keep_alive 0: nothing is preloaded and the model unloads as soon as the engine is idle (Ollama-like).
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, extra={"keep_alive": 0})
    try:
        body = _health(daemon)
        assert body["state"] == "unloaded" and body["reason"], body
        reply = httpx.post(daemon.url + "/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 3},
                           timeout=180)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 3
        deadline = time.monotonic() + 30
        while (state := _health(daemon)["state"]) != "unloaded":  # unloaded again once idle, and still 200
            assert state == "ready" and time.monotonic() < deadline, state
            time.sleep(0.1)
    finally:
        assert daemon.terminate() == 0, daemon.log()


def test_health_is_503_when_the_model_failed_to_load(smollm2_path: Path, tmp_path: Path) -> None:
    data = bytearray(smollm2_path.read_bytes())
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4 + 8  # value type (u32) and string length (u64) follow the key
    data[at:at + 5] = b"zzzzz"  # a well-formed GGUF of an architecture llama.cpp cannot load
    broken = tmp_path / "unknown-arch.gguf"
    broken.write_bytes(bytes(data))
    settings = Settings().replace(model_path=str(broken), threads=1, parallel=1, max_sequence_length=256,
                                  models_dir=str(tmp_path))
    engine = create_engine(settings, broken)  # keep_alive 300: the load starts now, in the background

    async def run() -> httpx.Response:
        try:
            deadline = time.monotonic() + 60
            while engine.status().state is not EngineState.FAILED:
                assert time.monotonic() < deadline, engine.status()
                await asyncio.sleep(0.05)
            transport = httpx.ASGITransport(app=create_app(settings, engine))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/health")
        finally:
            await engine.close()

    health = asyncio.run(run())
    assert health.status_code == 503, health.text
    body = health.json()
    assert body["status"] == "unavailable" and body["state"] == "failed" and "load failed" in body["reason"]
    assert body["error"]["code"] == "model_failed"


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
