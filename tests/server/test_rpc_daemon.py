"""`serve` with the model split over two real loopback RPC workers: same answers, a lost worker, a restart."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..rpc_workers import RpcWorkers
from .conftest import Daemon, start_daemon

QUESTION = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
            "max_tokens": 24}
LONG = {"messages": [{"role": "user", "content": "Tell me a long story about a dragon."}], "temperature": 0,
        "max_tokens": 256, "stream": True}
EXIT_WORKER_LOST = 75


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _health_until_gone(daemon: Daemon, timeout: float = 10.0) -> list[tuple[int, str]]:
    """(status, reason) of /health every 20 ms until the daemon stops answering."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = httpx.get(daemon.url + "/health", timeout=1.0)
        except httpx.HTTPError:
            break
        seen.append((response.status_code, str(response.json().get("reason"))))
        time.sleep(0.02)
    return seen


def _answer(daemon: Daemon) -> str:
    with daemon.client() as client:
        response = client.post("/v1/chat/completions", json=QUESTION)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_split_over_two_workers_answers_like_the_local_engine(daemon: Daemon, rpc_workers: RpcWorkers,
                                                              smollm2_path: Path, tmp_path: Path) -> None:
    workers = [rpc_workers.start(), rpc_workers.start()]
    split = start_daemon(tmp_path, smollm2_path, api_key=None, extra={"rpc": [w.endpoint for w in workers]})
    try:
        assert _answer(split) == _answer(daemon)  # greedy, token for token
        log = split.log()
        assert f"rpc {workers[0].endpoint} 10" in log and f"rpc {workers[1].endpoint} 10" in log, log
        layers = {k: v for k, v in split.metrics().items() if k.startswith("clawd_edge_model_layers")}
        assert layers == {"clawd_edge_model_layers{board=local}": 10.0,
                          **{f"clawd_edge_model_layers{{board={w.endpoint}}}": 10.0 for w in workers}}, layers
    finally:
        assert split.terminate() == 0, split.log()


def test_a_worker_lost_mid_stream_fails_requests_with_503_and_the_daemon_exits_to_be_restarted(
        rpc_workers: RpcWorkers, smollm2_path: Path, tmp_path: Path) -> None:
    workers = [rpc_workers.start(), rpc_workers.start()]
    endpoints = [w.endpoint for w in workers]
    split = start_daemon(_dir(tmp_path / "one"), smollm2_path, api_key=None, extra={"rpc": endpoints})
    events: list[str] = []
    queued: list[httpx.Response] = []
    streaming = threading.Event()

    def stream() -> None:
        with split.client() as client, client.stream("POST", "/v1/chat/completions", json=LONG) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    streaming.set()

    def non_streaming() -> None:
        with split.client() as client:
            queued.append(client.post("/v1/chat/completions", json={**LONG, "stream": False}))

    threads = [threading.Thread(target=stream), threading.Thread(target=non_streaming)]
    try:
        for thread in threads:
            thread.start()
        assert streaming.wait(60), split.log()
        killed_at = time.monotonic()
        rpc_workers.kill(workers[1])
        health = _health_until_gone(split)
        for thread in threads:
            thread.join(30)
        code = split.proc.wait(30)
        exited_after = time.monotonic() - killed_at
    finally:
        split.kill()
    assert code == EXIT_WORKER_LOST, split.log()
    assert exited_after < 5, exited_after
    # The stream ends with an error event naming the dead worker (no [DONE], no silent truncation) ...
    error = json.loads(events[-1])["error"]
    assert error["code"] == "rpc_worker_lost" and f"RPC worker {endpoints[1]} failed" in error["message"], events
    # /health said why (load balancers and keepalived take the board out) until the process was gone ...
    assert any(status == 503 and f"RPC worker {endpoints[1]} failed" in reason for status, reason in health), health
    # ... and the request still waiting for its answer gets a 503 it can retry.
    assert queued and queued[0].status_code == 503, queued
    assert queued[0].json()["error"]["code"] == "rpc_worker_lost" and queued[0].headers["retry-after"]

    # Restarted with the same configuration, it refuses at once, naming the dead worker (no abort, no hang).
    with pytest.raises(AssertionError, match=rf"RPC worker {endpoints[1]} is unreachable"):
        start_daemon(_dir(tmp_path / "two"), smollm2_path, api_key=None, extra={"rpc": endpoints})
    # Without it (--rpc overrides the configured list), the daemon serves on the surviving worker, and locally
    # with none.
    for rpc in (endpoints[0], ""):
        again = start_daemon(_dir(tmp_path / f"three{len(rpc)}"), smollm2_path, api_key=None,
                             extra={"rpc": endpoints}, args=("--rpc", rpc))
        try:
            assert _answer(again)
            assert ("layers local 15 (" in again.log()) == bool(rpc), again.log()  # 30 layers over 2 boards
        finally:
            assert again.terminate() == 0, again.log()


def test_a_worker_whose_mem_is_below_its_share_is_reported_at_load(rpc_workers: RpcWorkers, smollm2_path: Path,
                                                                  tmp_path: Path) -> None:
    """`rpc-worker --mem 64` cannot hold 15 layers of SmolLM2 with 4 slots x 2048 of KV: it drops the connection
    during the load, and the daemon says what to look at instead of aborting."""
    worker = rpc_workers.start(mem_mib=64)
    with pytest.raises(AssertionError, match=r"while loading its layers: is its --mem below the share") as failed:
        start_daemon(tmp_path, smollm2_path, api_key=None, extra={"rpc": [worker.endpoint], "parallel": 4,
                                                                  "max_sequence_length": 2048})
    assert f"exited with {EXIT_WORKER_LOST}" in str(failed.value)
