"""Tool definitions, tool_choice, template detection, the generic prompt section and history rendering."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_runtime.engine.toolparse import CallParser
from edge_runtime.engine.tools import (
    FORMATS,
    Tool,
    ToolCall,
    ToolUse,
    native_format,
    new_call_id,
    openai_tools,
    parse_tools,
    plain_history,
    template_messages,
    tool_prompt,
    tool_use,
)
from edge_runtime.engine.types import ChatMessage
from edge_runtime.errors import InvalidRequest

HERMES = FORMATS["hermes"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def fn(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", **function}}


def test_parse_tools_keeps_name_description_and_a_private_schema() -> None:
    raw = [WEATHER, TIME, fn(parameters={})]
    weather, now, empty = parse_tools(raw)
    assert weather == Tool("get_weather", "Current weather in a city", WEATHER["function"]["parameters"])
    assert weather.parameters is not WEATHER["function"]["parameters"]  # the request's dict may change later
    assert now == Tool("get_time", "", {"type": "object", "properties": {}})
    assert empty.parameters == {"type": "object", "properties": {}}
    json.dumps([dict(t.parameters) for t in (weather, now, empty)])


@pytest.mark.parametrize(("raw", "param", "message"), [
    ({"type": "function"}, "tools", "array"),
    ([WEATHER] * 65, "tools", "at most 64"),
    ([WEATHER, "x"], "tools[1]", "must be an object"),
    ([{"type": "retrieval"}], "tools[0].type", "'function'"),
    ([{"type": "function"}], "tools[0].function", "must be an object"),
    ([TIME, fn(name="get weather")], "tools[1].function.name", "1-64 characters"),
    ([fn(name="x" * 65)], "tools[0].function.name", "1-64 characters"),
    ([fn(name=None)], "tools[0].function.name", "1-64 characters"),
    ([TIME, WEATHER, TIME], "tools[2].function.name", "used twice"),
    ([fn(description=5)], "tools[0].function.description", "string"),
    ([TIME, fn(parameters={"type": "array"})], "tools[1].function.parameters", '"type": "object"'),
    ([fn(parameters=[1])], "tools[0].function.parameters", '"type": "object"'),
    ([fn(parameters={"type": "object", "properties": {"a": {"type": "frobnicate"}}})],
     "tools[0].function.parameters", "not a valid JSON schema"),
    ([fn(parameters={"type": "object", "required": "a"})], "tools[0].function.parameters", "not a valid JSON"),
    ([fn(parameters={"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}})],
     "tools[0].function.parameters", "only local $ref"),
    ([fn(parameters={"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a{0,100}){0,100}$"}}})],
     "tools[0].function.parameters", "repeats up to 10000 times"),
])
def test_invalid_tool_definitions_name_their_path(raw: Any, param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_tools(raw)
    assert info.value.param == param
    assert message in str(info.value) and str(info.value).startswith(param)


def test_tool_choice() -> None:
    tools = parse_tools([WEATHER, TIME])
    assert tool_use(tools, None, None) == ToolUse(tools, "auto", None, True)
    assert tool_use(tools, "auto", False) == ToolUse(tools, "auto", None, False)
    assert tool_use(tools, "required", True) == ToolUse(tools, "required", None, True)
    assert tool_use(tools, {"type": "function", "function": {"name": "get_time"}}, None) == \
        ToolUse(tools, "named", "get_time", False)  # one call of a named tool, whatever parallel says
    assert tool_use(tools, "none", None) is None
    assert tool_use((), None, None) is None and tool_use((), "auto", None) is None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_a_call_cannot_be_required_without_tools(choice: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        tool_use((), choice, None)
    assert info.value.param == "tool_choice"


@pytest.mark.parametrize("choice", ["always", {"type": "function", "function": {"name": "get_stock"}},
                                    {"type": "function"}, {"type": "allowed_tools"}, 3])
def test_a_wrong_tool_choice_is_a_bad_request(choice: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        tool_use(parse_tools([WEATHER, TIME]), choice, None)
    assert info.value.param == "tool_choice"


QWEN_LIKE = """{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}{%- for tool in tools %}
{{- '\\n' + tool | tojson }}{%- endfor %}{{- '\\n</tools>\\nCall them as <tool_call>\\n{"name": <name>, "arguments": \
<args>}\\n</tool_call><|im_end|>\\n' }}{%- endif %}
{%- for message in messages %}{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for call in message.tool_calls %}{%- set call = call.function %}
{{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' + call.arguments | tojson + '}\\n</tool_call>' }}
{%- endfor %}{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}\
{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}
{%- endfor %}"""
SMOLLM2 = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
           "'<|im_end|>' + '\\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.mark.parametrize(("source", "native"), [
    (QWEN_LIKE, True),
    ("{% if tools is defined and tools %}{{ '<tool_call>' }}{% endif %}", True),
    (SMOLLM2, False),
    (None, False),
    ("", False),
    # "tools" said in text, not used as a variable: the template renders no tools.
    ("{{ 'You have tools: use <tool_call>' }}{% for m in messages %}{{ m.content }}{% endfor %}", False),
    ("{% if xml_tools %}{{ '<tool_call>' }}{% endif %}", False),  # SmolLM3's own variable, which we do not pass
    ("{% for t in tools %}{{ t | tojson }}{% endfor %}", False),  # tools, but no known call format
])
def test_native_format(source: str | None, native: bool) -> None:
    assert native_format(source) == (HERMES if native else None)


def test_tool_prompt_is_short_and_shows_the_exact_syntax() -> None:
    tools = parse_tools([WEATHER, TIME])
    auto = tool_prompt(ToolUse(tools, "auto"), HERMES)
    assert '{"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", ' \
           '"properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, ' \
           '"required": ["city"]}}' in auto.splitlines()
    assert '<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>' in auto
    assert "plain text" in auto and "must" not in auto
    required = tool_prompt(ToolUse(tools, "required", parallel=False), HERMES)
    assert "You must call a tool" in required and "plain text" not in required and "one per call" not in required
    named = tool_prompt(ToolUse(tools, "named", "get_time"), HERMES)
    assert "get_weather" not in named and '{"name": "get_time", "arguments": {...}}' in named
    assert "You must call get_time" in named
    assert len(auto) < 700  # every token costs on a 2-core board


def history() -> list[ChatMessage]:
    calls = (ToolCall("call_1", "get_weather", '{"city":"Paris",  "unit": "celsius"}'),
             ToolCall("call_2", "get_time", "not json"))
    return [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Weather in Paris, and the time?"),
        ChatMessage("assistant", "Checking.", tool_calls=calls),
        ChatMessage("tool", '{"temp": 21}', tool_call_id="call_1"),
        ChatMessage("tool", "12:00", tool_call_id="call_2"),
        ChatMessage("tool", "orphan", tool_call_id="call_9", name="get_stock"),
        ChatMessage("user", "Thanks"),
    ]


def test_plain_history_writes_calls_and_results_as_the_prompt_teaches() -> None:
    out = plain_history(history(), HERMES)
    assert [m.role for m in out] == ["system", "user", "assistant", "user", "user"]
    assert out[0] == history()[0] and out[-1] == history()[-1]
    assert out[2] == ChatMessage("assistant", 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                              '{"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n'
                                              '{"name": "get_time", "arguments": "not json"}\n</tool_call>')
    assert out[3].content == ('<tool_response>\n{"name": "get_weather", "content": {"temp": 21}}\n</tool_response>\n'
                              '<tool_response>\n{"name": "get_time", "content": "12:00"}\n</tool_response>\n'
                              '<tool_response>\n{"name": "get_stock", "content": "orphan"}\n</tool_response>')
    assert all(not m.tool_calls for m in out)


def test_plain_history_round_trips_through_the_parser() -> None:
    tools = parse_tools([WEATHER, TIME])
    assistant = plain_history(history(), HERMES)[2]
    parser = CallParser(HERMES, tools)
    parser.feed(assistant.content)
    parser.finish()
    assert parser.content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", "not json")]
    only_calls = plain_history([ChatMessage("assistant", "", tool_calls=(ToolCall("c", "get_time", "{}"),))],
                               HERMES)
    assert only_calls[0].content == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


def test_template_messages_are_what_hf_templates_expect() -> None:
    out = template_messages(history())
    assert out[0] == {"role": "system", "content": "Be brief."}
    assert out[2] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "Paris", "unit": "celsius"}}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}]}
    assert out[3] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}
    assert out[5] == {"role": "tool", "content": "orphan", "tool_call_id": "call_9", "name": "get_stock"}
    assert out[6] == {"role": "user", "content": "Thanks"}


def test_a_native_template_renders_tools_calls_and_results_and_the_parser_reads_the_calls_back() -> None:
    tools = parse_tools([WEATHER, TIME])
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v: json.dumps(v, ensure_ascii=False)
    text = env.from_string(QWEN_LIKE).render(messages=template_messages(history()[:5]), tools=openai_tools(tools))
    assert '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", ' \
           '"parameters": {"type": "object"' in text
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
            in text)
    assert "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n<tool_response>\n12:00\n" in text
    assistant = re.search(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", text, re.DOTALL)
    assert assistant is not None
    parser = CallParser(HERMES, tools)
    parser.feed(assistant.group(1))
    parser.finish()
    assert [(c.name, c.error is None) for c in parser.calls] == [("get_weather", True), ("get_time", False)]


def test_openai_tools_and_call_ids() -> None:
    tools = parse_tools([WEATHER, TIME])
    assert openai_tools(tools) == [
        WEATHER, {"type": "function", "function": {"name": "get_time", "description": "",
                                                   "parameters": {"type": "object", "properties": {}}}}]
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)
