"""The streaming call parser: events as text arrives, any chunking, robustness, and schema validation of calls."""
from __future__ import annotations

import json
import random
import re
import time

import pytest

from edge_runtime.engine.toolparse import ArgsDelta, CallParser, CallStart, Event, ParsedCall, TextDelta
from edge_runtime.engine.tools import FORMATS, parse_tools

HERMES = FORMATS["hermes"]
TOOLS = parse_tools([
    {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
        "type": "object", "properties": {
            "city": {"type": "string"},
            "temperature": {"type": "number", "minimum": -50, "maximum": 30},
            "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["city"], "$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "get_time"}},
])


def block(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def run(chunks: list[str]) -> tuple[list[Event], CallParser]:
    parser = CallParser(HERMES, TOOLS)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish()
    return events, parser


def normal(events: list[Event]) -> list[tuple[str, object, str]]:
    """Events with adjacent text (and arguments of one call) merged: what any chunking must produce."""
    out: list[tuple[str, object, str]] = []
    for e in events:
        if isinstance(e, TextDelta):
            assert e.text
            item: tuple[str, object, str] = ("text", None, e.text)
        elif isinstance(e, ArgsDelta):
            assert e.text
            item = ("args", e.index, e.text)
        else:
            item = ("call", e.index, e.name)
        if out and item[0] != "call" and out[-1][:2] == item[:2]:
            out[-1] = (item[0], item[1], out[-1][2] + item[2])
        else:
            out.append(item)
    return out


def calls_of(parser: CallParser) -> list[tuple[str, str, str | None]]:
    return [(c.name, c.arguments, c.error) for c in parser.calls]


def test_plain_text_passes_through() -> None:
    events, parser = run(["Paris is the capital ", "of France.\n"])
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Paris is the capital of France.\n"
    assert parser.calls == [] and parser.content == "Paris is the capital of France.\n"


def test_text_then_a_call() -> None:
    events, parser = run(["Let me check.\n\n" + block("get_weather", '{"city": "Paris", "unit": "celsius"}')])
    assert normal(events) == [("text", None, "Let me check."), ("call", 0, "get_weather"),
                              ("args", 0, '{"city": "Paris", "unit": "celsius"}')]
    call = parser.calls[0]
    assert call.error is None and call.arguments == '{"city": "Paris", "unit": "celsius"}'
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.id)
    assert next(e for e in events if isinstance(e, CallStart)).id == call.id
    assert parser.content == "Let me check."  # the whitespace before the call is not part of the answer


def test_events_come_as_soon_as_they_are_known() -> None:
    parser = CallParser(HERMES, TOOLS)
    assert parser.feed("Sure <tool") == [TextDelta("Sure")]  # the space and a possible marker are held back
    assert parser.feed('_call>\n{"name": "get_wea') == []
    events = parser.feed('ther", "arguments": {"ci')
    assert [type(e) for e in events] == [CallStart, ArgsDelta] and events[1] == ArgsDelta(0, '{"ci')
    assert parser.feed('ty": "Oslo"}') == [ArgsDelta(0, 'ty": "Oslo"}')]
    assert parser.feed("}\n</tool_call>") == []  # the outer brace and the marker are swallowed
    assert parser.finish() == []
    assert calls_of(parser) == [("get_weather", '{"city": "Oslo"}', None)]


def test_a_held_back_prefix_that_is_not_a_marker_is_text_after_all() -> None:
    parser = CallParser(HERMES, TOOLS)
    assert parser.feed("a <tool") == [TextDelta("a")]
    assert parser.feed("box> b") == [TextDelta(" <toolbox> b")]
    assert parser.feed(" <tool_c") == []
    assert parser.finish() == [TextDelta(" <tool_c")]  # a partial marker at the very end is text
    assert parser.content == "a <toolbox> b <tool_c" and parser.calls == []


def test_parallel_calls_have_their_own_index() -> None:
    text = block("get_time", "{}") + "\n" + block("get_weather", '{"city": "Rome"}')
    events, parser = run([text])
    assert normal(events) == [("call", 0, "get_time"), ("args", 0, "{}"), ("call", 1, "get_weather"),
                              ("args", 1, '{"city": "Rome"}')]
    assert [c.error for c in parser.calls] == [None, None] and parser.content == ""
    assert len({c.id for c in parser.calls}) == 2


@pytest.mark.parametrize(("arguments", "error"), [
    ('{"city": "Oslo", "temperature": 35}', "arguments.temperature: 35 is greater than the maximum of 30"),
    ('{"city": "Oslo", "unit": "kelvin"}', "arguments.unit: 'kelvin' is not one of ['celsius', 'fahrenheit']"),
    ('{"temperature": 3}', "arguments: 'city' is a required property"),
    ('{"city": 5}', "arguments.city: 5 is not of type 'string'"),
    ('"Oslo"', "arguments must be a JSON object"),
    ('{"city": "Oslo",}', "the call is not valid JSON"),
    ('{"city": NaN}', "the call is not valid JSON"),
])
def test_arguments_that_do_not_match_the_schema(arguments: str, error: str) -> None:
    _, parser = run([block("get_weather", arguments)])
    [call] = parser.calls
    assert call.error is not None and call.error.startswith(error), call.error
    assert "\n" not in call.error


def test_unknown_tool_missing_name_and_missing_arguments() -> None:
    _, parser = run([block("get_stock", "{}"), '<tool_call>{"arguments": {}}</tool_call>',
                     '<tool_call>{"name": "get_time"}</tool_call>', '<tool_call>{"name": "get_weather"}</tool_call>'])
    assert calls_of(parser) == [
        ("get_stock", "{}", "there is no tool named 'get_stock'"),
        ("", "{}", 'the call has no "name" string'),
        ("get_time", "{}", None),  # no arguments at all: an empty object
        ("get_weather", "{}", "arguments: 'city' is a required property"),
    ]


def test_an_incomplete_call_at_the_end_is_an_error() -> None:
    events, parser = run(['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os'])
    assert normal(events) == [("call", 0, "get_weather"), ("args", 0, '{"city": "Os')]
    assert calls_of(parser) == [("get_weather", '{"city": "Os', "the output ended inside the call")]
    _, parser = run(["<tool_call>\n"])
    assert calls_of(parser) == [("", "{}", "the output ended inside the call")]


def test_a_complete_call_whose_close_marker_was_cut_off_counts() -> None:
    _, parser = run([block("get_time", "{}")[:-5]])
    assert calls_of(parser) == [("get_time", "{}", None)]


def test_arguments_before_the_name_are_sent_after_it() -> None:
    events, parser = run(['<tool_call>{"arguments": {"city": "Lima"}, "name": "get_weather"}</tool_call>'])
    assert normal(events) == [("call", 0, "get_weather"), ("args", 0, '{"city": "Lima"}')]
    assert calls_of(parser) == [("get_weather", '{"city": "Lima"}', None)]


def test_strings_may_hold_markers_braces_escapes_and_unicode() -> None:
    arguments = '{"city": "</tool_call> }{ \\" \\\\ \\u00e9 Zürich 東京 🌧"}'
    events, parser = run([block("get_weather", arguments)])
    assert calls_of(parser) == [("get_weather", arguments, None)]
    assert json.loads(parser.calls[0].arguments)["city"] == '</tool_call> }{ " \\ é Zürich 東京 🌧'
    assert normal(events)[-1] == ("args", 0, arguments)


def test_garbage_inside_markers_is_one_failed_call_and_the_text_after_it_stays() -> None:
    events, parser = run(["Hi <tool_call> oops, no JSON </tool_call> Bye"])
    assert normal(events) == [("text", None, "Hi"), ("text", None, "Bye")] or \
        normal(events) == [("text", None, "HiBye")]
    assert parser.content == "HiBye"
    [call] = parser.calls
    assert call.error == "<tool_call> is not followed by a JSON object"


def test_a_lone_marker_and_two_markers_in_a_row() -> None:
    _, parser = run(["<tool_call>"])
    assert [c.error for c in parser.calls] == ["the output ended inside the call"]
    _, parser = run(["<tool_call>\n<tool_call>\n" + block("get_time", "{}")[len("<tool_call>\n"):]])
    assert calls_of(parser) == [("get_time", "{}", None)]  # the empty first marker is forgiven
    _, parser = run(["<tool_call>{nope<tool_call>" + block("get_time", "{}")[len("<tool_call>"):]])
    assert [c.error for c in parser.calls] == ["the call is not valid JSON", None]


def test_text_after_a_block_without_close_marker_is_text() -> None:
    _, parser = run(['<tool_call>{"name": "get_time", "arguments": {}} Done.'])
    assert calls_of(parser) == [("get_time", "{}", None)]
    assert parser.content == "Done."


CORPUS = [
    "Plain answer, no tools at all.\n\n",
    "Checking.  \n " + block("get_weather", '{"city": "Paris", "temperature": -3.5}') + "\n",
    block("get_time", "{}") + "\n" + block("get_weather", '{"city": "Zürich 🌧"}') + "\n",
    '<tool_call>{"arguments": {"city": "x"}, "name": "get_weather"}</tool_call> trailing words',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "</tool_call>", "nested": {"a": [1, {"b": "}"}]}}}',
    "<tool_call><tool_call> <tool_call>{]}</tool_call></tool_call>< tool_call ><tool_call",
    "a<<tool_call</tool_call>>b<tool_call>\n",
    'x <tool_call>{"name": "get_weather", "arguments": {"city": "Os',
    '<tool_call>{"name": "get\\u005ftime", "arguments": {}}</tool_call><tool_call>{"name": 5, "arguments": 7}',
    '<tool_call>{"name": "get_time", "arguments": {}}<tool_call>{"name": "get_time", "arguments": {}}</tool_c',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "a", "temperature": 1e1, "x": [true, null, -0.5]}}',
]


@pytest.mark.parametrize("text", CORPUS)
def test_any_chunking_gives_the_same_result(text: str) -> None:
    whole_events, whole = run([text])
    expected = (normal(whole_events), calls_of(whole), whole.content)
    assert "".join(e.text for e in whole_events if isinstance(e, TextDelta)) == whole.content
    chars_events, chars = run(list(text))
    assert (normal(chars_events), calls_of(chars), chars.content) == expected
    rng = random.Random(text)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        events, parser = run(pieces)
        assert (normal(events), calls_of(parser), parser.content) == expected, pieces
    # Call ids: one per call, the same in the stream and in the result.
    starts = {e.index: e.id for e in whole_events if isinstance(e, CallStart)}
    assert all(whole.calls[i].id == call_id for i, call_id in starts.items())


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = ["<tool_call>", "</tool_call>", "<", ">", "/", "{", "}", "[", "]", '"', "\\", ":", ",", " ", "\n",
                '"name"', '"arguments"', '"get_time"', "1", "-", "e", "true", "é", "🌧", "\x00"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        whole_events, whole = run([text])
        events, parser = run(list(text))
        assert normal(events) == normal(whole_events) and calls_of(parser) == calls_of(whole)
        assert all(isinstance(c, ParsedCall) for c in parser.calls)


def test_feeding_is_linear() -> None:
    # One character at a time, as a slow stream would: long whitespace, long text, long arguments.
    parts = [" " * 50_000, "word " * 20_000, block("get_weather", json.dumps({"city": "x" * 100_000}))]
    started = time.monotonic()
    parser = CallParser(HERMES, TOOLS)
    for part in parts:
        for c in part:
            parser.feed(c)
    parser.finish()
    assert time.monotonic() - started < 10  # quadratic work would take minutes
    assert [c.error for c in parser.calls] == [None]
