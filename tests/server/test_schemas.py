"""OpenAI request bodies -> engine requests: strict types, limits, unsupported features, error bodies."""
from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from edge_runtime.config import Settings
from edge_runtime.engine.types import ChatMessage, SamplingParams
from edge_runtime.errors import EngineBusy, EngineError, InvalidRequest, RegistryError
from edge_runtime.server.errors import from_clawd, from_validation
from edge_runtime.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_request,
    completion_request,
)

SETTINGS = Settings().replace(**{"server.max_tokens": 512})
USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields})


def test_defaults_keep_engine_sampling_defaults_and_server_token_limit() -> None:
    request = chat_request(chat(), SETTINGS)
    assert request.messages == (ChatMessage("user", "hi"),)
    assert request.sampling == SamplingParams(max_tokens=512)


def test_openai_fields_map_onto_sampling_params() -> None:
    body = chat(max_tokens=7, temperature=0, top_p=0.5, top_k=3, min_p=0.1, frequency_penalty=0.5,
                presence_penalty=-0.5, repeat_penalty=1.1, seed=42, stop="\n")
    s = chat_request(body, SETTINGS).sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p) == (7, 0, 0.5, 3, 0.1)
    assert (s.frequency_penalty, s.presence_penalty, s.repeat_penalty, s.seed, s.stop) == \
        (0.5, -0.5, 1.1, 42, ("\n",))


def test_max_completion_tokens_wins_and_negative_seed_folds_to_uint32() -> None:
    s = chat_request(chat(max_tokens=9, max_completion_tokens=5, seed=-2), SETTINGS).sampling
    assert s.max_tokens == 5
    assert s.seed == 2**32 - 2


def test_content_parts_roles_and_developer_messages() -> None:
    body = ChatCompletionRequest.model_validate({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ]})
    assert chat_request(body, SETTINGS).messages == (
        ChatMessage("system", "be brief"), ChatMessage("user", "ab"), ChatMessage("assistant", ""))


def test_response_formats() -> None:
    assert chat_request(chat(response_format={"type": "json_object"}), SETTINGS).sampling.json_schema == \
        {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert chat_request(chat(response_format=fmt), SETTINGS).sampling.json_schema == schema
    assert chat_request(chat(grammar='root ::= "yes"'), SETTINGS).sampling.grammar == 'root ::= "yes"'
    with pytest.raises(InvalidRequest) as info:
        chat_request(chat(response_format={"type": "json_schema"}), SETTINGS)
    assert info.value.param == "response_format.json_schema"


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": 513}, "max_tokens"),
    ({"max_completion_tokens": 10_000}, "max_completion_tokens"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f f"}}]}, "tools[0].function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"logit_bias": {"token": -100}}, "logit_bias"),
    ({"messages": [{"role": "tool", "content": "22"}]}, "messages[0].tool_call_id"),
    ({"grammar": "root ::= x", "response_format": {"type": "json_object"}}, "grammar"),
])
def test_unsupported_or_out_of_limit_fields_name_their_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request(chat(**fields), SETTINGS)
    assert info.value.param == param


@pytest.mark.parametrize("fields", [
    {"max_tokens": "5"}, {"temperature": "hot"}, {"temperature": 3}, {"stream": "yes"}, {"stream": 1},
    {"messages": "hi"}, {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    {"stop": [""]}, {"stop": ["x"] * 17}, {"max_tokens": 0}, {"seed": 1.5}, {"top_p": True},
])
def test_wrong_types_are_rejected_not_coerced(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": USER, **fields})


def test_completions_prompt_forms() -> None:
    assert completion_request(CompletionRequest.model_validate({"prompt": "x"}), SETTINGS).prompt == "x"
    assert completion_request(CompletionRequest.model_validate({"prompt": ["y"]}), SETTINGS).prompt == "y"
    for fields, param in (({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "a", "echo": True}, "echo"),
                          ({"prompt": "a", "suffix": "z"}, "suffix"), ({"prompt": "a", "best_of": 2}, "best_of")):
        with pytest.raises(InvalidRequest) as info:
            completion_request(CompletionRequest.model_validate(fields), SETTINGS)
        assert info.value.param == param
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": [1, 2, 3]})  # token arrays are not supported


def test_error_classes_map_to_openai_statuses() -> None:
    bad = from_clawd(InvalidRequest("prompt too long", param="messages"))
    assert (bad.status, bad.param, bad.type) == (400, "messages", "invalid_request_error")
    assert from_clawd(RegistryError("no such model")).code == "model_not_found"
    assert from_clawd(RegistryError("no such model")).status == 404
    busy = from_clawd(EngineBusy("full"))
    assert (busy.status, dict(busy.headers)["Retry-After"]) == (503, "1")
    failed = from_clawd(EngineError("decode failed"))
    assert failed.status == 500
    assert failed.body() == {"error": {"message": "decode failed", "type": "server_error", "param": None,
                                       "code": "EngineError"}}


def test_validation_errors_become_400_with_the_field_path() -> None:
    try:
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": 5}]})
    except ValidationError as exc:
        error = from_validation(exc.errors())
    assert error.status == 400
    assert error.param is not None and error.param.startswith("messages[0].content")
    json_error = from_validation([{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error",
                                   "ctx": {"error": "Expecting value"}}])
    assert json_error.code == "invalid_json"
    form = from_validation([{"type": "model_attributes_type", "loc": ("body",), "msg": "x"}],
                           "application/x-www-form-urlencoded")
    assert "Content-Type: application/json" in form.message


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_fast_token_events_equal_the_general_renderer(chat: bool, include_usage: bool) -> None:
    from edge_runtime.server.generation import Generation, Shape
    from edge_runtime.server.middleware import RequestRecord

    gen = Generation(engine=None, metrics=None, record=RequestRecord(),  # type: ignore[arg-type]
                     shape=Shape(chat, "m", include_usage), request=None, start=0.0)  # type: ignore[arg-type]
    render = gen.text_event()
    for text in ("Hello", ' "quoted" \\ \n', "한국어 ✓", "", "\ue000"):
        assert render(text) == gen._event(text=text)
        body = json.loads(render(text).removeprefix(b"data: "))
        assert (body["choices"][0]["delta"]["content"] if chat else body["choices"][0]["text"]) == text
