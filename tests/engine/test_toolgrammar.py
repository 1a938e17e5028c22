"""Tool-call grammars: digit-range splitting (exhaustively), and llama.cpp's own grammar engine on real strings."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.engine.grammar import MAX_DEPTH
from edge_runtime.engine.sampling import Sampler
from edge_runtime.engine.toolgrammar import MAX_CALLS, MAX_DIGITS, IntRange, call_grammar, int_range
from edge_runtime.engine.tools import FORMATS, Tool, parse_tools, tool_use
from edge_runtime.engine.types import SamplingParams
from edge_runtime.errors import InvalidRequest

HERMES = FORMATS["hermes"]
Accepts = Callable[[str, str], bool]


def regex(r: IntRange) -> re.Pattern[str]:
    """The same digit patterns as the GBNF, written as a Python regex."""
    def alts(items: tuple[tuple[tuple[int, int, int, int], ...], ...]) -> str:
        return "|".join("".join(f"[{lo}-{hi}]{{{least},{most}}}" for lo, hi, least, most in alt) for alt in items)

    parts = ([f"-(?:{alts(r.negative)})"] if r.negative else []) + ([f"(?:{alts(r.nonnegative)})"]
                                                                      if r.nonnegative else [])
    return re.compile("|".join(parts))


PAIRS = [(lo, hi) for lo in (-1234, -1000, -999, -101, -100, -37, -10, -9, -1, 0, 1, 7, 9, 10, 16, 99, 100, 101, 999)
         for hi in (-1000, -100, -11, -1, 0, 5, 9, 10, 30, 99, 100, 255, 999, 1000, 1099, 1234) if lo <= hi]


@pytest.mark.parametrize(("lo", "hi"), PAIRS)
def test_int_range_matches_exactly_the_integers_in_range(lo: int, hi: int) -> None:
    r = int_range(lo, hi)
    assert r is not None
    pattern = regex(r)
    for x in range(lo - 150, hi + 150):
        assert bool(pattern.fullmatch(str(x))) == (lo <= x <= hi), x
    # Never a leading zero, a "-0" or a "+"; a range is written once (no ambiguity for the sampler).
    for text in ("00", "01", "-0", "+1", "007", "-01"):
        assert not pattern.fullmatch(text)


@pytest.mark.parametrize("bound", [-1234, -100, -37, -1, 0, 1, 9, 10, 16, 999])
def test_one_sided_ranges(bound: int) -> None:
    at_least, at_most = regex(int_range(bound, None) or IntRange((), ())), regex(
        int_range(None, bound) or IntRange((), ()))
    for x in range(-2000, 2000):
        assert bool(at_least.fullmatch(str(x))) == (x >= bound), x
        assert bool(at_most.fullmatch(str(x))) == (x <= bound), x
    # The open side reaches as far as the converter's own integers (MAX_DIGITS digits) and no further.
    big = 10 ** MAX_DIGITS - 1
    assert at_least.fullmatch(str(big)) and not at_least.fullmatch(str(big + 1))
    assert at_most.fullmatch(str(-big)) and not at_most.fullmatch(str(-big - 1))


def test_int_range_edges() -> None:
    assert int_range(5, 4) is None
    assert int_range(10 ** MAX_DIGITS, None) is None  # nothing the rule could write: the caller falls back
    huge = int_range(-(10 ** 20), 10 ** 20)  # bounds beyond what is written constrain nothing
    assert huge == int_range(None, None)
    one = int_range(16, 30)
    assert one is not None and one.nonnegative == (((1, 1, 1, 1), (6, 9, 1, 1)), ((2, 2, 1, 1), (0, 9, 1, 1)),
                                                   ((3, 3, 1, 1), (0, 0, 1, 1)))


# -- llama.cpp's grammar engine


@pytest.fixture(scope="module")
def vocab(smollm2_path: Path) -> Iterator[tuple[Any, Any]]:
    """SmolLM2's vocabulary only (no weights): what llama_sampler_init_grammar needs."""
    from edge_runtime.engine.native import import_llama

    lib = import_llama()
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(smollm2_path).encode(), params)
    assert model
    yield lib, lib.llama_model_get_vocab(model)
    lib.llama_model_free(model)


@pytest.fixture(scope="module")
def accepts(vocab: tuple[Any, Any]) -> Accepts:
    """accepts(grammar, text): llama.cpp parses the grammar (non-NULL sampler) and lets the text's tokens through,
    then end-of-generation (the grammar is complete)."""
    lib, voc = vocab
    eog = lib.llama_vocab_eos(voc)
    n_vocab = int(lib.llama_vocab_n_tokens(voc))

    def tokens(text: str) -> list[int]:
        data = text.encode()
        buf = (lib.llama_token * (len(data) + 8))()
        n = lib.llama_tokenize(voc, data, len(data), buf, len(data) + 8, False, False)
        assert n >= 0
        return list(buf[:n])

    def check(grammar: str, text: str) -> bool:
        # The engine's own check-then-accept (accepting a token the grammar refuses would abort the process);
        # InvalidRequest if llama.cpp's parser rejects the grammar.
        sampler = Sampler(lib, voc, SamplingParams(temperature=0.0), grammar, n_vocab=n_vocab, n_ctx=64)
        try:
            return all(sampler.accepts(token) for token in [*tokens(text), eog])
        finally:
            sampler.free()

    return check


def tools_of(*functions: dict[str, Any]) -> tuple[Tool, ...]:
    return parse_tools([{"type": "function", "function": f} for f in functions])


def block(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def one_tool_grammar(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> str:
    schema = {"type": "object", "properties": properties, "required": required or [], **extra}
    use = tool_use(tools_of({"name": "f", "parameters": schema}), "required", False)
    assert use is not None
    return call_grammar(use, HERMES, after_open=False)


def test_the_taught_block_is_accepted_and_the_grammar_ends_after_it(accepts: Accepts) -> None:
    g = one_tool_grammar({"city": {"type": "string"}}, ["city"])
    assert accepts(g, block("f", '{"city": "Paris"}'))
    assert accepts(g, '<tool_call>{"name":"f","arguments":{"city":"Paris"}}</tool_call>')  # spaces optional
    assert not accepts(g, block("f", '{"city": "Paris"}') + " ok")  # nothing after the last block
    assert not accepts(g, block("f", "{}"))  # a required property
    assert not accepts(g, block("g", '{"city": "Paris"}'))  # an unknown name
    assert not accepts(g, 'Sure. ' + block("f", '{"city": "Paris"}'))  # required: the call comes first
    assert not accepts(g, '<tool_call>\n\n\n{"name": "f", "arguments": {"city": "x"}}\n</tool_call>')  # bounded


@pytest.mark.parametrize(("schema", "good", "bad"), [
    ({"type": "integer", "minimum": 16, "maximum": 30}, ["16", "23", "30"], ["15", "31", "160", "-16", "16.5"]),
    ({"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 5}, ["-4", "0", "4"], ["-5", "5", "-0"]),
    ({"type": "integer", "minimum": -40}, ["-40", "-1", "0", "123456"], ["-41", "-400"]),
    ({"type": "integer", "maximum": -3}, ["-3", "-999"], ["-2", "0", "3"]),
    ({"type": "integer", "minimum": 0.5, "maximum": 2.5}, ["1", "2"], ["0", "3"]),
    ({"type": "number", "minimum": -5.5, "maximum": 30}, ["-5", "-4.75", "0.125", "29.999999", "30"],
     ["30.5", "31", "-6", "-5.5", "1e3", "1.1234567"]),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, ["1", "0.5"], ["0", "0.0", "-0.5", "1.5"]),
    ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, ["0.5", "0.000001"], ["0", "1", "0.000"]),
    ({"type": "number", "minimum": -1, "maximum": 1}, ["-1", "-0.5", "0", "0.25", "1"], ["-1.5", "1.5"]),
    ({"type": "number", "minimum": -3, "exclusiveMaximum": 0}, ["-0.5", "-2.5", "-3"], ["0", "-0.0", "-3.5"]),
    ({"type": "number", "minimum": 0.1, "maximum": 0.9}, ["0.5", "7", "1e5"], ["x"]),  # no integer: unbounded
    ({"type": ["integer", "null"], "minimum": 1, "maximum": 3}, ["null", "2"], ["0", "4"]),
    ({"enum": ["c", "f", 3]}, ['"c"', "3"], ['"k"', "4"]),
    ({"type": "string", "pattern": "^[a-z]{2}$"}, ['"ab"'], ['"abc"', '"A1"']),
    ({"type": "string", "pattern": "[a-z]+"}, ['"1a2"'], ["1"]),  # unanchored: left to validation
    ({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 6}, "minItems": 1, "maxItems": 3},
     ["[1]", "[1, 6, 3]"], ["[]", "[7]", "[1, 2, 3, 4]"]),
    ({"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
      "required": ["lat"], "additionalProperties": False}, ['{"lat": -33.5}'], ['{"lat": 91}', "{}"]),
])
def test_argument_values_follow_the_schema(accepts: Accepts, schema: dict[str, Any], good: list[str],
                                           bad: list[str]) -> None:
    g = one_tool_grammar({"v": schema}, ["v"])
    for value in good:
        assert accepts(g, block("f", f'{{"v": {value}}}')), value
    for value in bad:
        assert not accepts(g, block("f", f'{{"v": {value}}}')), value


def test_every_accepted_bounded_number_is_in_range(accepts: Accepts) -> None:
    # Soundness of the number subset: whatever the grammar lets through lies inside the bounds.
    cases = [({"minimum": -2.5, "maximum": 3.25}, lambda x: -2.5 <= x <= 3.25),
             ({"exclusiveMinimum": -2, "exclusiveMaximum": 3}, lambda x: -2 < x < 3),
             ({"minimum": 1.5}, lambda x: x >= 1.5),
             ({"exclusiveMaximum": -1}, lambda x: x < -1)]
    candidates = ["-4", "-3", "-2.9", "-2.5", "-2.25", "-2", "-1.999", "-1.5", "-1", "-0.5", "0", "0.5", "1", "1.5",
                  "2", "2.999999", "3", "3.25", "3.5", "4", "-1.0"]
    for bounds, inside in cases:
        g = one_tool_grammar({"v": {"type": "number", **bounds}}, ["v"])
        accepted = [c for c in candidates if accepts(g, block("f", f'{{"v": {c}}}'))]
        assert accepted and all(inside(float(c)) for c in accepted), (bounds, accepted)


def test_nested_objects_required_fields_and_defs(accepts: Accepts) -> None:
    g = one_tool_grammar({
        "where": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/Unit"}},
                  "required": ["city"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    }, ["where"], **{"$defs": {"Unit": {"enum": ["celsius", "fahrenheit"]}}})
    assert accepts(g, block("f", '{"where": {"city": "Oslo", "unit": "celsius"}, "days": 3}'))
    assert accepts(g, block("f", '{"where": {"city": "Oslo"}}'))
    assert not accepts(g, block("f", '{"where": {"unit": "celsius"}}'))
    assert not accepts(g, block("f", '{"where": {"city": "Oslo", "unit": "kelvin"}}'))
    assert not accepts(g, block("f", '{"where": {"city": "Oslo"}, "days": 8}'))


def test_two_tools_with_the_same_def_name_keep_their_own_definitions(accepts: Accepts) -> None:
    tools = tools_of(
        {"name": "a", "parameters": {"type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}},
                                     "required": ["u"], "$defs": {"Unit": {"enum": ["c", "f"]}}}},
        {"name": "b", "parameters": {"type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}},
                                     "required": ["u"], "$defs": {"Unit": {"type": "integer", "minimum": 16,
                                                                           "maximum": 30}}}})
    use = tool_use(tools, "required", False)
    assert use is not None
    g = call_grammar(use, HERMES, after_open=False)
    assert accepts(g, block("a", '{"u": "c"}')) and accepts(g, block("b", '{"u": 20}'))
    assert not accepts(g, block("a", '{"u": 20}')) and not accepts(g, block("b", '{"u": "c"}'))
    assert not accepts(g, block("b", '{"u": 31}'))
    # The tools' parameters are not touched by the converter (it rewrites $ref values in place).
    assert tools[0].parameters["properties"]["u"] == {"$ref": "#/$defs/Unit"}


def test_recursive_defs_are_accepted(accepts: Accepts) -> None:
    g = one_tool_grammar({"tree": {"$ref": "#/$defs/Node"}}, ["tree"], **{"$defs": {"Node": {
        "type": "object", "properties": {"v": {"type": "integer"},
                                         "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
        "required": ["v"]}}})
    assert accepts(g, block("f", '{"tree": {"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}}'))
    assert not accepts(g, block("f", '{"tree": {"kids": []}}'))


def weather_and_time() -> tuple[Tool, ...]:
    return tools_of(
        {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                               "required": ["city"]}},
        {"name": "get_time", "parameters": {}})


def test_named_required_and_parallel_shapes(accepts: Accepts) -> None:
    tools = weather_and_time()
    weather, now = block("get_weather", '{"city": "Oslo"}'), block("get_time", "{}")
    named = tool_use(tools, {"type": "function", "function": {"name": "get_time"}}, False)
    required = tool_use(tools, "required", False)
    parallel = tool_use(tools, "required", True)
    assert named is not None and required is not None and parallel is not None
    g_named, g_required, g_parallel = (call_grammar(u, HERMES, after_open=False) for u in (named, required, parallel))
    assert accepts(g_named, now) and not accepts(g_named, weather)
    assert accepts(g_required, now) and accepts(g_required, weather)
    assert not accepts(g_required, weather + "\n" + now)
    assert accepts(g_parallel, weather + "\n" + now) and accepts(g_parallel, weather + now)
    assert accepts(g_parallel, "\n".join([now] * MAX_CALLS))
    assert not accepts(g_parallel, "\n".join([now] * (MAX_CALLS + 1)))  # a looping model is stopped


def test_after_open_starts_right_after_the_marker(accepts: Accepts) -> None:
    use = tool_use(weather_and_time(), "auto", True)
    assert use is not None
    g = call_grammar(use, HERMES, after_open=True)
    rest = '\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert accepts(g, rest)
    assert accepts(g, rest + "\n" + block("get_weather", '{"city": "Rome"}'))
    assert not accepts(g, "<tool_call>" + rest)


def test_a_schema_the_converter_cannot_take_is_a_bad_request() -> None:
    use = tool_use((Tool("f", "", {"type": "object", "properties": {"a": {"type": "frobnicate"}}}),), "required",
                   True)
    assert use is not None
    with pytest.raises(InvalidRequest, match="parameters of f cannot be turned into a grammar") as info:
        call_grammar(use, HERMES, after_open=False)
    assert info.value.param == "tools"


def test_a_grammar_too_deep_for_llama_cpp_is_refused_before_it_gets_there() -> None:
    use = tool_use(tools_of({"name": "f", "parameters": {"type": "object", "properties": {
        "text": {"type": "string", "maxLength": MAX_DEPTH + 10}}}}), "required", True)
    assert use is not None
    with pytest.raises(InvalidRequest, match="nests") as info:
        call_grammar(use, HERMES, after_open=False)
    assert info.value.param == "tools"


def test_many_tools_make_one_grammar_llama_cpp_parses(accepts: Accepts) -> None:
    functions = [{"name": f"tool_{i}", "description": "x", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": -i, "maximum": i * 7},
                                         "s": {"enum": [str(i), "x"]}, "opt": {"type": "boolean"}},
        "required": ["n"]}} for i in range(20)]
    use = tool_use(tools_of(*functions), "auto", True)
    assert use is not None
    g = call_grammar(use, HERMES, after_open=True)
    assert accepts(g, '{"name": "tool_13", "arguments": {"n": -13, "s": "x"}}</tool_call>')
    assert not accepts(g, '{"name": "tool_13", "arguments": {"n": -14}}</tool_call>')
    assert json.dumps(g)  # plain text, no surprises
