"""/v1/embeddings on the real daemon with the real openai client: shapes, encodings, limits, a configured
embedding model, memory refusals, disconnects, and chat completions alongside."""
from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from edge_runtime.config import Settings
from edge_runtime.engine.planner import plan_for
from edge_runtime.gguf_file import inspect

from .conftest import API_KEY, SLOT_CONTEXT, Daemon, start_daemon

TEXTS = ["Turn off the lights in the kitchen.", "Switch the kitchen lights off.", "What's tomorrow's forecast?"]
LONG = "The dishwasher is running and the kitchen light is still on. " * 30  # about 400 tokens


def _openai(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=daemon.api_key or "unused", max_retries=0,
                         timeout=180)


def _vectors(response: Any) -> np.ndarray:
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(scope="module")
def gemma_daemon(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path, gemma3_path: Path) -> Iterator[Daemon]:
    """SmolLM2 for chat, the Gemma-3 GGUF as the configured embedding_model."""
    running = start_daemon(tmp_path_factory.mktemp("gemma-embeddings"), smollm2_path,
                           extra={"embedding_model": str(gemma3_path), "embedding_ctx": 256, "parallel": 2})
    yield running
    assert running.terminate() == 0, running.log()


def test_three_inputs_give_three_unit_vectors_of_the_models_width(daemon: Daemon, smollm2_path: Path) -> None:
    reply = _openai(daemon).embeddings.create(model="text-embedding-3-small", input=TEXTS, encoding_format="float")
    vectors = _vectors(reply)
    assert reply.object == "list" and reply.model == daemon.model
    assert [d.index for d in reply.data] == [0, 1, 2] and all(d.object == "embedding" for d in reply.data)
    assert vectors.shape == (3, inspect(smollm2_path).n_embd)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 15
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2]  # the paraphrase is closer than the other question


def test_base64_decodes_to_the_same_floats(daemon: Daemon) -> None:
    client = _openai(daemon)
    floats = _vectors(client.embeddings.create(model="x", input=TEXTS, encoding_format="float"))
    # The openai client asks for base64 by default and decodes it itself.
    assert np.array_equal(_vectors(client.embeddings.create(model="x", input=TEXTS)), floats)
    with daemon.client() as http:
        raw = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert np.array_equal(decoded, floats)


def test_a_single_string_and_token_ids_are_accepted(daemon: Daemon) -> None:
    client = _openai(daemon)
    one = client.embeddings.create(model="x", input="Lock the front door.", encoding_format="float")
    assert len(one.data) == 1
    ids = client.embeddings.create(model="x", input=[[1, 2, 3, 4], [5, 6]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 6


def test_an_over_long_input_is_a_400_naming_its_index(daemon: Daemon) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _openai(daemon).embeddings.create(model="x", input=["short", "fine", "word " * 600])
    body: Any = caught.value.body
    assert body["param"] == "input[2]"
    assert "input[2]" in body["message"] and "maximum context length is 512 tokens" in body["message"]


def test_limits_and_wrong_types_are_400s_with_param(daemon: Daemon) -> None:
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        _openai(daemon).embeddings.create(model="x", input=["hi"] * 257)
    cases: list[tuple[Any, str]] = [
        ({"input": ""}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": [1.5, 2.5]}, "input[0]"),
        ({"input": [["a"]]}, "input[0]"),
        ({"input": ["text", [1, 2]]}, "input[1]"),
        ({"input": [[1, 2], []]}, "input[1]"),
        ({"input": [[-1]]}, "input[0]"),
        ({"input": "hi", "dimensions": 3}, "dimensions"),
        ({"input": "hi", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "hi", "dimensions": "576"}, "dimensions"),
        ({}, "input"),
    ]
    with daemon.client() as http:
        for body, param in cases:
            _error(http.post("/v1/embeddings", json=body), 400, param)
        surrogate = http.post("/v1/embeddings", content=b'{"input": ["ok", "\\ud800"]}',
                              headers={"Content-Type": "application/json"})
        assert "Unicode" in _error(surrogate, 400, "input[1]")["message"]
        ok = http.post("/v1/embeddings", json={"input": "hi", "dimensions": 576})
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 576
        assert http.get("/health").json()["state"] == "ready"


def test_the_total_size_of_a_request_is_bounded() -> None:
    # The test daemon's 64 KiB body limit comes first, so the route's own bound is checked on its parser here.
    from edge_runtime.errors import InvalidRequest
    from edge_runtime.server.embeddings_api import MAX_TOTAL_CHARS, parse_inputs

    assert len(parse_inputs(["x" * (MAX_TOTAL_CHARS // 2)] * 2)) == 2
    with pytest.raises(InvalidRequest, match="characters in all") as caught:
        parse_inputs(["x" * (MAX_TOTAL_CHARS // 2)] * 2 + ["y"])
    assert caught.value.param == "input"
    with pytest.raises(InvalidRequest, match="characters in all"):
        parse_inputs([[1] * MAX_TOTAL_CHARS, [2]])


def test_chat_completions_work_while_and_after_embeddings_run(daemon: Daemon) -> None:
    client = _openai(daemon)
    results: dict[str, Any] = {}

    def embed() -> None:
        results["embeddings"] = client.embeddings.create(model="x", input=[f"{i} {LONG}" for i in range(8)])

    worker = threading.Thread(target=embed)
    worker.start()
    time.sleep(0.5)
    during = client.chat.completions.create(model=daemon.model, max_tokens=16, temperature=0,
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
    busy = worker.is_alive()  # the embeddings were still being computed when the answer came
    worker.join(180)
    after = client.chat.completions.create(model=daemon.model, max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert during.choices[0].message.content and after.choices[0].message.content
    assert len(results["embeddings"].data) == 8
    assert busy


def test_a_client_that_hangs_up_does_not_keep_the_worker_busy(daemon: Daemon) -> None:
    # 30 inputs of about 400 tokens (54 KB, under the test daemon's 64 KiB body limit): half a minute of work.
    body = ('{"encoding_format": "float", "input": [' + ",".join(f'"{i} {LONG}"' for i in range(30)) + "]}").encode()
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.0)
    started = time.monotonic()
    reply = _openai(daemon).embeddings.create(model="x", input="Open the garage door.")
    assert len(reply.data) == 1
    assert time.monotonic() - started < 10.0
    deadline = time.monotonic() + 10
    while "status=499" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client_disconnected" in daemon.log()


def test_metrics_count_embeddings(daemon: Daemon) -> None:
    _openai(daemon).embeddings.create(model="x", input=TEXTS)
    metrics = daemon.metrics()
    assert metrics["clawd_edge_embedding_requests_total"] >= 1
    assert metrics["clawd_edge_embedding_inputs_total"] >= 3
    assert metrics["clawd_edge_embedding_tokens_total"] > 15
    assert metrics["clawd_edge_embedding_seconds_count"] >= 1


def test_a_configured_embedding_model_serves_its_own_width(gemma_daemon: Daemon, gemma3_path: Path,
                                                            smollm2_path: Path) -> None:
    client = _openai(gemma_daemon)
    reply = client.embeddings.create(model="x", input=TEXTS)
    vectors = _vectors(reply)
    width = inspect(gemma3_path).n_embd
    assert width != inspect(smollm2_path).n_embd
    assert vectors.shape == (3, width) and reply.model == gemma3_path.stem
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(openai.BadRequestError, match="256 tokens"):
        client.embeddings.create(model="x", input=["ok", "word " * 300])
    chat = client.chat.completions.create(model=gemma_daemon.model, max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert chat.model == gemma_daemon.model and chat.choices[0].message.content
    assert f"embeddings: {gemma3_path.stem}: {width} dimensions" in gemma_daemon.log()


def _chat_plan_bytes(smollm2_path: Path) -> int:
    settings = Settings(threads=2, parallel=4, max_sequence_length=SLOT_CONTEXT)
    return plan_for(settings, smollm2_path).total_bytes


def test_default_embeddings_that_do_not_fit_turn_the_route_off_not_the_daemon(
        tmp_path: Path, smollm2_path: Path) -> None:
    budget = _chat_plan_bytes(smollm2_path) + 2**20
    daemon = start_daemon(tmp_path, smollm2_path, extra={"memory_budget": budget})
    try:
        with daemon.client() as http:
            error = _error(http.post("/v1/embeddings", json={"input": "hi"}), 503)
            assert error["code"] == "embeddings_unavailable" and "memory budget" in error["message"]
            chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                            "max_tokens": 4})
            assert chat.status_code == 200
        assert "/v1/embeddings is off" in daemon.log()
    finally:
        assert daemon.terminate() == 0


def test_a_configured_embedding_model_that_does_not_fit_stops_startup(tmp_path: Path, smollm2_path: Path,
                                                                     gemma3_path: Path) -> None:
    budget = _chat_plan_bytes(smollm2_path) + 64 * 2**20
    with pytest.raises(AssertionError, match="exited with 1"):
        start_daemon(tmp_path, smollm2_path, extra={"memory_budget": budget, "embedding_model": str(gemma3_path)})
    log = (tmp_path / "daemon.log").read_text()
    assert "error: embeddings with gemma-3-270m-q4_k_m need" in log and "Traceback" not in log
