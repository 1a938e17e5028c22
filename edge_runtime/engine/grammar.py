"""A request's GBNF (given, or derived from a JSON schema), bounded before llama.cpp's recursive parser sees it."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from .types import SamplingParams

# llama.cpp parses GBNF by recursion: in an 8 MiB thread stack 15,000 nested groups parsed and 20,000 killed the
# process (SIGSEGV; measured on x86-64, so 420-560 bytes per group; issue: maxLength 30000). 1,024 levels take
# about half a MiB, and still admit a JSON schema string of maxLength ~1,000, which the schema converter writes as
# one nested optional group per character.
MAX_DEPTH = 1024
# Parsing is linear, but the grammar is consulted on every sampled token; 256 KiB is far above any hand-written
# grammar and above what the converter makes for realistic schemas (maxItems 3000 of integers: 62 KiB).
MAX_BYTES = 256 * 1024
# A regex quantifier {m,n} is expanded by copying its atom: nested ones multiply ((a{0,1000}){0,1000} is a
# million copies) before any size check could run, so their product is bounded first.
MAX_REPEAT = 1000


def grammar_text(p: SamplingParams) -> str | None:
    """The GBNF to constrain this request with: the given grammar, or one derived from the JSON schema."""
    if p.grammar:
        check_gbnf(p.grammar, param="grammar")
        return p.grammar
    if p.json_schema is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if not p.json_schema:
        return str(JSON_GBNF)  # an empty schema means "any JSON value" (OpenAI json_object mode)
    check_schema(p.json_schema)
    try:
        text = str(json_schema_to_gbnf(json.dumps(dict(p.json_schema))))
    except Exception as exc:  # noqa: BLE001 - a third-party converter: any failure means this schema is unusable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidRequest(f"json_schema cannot be turned into a grammar: {reason}", param="json_schema") from None
    check_gbnf(text, param="json_schema", hint=" (lower maxLength / maxItems / pattern repetition counts)")
    return text


def check_gbnf(text: str, *, param: str, hint: str = "") -> None:
    """Raise InvalidRequest if `text` is larger or nests deeper than llama.cpp's parser can safely take."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise InvalidRequest(f"{param}: the grammar is {size} bytes; the limit is {MAX_BYTES}{hint}", param=param)
    depth = gbnf_depth(text)
    if depth > MAX_DEPTH:
        raise InvalidRequest(f"{param}: the grammar nests {depth} groups deep; the limit is {MAX_DEPTH}{hint}",
                             param=param)


def gbnf_depth(text: str) -> int:
    """The deepest nesting of ( ) groups in GBNF, skipping "strings", [classes], <tokens> and # comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"[":
            i = _skip_quoted(text, i + 1, '"' if c == '"' else "]")
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def _skip_quoted(text: str, i: int, close: str) -> int:
    """The index after the `close` that ends a literal starting at `i`, honouring backslash escapes."""
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == close:
            return i + 1
        i += 1
    return n


def check_schema(schema: Mapping[str, Any]) -> None:
    """Reject what the converter would mishandle or blow up on: non-local $refs and regexes that expand hugely."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, Mapping):
            continue
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise InvalidRequest(f"json_schema: only local $ref values ('#/...') are supported, not {str(ref)[:80]!r}",
                                 param="json_schema")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            copies = pattern_copies(pattern)
            if copies > MAX_REPEAT:
                raise InvalidRequest(f"json_schema: pattern {pattern[:60]!r} repeats up to {copies} times; the "
                                     f"limit is {MAX_REPEAT}", param="json_schema")
        stack.extend(node.values())


def pattern_copies(pattern: str) -> int:
    """The most copies of one atom the converter writes for `pattern`: nested {m,n} bounds multiply."""
    groups = [1]  # the largest product inside each open group
    last = 1  # the cost of the atom before the current position (a quantifier multiplies it)
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            last, i = 1, i + 2
            continue
        if c == "[":
            last, i = 1, _skip_quoted(pattern, i + 1, "]")
            continue
        if c == "(":
            groups.append(1)
        elif c == ")" and len(groups) > 1:
            last = groups.pop()
            groups[-1] = max(groups[-1], last)
        elif c == "{":
            end = pattern.find("}", i)
            bounds = pattern[i + 1:end].split(",") if end > 0 else []
            if bounds and all(b.strip().isdigit() or not b.strip() for b in bounds):
                count = max(int(b.strip()[:10]) for b in bounds if b.strip()) if any(b.strip() for b in bounds) else 1
                last *= max(count, 1)
                groups[-1] = max(groups[-1], last)
                i = end + 1
                continue
        else:
            last = 1
        i += 1
    return max(groups)
