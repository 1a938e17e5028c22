"""Tool calling, logprobs, n and logit_bias through the real `openai` client, the real daemon and SmolLM2-135M."""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from .conftest import API_KEY, Daemon, start_daemon

THERMOSTAT: dict[str, Any] = {"type": "function", "function": {
    "name": "set_thermostat",
    "description": "Set the heating of one room",
    "parameters": {
        "type": "object",
        "properties": {
            "room": {"type": "string", "enum": ["living room", "kitchen", "bedroom", "bathroom"]},
            "temperature": {"type": "number", "minimum": 16, "maximum": 26},
            "mode": {"type": "string", "enum": ["heat", "eco", "off"]},
            "schedule": {
                "type": "object",
                "properties": {
                    "start_hour": {"type": "integer", "minimum": 0, "maximum": 23},
                    "days": {"type": "array", "items": {"type": "string", "enum": ["mon", "tue", "wed", "thu",
                                                                                    "fri", "sat", "sun"]},
                             "maxItems": 7},
                },
                "required": ["start_hour"],
            },
        },
        "required": ["room", "temperature", "schedule"],
    },
}}
LIGHT: dict[str, Any] = {"type": "function", "function": {
    "name": "turn_on_light",
    "description": "Turn on the light in a room",
    "parameters": {"type": "object", "properties": {
        "room": {"type": "string", "enum": ["living room", "kitchen", "bedroom", "bathroom"]},
        "brightness": {"type": "integer", "minimum": 1, "maximum": 100}}, "required": ["room"]},
}}
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 60}},
                   "required": ["city"]},
}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (THERMOSTAT, LIGHT, WEATHER)}


@pytest.fixture(scope="module")
def tool_daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Tool prompts are long for a 512-token slot: this daemon has 4 slots of 2048."""
    running = start_daemon(tmp_path_factory.mktemp("tools"), smollm2_path,
                           extra={"max_sequence_length": 2048, "parallel": 4})
    yield running
    assert running.terminate() == 0, running.log()


def _client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=API_KEY, max_retries=0, timeout=180)


def _valid_calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    """Each call's name and arguments, after checking the arguments against the tool's schema."""
    assert message.tool_calls, message
    calls = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert isinstance(call.function.arguments, str)  # a JSON *string*, as OpenAI sends it
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def test_required_call_validates_against_a_schema_with_enums_ranges_and_nesting(tool_daemon: Daemon) -> None:
    reply = _client(tool_daemon).chat.completions.create(
        model=tool_daemon.model, tools=[THERMOSTAT, LIGHT], tool_choice="required", temperature=0, max_tokens=200,
        messages=[{"role": "user", "content": "Heat the kitchen to 21 degrees every weekday from 7 am."}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert _valid_calls(choice.message)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_named_call_at_temperature_validates(tool_daemon: Daemon, seed: int) -> None:
    reply = _client(tool_daemon).chat.completions.create(
        model=tool_daemon.model, tools=[LIGHT, THERMOSTAT], temperature=1.0, seed=seed, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "set_thermostat"}},
        messages=[{"role": "user", "content": "It is cold in the bedroom."}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [name for name, _ in _valid_calls(choice.message)] == ["set_thermostat"]


# SmolLM2-135M does not start a call on its own from the tool list alone (README: "Tools"); an earlier call in the
# conversation is enough of a hint for it to write one in the documented format.
EARLIER_CALL: list[dict[str, Any]] = [
    {"role": "user", "content": "Turn on the light in the hall."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "turn_on_light", "arguments": '{"room": "living room"}'}}]},
]


def test_auto_lets_the_model_choose_and_the_grammar_finishes_a_started_call(tool_daemon: Daemon) -> None:
    client = _client(tool_daemon)
    reply = client.chat.completions.create(
        model=tool_daemon.model, tools=[LIGHT, WEATHER], temperature=0, max_tokens=120,
        messages=[*EARLIER_CALL, {"role": "user", "content": "Turn on the light in the bedroom."}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(_valid_calls(choice.message)) == 1
    text = client.chat.completions.create(
        model=tool_daemon.model, tools=[LIGHT, WEATHER], temperature=0, max_tokens=40,
        messages=[*EARLIER_CALL, {"role": "user", "content": "What is 2+2?"}])
    assert text.choices[0].finish_reason in ("stop", "length")
    assert text.choices[0].message.tool_calls is None and "4" in (text.choices[0].message.content or "")


def test_round_trip_call_result_then_a_text_answer(tool_daemon: Daemon) -> None:
    client = _client(tool_daemon)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    first = client.chat.completions.create(model=tool_daemon.model, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=120, messages=messages)
    call = first.choices[0].message.tool_calls[0]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18,
                                                                                  "sky": "sunny"})}]
    final = client.chat.completions.create(model=tool_daemon.model, tools=[WEATHER], tool_choice="none",
                                           temperature=0, max_tokens=80, messages=messages)
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.tool_calls is None
    assert choice.message.content and "18" in choice.message.content, choice.message.content


def test_streamed_calls_are_reassembled_by_the_client_library(tool_daemon: Daemon) -> None:
    client = _client(tool_daemon)
    request: dict[str, Any] = {
        "model": tool_daemon.model, "tools": [THERMOSTAT, LIGHT], "tool_choice": "required", "temperature": 0,
        "max_tokens": 200, "messages": [{"role": "user", "content": "Set the bedroom to 19 degrees at 22 h."}]}
    whole = client.chat.completions.create(**request)
    with client.chat.completions.stream(**request) as stream:
        deltas = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        streamed = stream.get_final_completion()
    assert len(deltas) > 1  # the arguments really arrived in fragments
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert _valid_calls(streamed.choices[0].message) == _valid_calls(whole.choices[0].message)


def test_parallel_tool_calls(tool_daemon: Daemon) -> None:
    client = _client(tool_daemon)
    request: dict[str, Any] = {
        "model": tool_daemon.model, "tools": [LIGHT], "tool_choice": "required", "temperature": 0,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Turn on the light in the kitchen and the light in the bedroom."}]}
    both = client.chat.completions.create(**request)
    calls = _valid_calls(both.choices[0].message)
    assert len(calls) == 2, calls
    assert len({call.id for call in both.choices[0].message.tool_calls or ()}) == 2
    one = client.chat.completions.create(**request, parallel_tool_calls=False)
    assert len(_valid_calls(one.choices[0].message)) == 1


def test_invalid_tool_definitions_are_400_with_param(tool_daemon: Daemon) -> None:
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                               "properties": {"a": {"type": 5}}}}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [bad_schema]}, "tools[0].function.parameters"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "grammar": 'root ::= "x"'}, "tools"),
    ]
    with httpx.Client(base_url=tool_daemon.url, headers=tool_daemon.headers, timeout=60) as http:
        for fields, param in cases:
            response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                **fields})
            assert response.status_code == 400, (fields, response.text)
            assert response.json()["error"]["param"] == param, response.text


def test_logprobs_describe_the_greedy_choice(tool_daemon: Daemon) -> None:
    reply = _client(tool_daemon).chat.completions.create(
        model=tool_daemon.model, temperature=0, max_tokens=12, logprobs=True, top_logprobs=5,
        messages=[{"role": "user", "content": "Name a colour."}])
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == reply.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0
        top = entry.top_logprobs
        assert len(top) == 5
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert top[0].token == entry.token and top[0].logprob == entry.logprob  # greedy: the top-1 token
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-6


def test_completion_logprobs_and_a_forcing_logit_bias(tool_daemon: Daemon) -> None:
    client = _client(tool_daemon)
    plain = client.completions.create(model=tool_daemon.model, prompt="The capital of France is", max_tokens=4,
                                      temperature=0, logprobs=2)
    logprobs = plain.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and "".join(logprobs.tokens) == plain.choices[0].text
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs or ())
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or ())
    forced = client.completions.create(model=tool_daemon.model, prompt="The capital of France is", max_tokens=3,
                                       temperature=0, logprobs=0, logit_bias={"1000": 100})
    tokens = forced.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert tokens and len(set(tokens)) == 1 and forced.choices[0].text == tokens[0] * len(tokens)
    assert forced.choices[0].text != plain.choices[0].text[:len(forced.choices[0].text)]


def _evaluated(daemon: Daemon) -> float:
    return daemon.metrics()["clawd_edge_engine_prompt_tokens_evaluated_total"]


def test_n_choices_from_one_evaluation_of_the_prompt(tool_daemon: Daemon) -> None:
    before = _evaluated(tool_daemon)
    reply = _client(tool_daemon).chat.completions.create(
        model=tool_daemon.model, n=3, temperature=0.8, seed=7, max_tokens=24,
        messages=[{"role": "user", "content": "Write one sentence about a cat that lives on a boat."}])
    evaluated = _evaluated(tool_daemon) - before
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # seeds 7, 8, 9: different answers
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    # Once, not three times: whatever the prefix cache did not already hold.
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < evaluated == usage.prompt_tokens - cached
    assert usage.completion_tokens >= 3
