"""Ollama request translation without a model: keep_alive durations, options bounds, tool-call history pairing."""
from __future__ import annotations

import json
import math

import pytest

from edge_runtime.errors import InvalidRequest
from edge_runtime.server.ollama_models import split_tag
from edge_runtime.server.ollama_schemas import ChatRequest, Limits, chat_messages, chat_request, keep_alive_seconds


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 300.0), (0, 0.0), (30, 30.0), (2.5, 2.5), (-1, math.inf), ("5m", 300.0), ("1h30m", 5400.0),
    ("300ms", 0.3), ("1.5h", 5400.0), ("0", 0.0), ("0s", 0.0), ("-1", math.inf), ("-5m", math.inf), ("45", 45.0),
    ("2h0m3s", 7203.0), (1e300, math.inf), ("99999999999h", math.inf),
])
def test_keep_alive_numbers_and_go_durations(value: float | str | None, seconds: float) -> None:
    assert keep_alive_seconds(value, 300.0) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "soon", "5 m", "m5", "5d", "1h-3m", "nan", "--5m"])
def test_keep_alive_nonsense_is_a_400(value: str) -> None:
    with pytest.raises(InvalidRequest, match="keep_alive"):
        keep_alive_seconds(value, 300.0)


def test_names_split_into_model_and_tag() -> None:
    assert split_tag("smollm2") == ("smollm2", "latest")
    assert split_tag("smollm2:latest") == ("smollm2", "latest")
    assert split_tag("library/smollm2:135m") == ("library/smollm2", "135m")
    assert split_tag("host:11434/x") == ("host:11434/x", "latest")


def test_tool_results_answer_the_call_they_name_else_the_oldest_open_one() -> None:
    body = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "Lights and weather."},
        {"role": "assistant", "tool_calls": [{"function": {"name": "light", "arguments": {"room": "hall"}}},
                                             {"function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_name": "weather", "content": "sunny"},
        {"role": "tool", "content": "done"},
    ]})
    user, assistant, weather, light = chat_messages(body.messages, "m")
    assert [json.loads(c.arguments) for c in assistant.tool_calls] == [{"room": "hall"}, {"city": "Oslo"}]
    assert weather.tool_call_id == assistant.tool_calls[1].id and weather.name == "weather"
    assert light.tool_call_id == assistant.tool_calls[0].id and user.tool_call_id is None


def test_num_ctx_and_num_predict_are_clamped_and_reported() -> None:
    def max_tokens(options: dict[str, object]) -> tuple[int, list[str]]:
        limits = Limits(max_tokens=256, slot_context=512)
        body = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                           "options": options})
        return chat_request(body, "m", limits).sampling.max_tokens, limits.clamped

    assert max_tokens({}) == (256, [])
    assert max_tokens({"num_predict": -1}) == (256, [])
    assert max_tokens({"num_predict": 10}) == (10, [])
    assert max_tokens({"num_predict": 1000}) == (256, ["num_predict=1000->256"])
    assert max_tokens({"num_ctx": 8192.0}) == (256, ["num_ctx=8192->512"])
    assert max_tokens({"num_ctx": 100}) == (100, [])  # a generation never outgrows the window asked for
