"""The real daemon with the real model: OpenAI clients, concurrency, disconnects, errors, metrics, auth."""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import API_KEY, SERVER_MAX_TOKENS, SLOT_CONTEXT, Daemon, start_daemon

COUNTING = "1, 2, 3, 4, 5, 6,"  # SmolLM2 keeps counting: a long, deterministic stream


def _openai(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=API_KEY, max_retries=0, timeout=180)


def _assert_openai_error(response: httpx.Response, status: int, param: str | None = None,
                         code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def test_health_is_public_and_ready(daemon: Daemon) -> None:
    response = httpx.get(daemon.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "ready" and body["status"] == "ok"
    assert body["slots_total"] == 4


def test_openai_client_chat(daemon: Daemon) -> None:
    reply = _openai(daemon).chat.completions.create(
        model=daemon.model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.model == daemon.model
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 24


def test_openai_client_streaming_matches_non_streaming(daemon: Daemon) -> None:
    client = _openai(daemon)
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model=daemon.model, messages=messages,  # type: ignore[arg-type]
                                           max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model=daemon.model, messages=messages,  # type: ignore[arg-type]
                                            max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    parts: list[str] = []
    finish = None
    usage = None
    roles = []
    for event in stream:
        if event.usage is not None:
            usage = event.usage
        for choice in event.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert roles == ["assistant"]
    assert "".join(parts) == whole.choices[0].message.content  # greedy: same text either way
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_openai_client_text_completion(daemon: Daemon) -> None:
    reply = _openai(daemon).completions.create(model=daemon.model, prompt=COUNTING, max_tokens=6, temperature=0)
    assert reply.object == "text_completion"
    assert "7" in reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 6


def test_json_object_response_format(daemon: Daemon) -> None:
    reply = _openai(daemon).chat.completions.create(
        model=daemon.model, messages=[{"role": "user", "content": "Describe a cat as JSON."}], max_tokens=80,
        temperature=0, response_format={"type": "json_object"})
    content = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert content.lstrip().startswith("{")


def test_eight_concurrent_streams_all_complete(daemon: Daemon) -> None:
    results: list[tuple[str, str | None, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            stream = _openai(daemon).chat.completions.create(
                model=daemon.model, messages=[{"role": "user", "content": f"Tell me fact number {i} about the sea."}],
                max_tokens=32, temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True})
            text, finish, tokens = "", None, 0
            for event in stream:
                if event.usage is not None:
                    tokens = event.usage.completion_tokens
                for choice in event.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
            with lock:
                results.append((text, finish, tokens))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == 8
    for text, finish, tokens in results:
        assert text and finish in ("stop", "length") and 0 < tokens <= 32


def _wait_idle(daemon: Daemon, timeout: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        metrics = daemon.metrics()
        if metrics["clawd_edge_slots_active"] == 0 and metrics["clawd_edge_queue_depth"] == 0:
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"slots still busy after {timeout} s: {metrics}")
        time.sleep(0.1)


def test_disconnecting_client_frees_its_slot(daemon: Daemon) -> None:
    before = _wait_idle(daemon)
    body = json.dumps({"model": daemon.model, "prompt": COUNTING, "max_tokens": SERVER_MAX_TOKENS,
                       "temperature": 0, "stream": True}).encode()
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=180) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while received.count(b"data: ") < 3:  # the stream is flowing
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert b" 200 " in received.split(b"\r\n", 1)[0]
        during = daemon.metrics()
        assert during["clawd_edge_slots_active"] >= 1
    # Closed after ~2 of 256 tokens: the daemon must cancel the generation, not finish it.
    after = _wait_idle(daemon)
    assert after["clawd_edge_engine_requests_cancelled_total"] == \
        before["clawd_edge_engine_requests_cancelled_total"] + 1
    assert after["clawd_edge_completion_tokens_total"] - before["clawd_edge_completion_tokens_total"] < \
        SERVER_MAX_TOKENS  # the cancelled stream never reported a finished generation
    deadline = time.monotonic() + 10  # the access line is written when the response task unwinds
    cancelled_line = re.compile(r"path=/v1/completions status=200 .*stream=true .*error=cancelled")
    while not cancelled_line.search(daemon.log()):
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)


def test_bad_requests_get_openai_errors_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    chat = "/v1/chat/completions"
    user = [{"role": "user", "content": "hi"}]
    with daemon.client() as client:
        malformed = client.post(chat, content=b'{"messages": [', headers={"Content-Type": "application/json"})
        _assert_openai_error(malformed, 400, code="invalid_json")
        _assert_openai_error(client.post(chat, json={"messages": user, "max_tokens": "ten"}), 400, "max_tokens")
        _assert_openai_error(client.post(chat, json={"messages": "hi"}), 400, "messages")
        _assert_openai_error(client.post(chat, json={"messages": user, "temperature": [1]}), 400, "temperature")
        too_long = [{"role": "user", "content": "word " * (SLOT_CONTEXT + 50)}]
        _assert_openai_error(client.post(chat, json={"messages": too_long, "stream": True}), 400, "messages")
        _assert_openai_error(client.post(chat, json={"messages": user, "max_tokens": SERVER_MAX_TOKENS + 1}),
                             400, "max_tokens")
        _assert_openai_error(client.post(chat, json={"messages": user, "n": 100}), 400, "n")
        _assert_openai_error(client.post(chat, json={"messages": user, "top_logprobs": 2}), 400, "top_logprobs")
        _assert_openai_error(client.post(chat, json={"messages": user, "logit_bias": {"99999999": 5}}), 400,
                             "logit_bias")
        _assert_openai_error(client.post(chat, content=b"x" * 70000, headers={"Content-Type": "application/json"}),
                             413, code="request_too_large")
        def chunked() -> Any:  # no Content-Length: the limit is enforced while reading
            yield b"x" * 40000
            yield b"x" * 40000

        _assert_openai_error(client.post(chat, content=chunked(), headers={"Content-Type": "application/json"}),
                             413, code="request_too_large")
        _assert_openai_error(client.post(chat, json={"messages": []}), 400, "messages")
        untyped = client.post(chat, content=json.dumps({"messages": user}).encode())  # no Content-Type
        _assert_openai_error(untyped, 400, code="invalid_content_type")
        form = client.post(chat, content=b"{}", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert "Content-Type: application/json" in _assert_openai_error(form, 400)["message"]
        _assert_openai_error(client.get("/v1/nothing-here"), 404)
        _assert_openai_error(client.get(chat), 405)
        ok = client.post(chat, json={"messages": user, "max_tokens": 4})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"]


def test_api_key_is_required_everywhere_but_health(daemon: Daemon) -> None:
    for path in ("/v1/models", "/metrics", "/openapi.json"):
        missing = httpx.get(daemon.url + path)
        _assert_openai_error(missing, 401, code="invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(daemon.url + path, headers={"Authorization": "Bearer nope"})
        _assert_openai_error(wrong, 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=daemon.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(daemon.url + "/health").status_code == 200


def test_models_lists_the_served_model_first_then_the_registry(daemon: Daemon) -> None:
    models = _openai(daemon).models.list().data
    assert models[0].id == daemon.model
    assert models[0].model_extra is not None and models[0].model_extra["loaded"] is True
    assert any(m.id == "gemma3-270m-q4_k_m" for m in models[1:])
    with daemon.client() as client:
        assert client.get(f"/v1/models/{daemon.model}").json()["id"] == daemon.model
        _assert_openai_error(client.get("/v1/models/nope"), 404, code="model_not_found")


# A fixed name an OpenAI app sends, a load tool's "default", a registry model that is not the loaded one, and a
# path: each is answered by the loaded model (llama-server does the same), and a name never reaches the disk.
OTHER_NAMES = ("gpt-4o-mini", "default", "gemma3-270m-q4_k_m", "../../../../etc/passwd")


@pytest.mark.parametrize("name", OTHER_NAMES)
def test_any_model_name_is_answered_by_the_loaded_model(daemon: Daemon, name: str) -> None:
    reply = _openai(daemon).chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=2)
    assert reply.model == daemon.model and reply.choices[0].message.content
    with daemon.client() as client:
        stream = client.post("/v1/completions", json={"model": name, "prompt": COUNTING, "max_tokens": 2,
                                                      "stream": True})
    assert stream.status_code == 200, stream.text
    events = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: {")]
    assert events and {event["model"] for event in events} == {daemon.model}


def test_strict_model_refuses_every_other_name_with_404(smollm2_path: Path, tmp_path: Path) -> None:
    strict = start_daemon(tmp_path, smollm2_path, api_key=None,
                          extra={"server": {"strict_model": True, "max_tokens": 8}})
    try:
        user = [{"role": "user", "content": "Hi"}]
        with strict.client() as client:
            for name in OTHER_NAMES:
                for route, body in (("/v1/chat/completions", {"messages": user}), ("/v1/completions",
                                                                                    {"prompt": "Hi"})):
                    error = _assert_openai_error(client.post(route, json={"model": name, **body}), 404, "model",
                                                 "model_not_found")
                    assert f"this daemon serves {strict.model!r}" in error["message"], error
            # Its own names still work: the id, any case, the file name it was started with.
            for name in (strict.model, strict.model.upper(), smollm2_path.name):
                reply = client.post("/v1/chat/completions", json={"model": name, "messages": user, "max_tokens": 2})
                assert reply.status_code == 200 and reply.json()["model"] == strict.model, reply.text
    finally:
        assert strict.terminate() == 0, strict.log()


def test_metrics_parse_and_count_requests_tokens_and_latency(daemon: Daemon) -> None:
    with daemon.client() as client:
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True})
        assert response.status_code == 200
    metrics = daemon.metrics()
    route = "route=/v1/chat/completions"
    assert metrics[f"clawd_edge_http_requests_total{{method=POST,{route},status=200}}"] >= 1
    assert metrics[f"clawd_edge_http_request_duration_seconds_count{{{route}}}"] >= 1
    assert metrics["clawd_edge_time_to_first_token_seconds_count"] >= 1
    assert metrics["clawd_edge_completion_tokens_total"] >= 1
    assert metrics["clawd_edge_prompt_tokens_total"] >= 1
    assert metrics["clawd_edge_slots_capacity"] == 4
    assert metrics["clawd_edge_kv_cache_total_cells"] >= 4 * SLOT_CONTEXT
    assert metrics["clawd_edge_model_load_seconds"] > 0
    assert metrics["clawd_edge_rss_bytes"] > 50 * 2**20
    assert metrics["process_resident_memory_bytes"] > 50 * 2**20
    assert metrics["clawd_edge_engine_state{state=ready}"] == 1
    assert "clawd_edge_queue_depth" in metrics
    assert "clawd_edge_completion_tokens_per_second" in metrics
    assert "clawd_edge_kv_cache_used_cells" in metrics


def test_the_build_profile_is_logged_and_exported(daemon: Daemon) -> None:
    from edge_runtime.cpu.build import installed

    build = installed()
    assert build is not None
    info = [key for key in daemon.metrics() if key.startswith("clawd_edge_build_info{")]
    assert len(info) == 1 and f"profile={build.profile_name}" in info[0] and "arch=" in info[0], info
    assert f"llama.cpp build profile {build.profile_name} (llama-cpp-python {build.version})" in daemon.log()


def test_access_log_has_one_line_per_request(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.post("/v1/completions", json={"prompt": COUNTING, "max_tokens": 3, "user": "log-probe"})
    lines = [line for line in daemon.log().splitlines() if "path=/v1/completions status=200" in line]
    assert lines
    last = lines[-1]
    for key in ("method=POST", "latency_ms=", "ttft_ms=", "prompt_tokens=", "completion_tokens=3",
                "finish_reason=length", "stream=false"):
        assert key in last, last
