"""The Ollama API (/api/*) through the official `ollama` client, on the real daemon with SmolLM2-135M."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from edge_runtime.gguf_file import inspect

from .conftest import API_KEY, Daemon, start_daemon

NAME = "smollm2-135m-instruct-q4_1"
SLOT = 2048
GREEDY: dict[str, Any] = {"temperature": 0, "seed": 7, "num_predict": 40}
LIGHT: dict[str, Any] = {"type": "function", "function": {
    "name": "turn_on_light", "description": "Turn on the light in a room",
    "parameters": {"type": "object", "properties": {
        "room": {"type": "string", "enum": ["living room", "kitchen", "bedroom", "bathroom"]},
        "brightness": {"type": "integer", "minimum": 1, "maximum": 100}}, "required": ["room"]},
}}
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 60}},
                   "required": ["city"]},
}}
# SmolLM2-135M does not start a call from the tool list alone; an earlier call in the history (here in Ollama's
# shape, arguments as an object) is enough of a hint for it to write one (as in test_tools_api.py).
EARLIER_CALL: list[dict[str, Any]] = [
    {"role": "user", "content": "Turn on the light in the hall."},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "turn_on_light",
                                                                      "arguments": {"room": "living room"}}}]},
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ollama")


@pytest.fixture(scope="module")
def served(smollm2_path: Path, workdir: Path) -> Iterator[Daemon]:
    """2 slots of 2048 (tool prompts are long), API key on, an empty temp models dir."""
    running = start_daemon(workdir, smollm2_path, extra={"max_sequence_length": SLOT, "parallel": 2})
    yield running
    assert running.terminate() == 0, running.log()


def _client(daemon: Daemon, key: str | None = API_KEY) -> ollama.Client:
    return ollama.Client(host=daemon.url, headers={"Authorization": f"Bearer {key}"} if key else None, timeout=180)


def _post(daemon: Daemon, route: str, body: dict[str, Any]) -> httpx.Response:
    with daemon.client() as http:
        return http.post(route, json=body)


def test_version_tags_ps_and_show_describe_the_served_model(served: Daemon, smollm2_path: Path) -> None:
    client = _client(served)
    with served.client() as http:
        assert http.get("/api/version").json()["version"].count(".") == 2
    info = inspect(smollm2_path)
    listed = client.list().models
    assert [m.model for m in listed] == [f"{NAME}:latest"]
    assert listed[0].size == smollm2_path.stat().st_size and listed[0].details is not None
    assert listed[0].details.family == info.architecture and listed[0].details.quantization_level == "Q4_1"
    assert listed[0].digest == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    client.generate(NAME, "Hi", options={"num_predict": 1})  # loaded, whatever earlier tests did
    running = client.ps().models
    assert [m.model for m in running] == [f"{NAME}:latest"] and running[0].context_length == SLOT
    for name in (NAME, f"{NAME}:latest", "smollm2"):
        shown = client.show(name)
        assert shown.modelinfo is not None and shown.template == info.chat_template
        assert shown.modelinfo[f"{info.architecture}.context_length"] == info.n_ctx_train
        assert shown.modelinfo["tokenizer.ggml.tokens"] == []
        assert re.search(rf"^num_ctx\s+{SLOT}$", shown.parameters or "", re.MULTILINE), shown.parameters


def test_chat_streamed_and_whole_give_the_same_greedy_answer_with_ollama_timings(served: Daemon) -> None:
    client = _client(served)
    before = served.metrics()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(NAME, messages, options=GREEDY)
    parts = list(client.chat(NAME, messages, options=GREEDY, stream=True))
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    final = parts[-1]
    for reply in (whole, final):
        assert reply.done_reason in ("stop", "length") and reply.model == NAME
        assert reply.prompt_eval_count and reply.prompt_eval_count > 5
        assert reply.eval_count and 0 < reply.eval_count <= GREEDY["num_predict"]
        assert reply.total_duration and reply.eval_duration and reply.total_duration > reply.eval_duration > 0
        assert reply.created_at and dt.datetime.fromisoformat(reply.created_at.replace("Z", "+00:00"))
    # Counted like the OpenAI routes: per route, with time to first token and tokens.
    after = served.metrics()
    key = "clawd_edge_http_requests_total{method=POST,route=/api/chat,status=200}"
    assert after[key] - before.get(key, 0) == 2
    for name in ("clawd_edge_time_to_first_token_seconds_count", "clawd_edge_completion_tokens_total"):
        assert after[name] - before[name] >= (2 if "count" in name else (whole.eval_count or 0) * 2), name


def test_a_client_leaving_a_stream_frees_its_slot(served: Daemon) -> None:
    body = {"model": NAME, "prompt": "Tell me a long story about a dragon.", "options": {"num_predict": 250}}
    with served.client() as http, http.stream("POST", "/api/generate", json=body) as reply:
        assert reply.headers["content-type"] == "application/x-ndjson"
        first = json.loads(next(reply.iter_lines()))
        assert first["done"] is False and "response" in first
    deadline = time.monotonic() + 10
    with served.client() as http:
        while (health := http.get("/health").json())["slots_busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert health["slots_busy"] == 0, health
    # Cancelled by the disconnect (it would otherwise have run to num_predict and logged finish_reason=length).
    def last_line() -> str:
        lines = [line for line in served.log().splitlines() if "path=/api/generate" in line and "stream=true" in line]
        return lines[-1] if lines else ""

    while "error=cancelled" not in last_line() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "error=cancelled" in last_line(), last_line()


def test_options_num_predict_stop_and_seed(served: Daemon) -> None:
    client = _client(served)
    short = client.generate(NAME, "Count from one to twenty in words.", options={"temperature": 0, "num_predict": 5})
    assert short.done_reason == "length" and short.eval_count == 5
    prompt, greedy = "Write a sentence about the sea.", {"temperature": 0, "num_predict": 40}
    text = client.generate(NAME, prompt, options=greedy).response or ""
    # A stop string from the middle of the greedy answer (first seen past its start) cuts it just before.
    stop = next(s for k in range(len(text) // 2, len(text) - 4) if (s := text[k:k + 4]).strip() and text.find(s) > 0)
    cut = client.generate(NAME, prompt, options={**greedy, "stop": [stop]})
    assert cut.response == text[:text.index(stop)] and cut.done_reason == "stop", (text, stop, cut.response)
    hot = {"temperature": 1.5, "num_predict": 30, "seed": 1234}
    first, again = (client.generate(NAME, "Write a line of a poem.", options=hot) for _ in range(2))
    assert first.response == again.response


def test_logprobs_in_ollamas_shape_streamed_or_not(served: Daemon) -> None:
    client = _client(served)
    request: dict[str, Any] = {"model": NAME, "prompt": "Name a colour.", "logprobs": True, "top_logprobs": 2,
                               "options": {"temperature": 0, "num_predict": 6}}
    whole = client.generate(**request)
    assert whole.logprobs is not None and len(whole.logprobs) == whole.eval_count
    assert "".join(lp.token for lp in whole.logprobs) == whole.response
    for lp in whole.logprobs:  # greedy: each chosen token is the most likely one
        assert lp.top_logprobs and len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token
    streamed = [lp for part in client.generate(**request, stream=True) for lp in part.logprobs or ()]
    assert [lp.token for lp in streamed] == [lp.token for lp in whole.logprobs]


def test_format_json_and_a_json_schema(served: Daemon) -> None:
    client = _client(served)
    mode = client.generate(NAME, 'What is 2+2? Reply as JSON: {"answer": <number>}', format="json",
                           options={"temperature": 0, "num_predict": 120})
    assert mode.done_reason == "stop" and isinstance(json.loads(mode.response or ""), dict), mode.response
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"]}
    reply = client.chat(NAME, [{"role": "user", "content": "Invent a person."}], format=schema,
                        options={"temperature": 0, "num_predict": 120})
    jsonschema.validate(json.loads(reply.message.content or ""), schema)


def test_tool_calls_come_back_with_object_arguments_streamed_or_not(served: Daemon) -> None:
    client = _client(served)
    messages = [*EARLIER_CALL, {"role": "user", "content": "Turn on the light in the bedroom."}]
    greedy = {"temperature": 0, "num_predict": 120}
    whole = client.chat(NAME, messages, tools=[LIGHT], options=greedy)
    calls = whole.message.tool_calls
    assert calls and whole.done_reason == "stop", whole
    arguments = calls[0].function.arguments
    assert calls[0].function.name == "turn_on_light" and isinstance(arguments, dict), calls
    assert dict(arguments.items()) == json.loads(json.dumps(arguments))  # Home Assistant calls .items()
    jsonschema.validate(arguments, LIGHT["function"]["parameters"])
    # Streamed, the finished calls arrive whole in one line (as Ollama sends them), before the final one.
    parts = list(client.chat(NAME, messages, tools=[LIGHT, WEATHER], stream=True, options=greedy))
    streamed = [c for part in parts for c in part.message.tool_calls or ()]
    assert streamed and parts[-1].done and not parts[-1].message.tool_calls, parts
    for call in streamed:
        schema = next(t for t in (LIGHT, WEATHER) if t["function"]["name"] == call.function.name)
        jsonschema.validate(dict(call.function.arguments), schema["function"]["parameters"])
    # The result goes back as a tool message naming the tool (Ollama has no call ids); the model answers in text.
    answered = client.chat(NAME, [*messages, whole.message, {"role": "tool", "tool_name": "turn_on_light",
                                                              "content": json.dumps({"ok": True})}],
                           tools=[LIGHT], options={"temperature": 0, "num_predict": 40})
    assert answered.done and (answered.message.content or answered.message.tool_calls)
    assert (answered.prompt_eval_count or 0) > (whole.prompt_eval_count or 0) + 10  # the call and result were read


def test_num_ctx_above_the_slot_is_clamped_and_said_so(served: Daemon) -> None:
    # Home Assistant sends num_ctx 8192 by default, as a float: clamped to the slot's context, and reported.
    body = {"model": NAME, "prompt": "Hi", "stream": False, "options": {"num_ctx": 8192.0, "num_predict": 3}}
    reply = _post(served, "/api/generate", body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-clawd-clamped"] == f"num_ctx=8192->{SLOT}"
    assert f"num_ctx=8192->{SLOT}" in served.log()
    within = _post(served, "/api/generate", {**body, "options": {"num_ctx": 1024, "num_predict": 3}})
    assert within.status_code == 200 and "x-clawd-clamped" not in within.headers
    for bad in (0, -5, 2.5, "8192", True):
        refused = _post(served, "/api/generate", {**body, "options": {"num_ctx": bad}})
        assert refused.status_code == 400 and refused.json()["error"].startswith("options.num_ctx"), refused.text


def test_bad_requests_are_one_line_ollama_errors(served: Daemon) -> None:
    client = _client(served)
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(NAME, [{"role": "user", "content": "What is this?", "images": [pixel]}])
    assert caught.value.status_code == 400 and "images are not supported" in caught.value.error
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/api/generate", {"model": NAME, "prompt": "x", "images": [pixel]}, "images are not supported"),
        ("/api/chat", {"model": 5, "messages": []}, "model"),
        ("/api/chat", {"model": NAME, "messages": [{"role": "user", "content": "x"}], "think": True},
         "does not support thinking"),
        ("/api/chat", {"model": NAME, "messages": [{"role": "user", "content": "x"}],
                       "options": {"temperature": "hot"}}, "options.temperature"),
        ("/api/generate", {"model": NAME, "prompt": "x", "keep_alive": "soon"}, "keep_alive"),
        ("/api/generate", {"model": NAME, "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/chat", {"model": NAME, "messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "[1]"}}]}]}, "JSON object"),
    ]
    for route, body, words in cases:
        reply = _post(served, route, body)
        error = reply.json()["error"]
        assert reply.status_code == 400 and isinstance(error, str) and "\n" not in error and words in error, \
            (route, body, reply.text)


def test_the_api_key_guards_every_ollama_route(served: Daemon) -> None:
    for key in (None, "wrong"):
        with pytest.raises(ollama.ResponseError) as caught:
            _client(served, key).list()
        assert caught.value.status_code == 401 and "API key" in caught.value.error
    with httpx.Client(base_url=served.url) as http:
        for route in ("/api/tags", "/api/ps", "/api/version"):
            assert http.get(route).status_code == 401
        for route in ("/api/chat", "/api/generate", "/api/show", "/api/pull", "/api/embed"):
            reply = http.post(route, json={"model": NAME})
            assert reply.status_code == 401 and set(reply.json()) == {"error"}, route


def test_embed_and_the_legacy_embeddings_route(served: Daemon) -> None:
    client = _client(served)
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    reply = client.embed(NAME, texts)
    vectors = reply.embeddings
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 100
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)
    assert reply.prompt_eval_count and reply.prompt_eval_count > 4
    legacy = client.embeddings(NAME, texts[0]).embedding
    assert max(abs(a - b) for a, b in zip(legacy, vectors[0], strict=True)) < 1e-4
    assert _post(served, "/api/embed", {"model": NAME, "input": "x", "dimensions": 3}).status_code == 400


def test_pull_streams_progress_into_the_models_dir(served: Daemon, workdir: Path, smollm2_path: Path) -> None:
    client = _client(served)
    target = workdir / "models" / smollm2_path.name
    assert not target.exists()
    lines = list(client.pull(f"{NAME}:latest", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success" and "verifying sha256 digest" in statuses
    size = smollm2_path.stat().st_size
    assert any(line.completed == line.total == size and line.digest for line in lines)
    assert target.stat().st_size == size
    again = client.pull(NAME)  # already there and verified: a single success
    assert again.status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2")
    assert caught.value.status_code == 404 and "unknown model" in caught.value.error


def test_keep_alive_zero_unloads_and_a_duration_sets_expires_at(served: Daemon) -> None:
    client = _client(served)
    client.generate(NAME, "Hi", options={"num_predict": 2}, keep_alive="10m")
    running = client.ps().models
    assert running and running[0].expires_at is not None
    left = running[0].expires_at.timestamp() - time.time()
    assert 9 * 60 < left <= 10 * 60 + 1, left
    client.chat(NAME, [{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive=-1)
    forever = client.ps().models[0].expires_at
    assert forever is not None and forever.year > 2200
    unloaded = client.generate(NAME, keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    with served.client() as http:
        assert http.get("/health").json()["state"] == "unloaded"
    assert client.ps().models == []
    loaded = client.generate(NAME, keep_alive="5m")  # an empty prompt preloads
    assert loaded.done_reason == "load" and [m.model for m in client.ps().models] == [f"{NAME}:latest"]
    reply = client.chat(NAME, [{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive="0s")
    assert reply.done and reply.message.content is not None
    deadline = time.monotonic() + 10
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.05)  # unloads once that request has finished
    assert client.ps().models == []
    assert client.generate(NAME, "Hi", options={"num_predict": 2}).done  # and reloads on the next request


def test_strict_model_names_the_served_model_with_or_without_its_tag(smollm2_path: Path, tmp_path: Path) -> None:
    server = {"max_tokens": 64, "max_request_bytes": 65536, "shutdown_timeout": 5, "strict_model": True}
    strict = start_daemon(tmp_path, smollm2_path, api_key=None, extra={"server": server})
    try:
        client = _client(strict, key=None)
        for name in (NAME, f"{NAME}:latest", "smollm2", "smollm2-135m:latest", smollm2_path.stem):
            reply = client.chat(name, [{"role": "user", "content": "Hi"}], options={"num_predict": 2})
            assert reply.done and reply.model == name
        for name in ("llama3.2", f"{NAME}:7b", "gpt-4o"):
            with pytest.raises(ollama.ResponseError) as caught:
                client.show(name)
            assert caught.value.status_code == 404 and "not served here" in caught.value.error, name
    finally:
        assert strict.terminate() == 0, strict.log()


def test_home_assistants_conversation_calls_work_as_it_makes_them(served: Daemon) -> None:
    """The calls of Home Assistant's Ollama integration (homeassistant/components/ollama): its async client with a
    Bearer key, list() to find the model, then chat() streamed with its tool format, keep_alive -1, num_ctx 8192
    and think False; each streamed part read the way its _transform_stream reads it, tool results sent back as
    role "tool" with no name or id, as its _convert_content writes them."""
    import asyncio

    async def conversation() -> list[dict[str, Any]]:
        client = ollama.AsyncClient(host=served.url, headers={"Authorization": f"Bearer {API_KEY}"})
        listed = await client.list()
        model = next(m["model"] for m in listed.get("models", []) if m["model"].startswith(NAME))
        history: list[Any] = [
            ollama.Message(role="system", content="You are a voice assistant for Home Assistant."),
            *(ollama.Message(**m) for m in EARLIER_CALL),
            ollama.Message(role="user", content="Turn on the light in the kitchen."),
        ]
        deltas: list[dict[str, Any]] = []
        for _ in range(2):  # a tool call, then the answer to its result (HA's MAX_TOOL_ITERATIONS loop)
            stream = await client.chat(model=model, messages=list(history), tools=[LIGHT], stream=True,
                                       keep_alive=-1, options={"num_ctx": 8192}, think=False, format=None)
            calls: list[Any] = []
            async for response in stream:
                message = response["message"]
                delta: dict[str, Any] = {"content": message.get("content")}
                if (tool_calls := message.get("tool_calls")) is not None:
                    delta["tool_calls"] = [(c["function"]["name"], dict(c["function"]["arguments"].items()))
                                           for c in tool_calls]
                    calls += tool_calls
                deltas.append(delta)
            if not calls:
                break
            history.append(ollama.Message(role="assistant", content="", tool_calls=calls))
            history.append(ollama.Message(role="tool", content=json.dumps({"data": {"success": True}, "error": None})))
        return deltas

    deltas = asyncio.run(conversation())
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    assert calls and calls[0][0] == "turn_on_light", deltas
    jsonschema.validate(calls[0][1], LIGHT["function"]["parameters"])
    assert f"num_ctx=8192->{SLOT}" in served.log()  # clamped to the slot, and said so
    ps = _client(served).ps()  # keep_alive -1: loaded for good
    assert ps.models and ps.models[0].expires_at is not None and ps.models[0].expires_at.year > 2100, ps
