"""GBNF for tool calls: the blocks tool_prompt teaches, each tool's arguments from its schema, with number ranges."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from .grammar import check_gbnf
from .tools import CallFormat, ToolUse

# The unbounded side of a range allows as many digits as the converter's own integer rule (1 + 15).
MAX_DIGITS = 16
# A bounded number's fraction: enough for coordinates and money, few enough that a weak model cannot ramble.
FRACTION_DIGITS = 6
# Whitespace around markers and between blocks: lenient, but bounded (a 135M model loops on whitespace).
WS = "[ \\n]{0,2}"
# Calls per answer with parallel_tool_calls: a weak model can repeat one call until max_tokens otherwise.
MAX_CALLS = 8

Atom = tuple[int, int, int, int]  # the digits lo..hi, repeated min..max times
Alt = tuple[Atom, ...]  # one alternative: a sequence of atoms


@dataclass(frozen=True)
class IntRange:
    """The integers of a range as digit patterns: magnitudes written after "-", and non-negative values."""

    negative: tuple[Alt, ...]
    nonnegative: tuple[Alt, ...]


def int_range(lo: int | None, hi: int | None) -> IntRange | None:
    """Digit patterns for exactly the integers in [lo, hi] (None: unbounded, up to MAX_DIGITS digits).

    None when the range is empty or lies wholly beyond MAX_DIGITS digits (the caller then falls back to the
    unbounded rule; validation catches what it lets through).
    """
    limit = 10 ** MAX_DIGITS
    if (lo is not None and lo >= limit) or (hi is not None and hi <= -limit) or \
            (lo is not None and hi is not None and lo > hi):
        return None
    # A bound beyond MAX_DIGITS digits constrains nothing the unbounded side would write.
    lo = None if lo is not None and lo <= -limit else lo
    hi = None if hi is not None and hi >= limit else hi
    negative: list[Alt] = []
    if lo is None or lo < 0:
        if hi is None or hi < 0:
            negative = _nonnegative(1 if hi is None else -hi, None if lo is None else -lo)
        else:
            negative = _nonnegative(1, None if lo is None else -lo)
    nonnegative = _nonnegative(max(0, lo or 0), hi) if hi is None or hi >= 0 else []
    return IntRange(tuple(negative), tuple(nonnegative))


def _nonnegative(a: int, b: int | None) -> list[Alt]:
    """Patterns for the integers a..b (a >= 0; b None: any with up to MAX_DIGITS digits), no leading zeros."""
    width_a = len(str(a))
    width_b = MAX_DIGITS if b is None else len(str(b))
    alts: list[Alt] = []
    for width in range(width_a, width_b + 1):
        start = max(a, 10 ** (width - 1) if width > 1 else 0)
        if b is None and width > width_a:
            # Every number of each greater width is in range: one pattern covers them all.
            alts.append(((1, 9, 1, 1), (0, 9, width - 1, MAX_DIGITS - 1)))
            break
        end = 10 ** width - 1 if b is None else min(b, 10 ** width - 1)
        alts += [_compact(alt) for alt in _same_width(str(start), str(end))]
    return alts


def _same_width(a: str, b: str) -> list[Alt]:
    """The classic range split of a..b (digit strings of equal width, a <= b): 16..30 -> 1[6-9] | 2[0-9] | 30."""
    if len(a) == 1:
        return [((int(a), int(b), 1, 1),)]
    head_a, head_b, rest = int(a[0]), int(b[0]), len(a) - 1
    if head_a == head_b:
        return [((head_a, head_a, 1, 1), *alt) for alt in _same_width(a[1:], b[1:])]
    alts: list[Alt] = []
    low_full, high_full = a[1:] == "0" * rest, b[1:] == "9" * rest
    if not low_full:
        alts += [((head_a, head_a, 1, 1), *alt) for alt in _same_width(a[1:], "9" * rest)]
    first, last = head_a + (not low_full), head_b - (not high_full)
    if first <= last:
        alts.append(((first, last, 1, 1), *((0, 9, 1, 1),) * rest))
    if not high_full:
        alts += [((head_b, head_b, 1, 1), *alt) for alt in _same_width("0" * rest, b[1:])]
    return alts


def _compact(alt: Alt) -> Alt:
    """Runs of single [0-9] atoms as one repeated atom (keeps the grammar small)."""
    out: list[Atom] = []
    for atom in alt:
        if out and atom == (0, 9, 1, 1) and out[-1][:2] == (0, 9) and out[-1][2] == out[-1][3]:
            out[-1] = (0, 9, out[-1][2] + 1, out[-1][3] + 1)
        else:
            out.append(atom)
    return tuple(out)


def _gbnf_alts(alts: tuple[Alt, ...]) -> str:
    def atom(lo: int, hi: int, least: int, most: int) -> str:
        text = f'"{lo}"' if lo == hi else f"[{lo}-{hi}]"
        if least == most == 1:
            return text
        return f"{text}{{{least}}}" if least == most else f"{text}{{{least},{most}}}"

    return " | ".join(" ".join(atom(*a) for a in alt) for alt in alts)


def range_gbnf(r: IntRange) -> str:
    """An IntRange as one GBNF alternation (without the trailing space rule)."""
    parts = [f'"-" ({_gbnf_alts(r.negative)})'] if r.negative else []
    if r.nonnegative:
        parts.append(_gbnf_alts(r.nonnegative))
    return " | ".join(f"({p})" for p in parts)


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    # Draft 4's boolean exclusiveMinimum is not a bound (check_schema refuses it under 2020-12 anyway).
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The least and greatest integers the schema's minimum/maximum (inclusive or exclusive) allow."""
    lows = [math.ceil(v) for v in [_bound(schema, "minimum")] if v is not None]
    lows += [math.floor(v) + 1 for v in [_bound(schema, "exclusiveMinimum")] if v is not None]
    highs = [math.floor(v) for v in [_bound(schema, "maximum")] if v is not None]
    highs += [math.ceil(v) - 1 for v in [_bound(schema, "exclusiveMaximum")] if v is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def number_gbnf(schema: dict[str, Any]) -> str | None:
    """GBNF for an integer or number schema with bounds; None without bounds or when nothing in range is writable.

    Integers are exact. A number is an integer in range, or I.ddd (I >= 0) with [I, I+1) inside the range, or -K.ddd
    (K >= 0) with (-K-1, -K] inside it, or, at an exclusive integer bound, that integer with a fraction that is not
    all zeros: a subset of the range that never leaves it (validation is then never the one to catch a number).
    """
    if not any(_bound(schema, k) is not None for k in ("minimum", "maximum", "exclusiveMinimum",
                                                        "exclusiveMaximum")):
        return None
    zlo, zhi = _integer_bounds(schema)
    integers = int_range(zlo, zhi)
    alts = [range_gbnf(integers)] if integers is not None else []
    if schema.get("type") == "number":
        lows = [v for v in (_bound(schema, "minimum"), _bound(schema, "exclusiveMinimum")) if v is not None]
        highs = [v for v in (_bound(schema, "maximum"), _bound(schema, "exclusiveMaximum")) if v is not None]
        low, high = (max(lows) if lows else None), (min(highs) if highs else None)
        top = None if high is None else math.floor(high) - 1  # the greatest I with I.999999 inside
        deepest = None if low is None else -math.ceil(low) - 1  # the greatest K with -K.999999 inside
        fraction = f'"." [0-9]{{1,{FRACTION_DIGITS}}}'
        nonzero = f'"." [0-9]{{0,{FRACTION_DIGITS - 1}}} [1-9]'
        whole = int_range(max(0, zlo if zlo is not None else 0), top)
        if whole is not None and whole.nonnegative:
            alts.append(f"({_gbnf_alts(whole.nonnegative)}) {fraction}")
        below = int_range(max(0, -zhi if zhi is not None else 0), deepest)
        if below is not None and below.nonnegative:
            alts.append(f'"-" ({_gbnf_alts(below.nonnegative)}) {fraction}')
        # An exclusive integer bound itself, with a fraction that moves it inside: (0, 1) still offers 0.5.
        e = _bound(schema, "exclusiveMinimum")
        if e is not None and e == low and float(e).is_integer() and e >= 0 and (top is None or e <= top):
            alts.append(f'"{int(e)}" {nonzero}')
        e = _bound(schema, "exclusiveMaximum")
        if e is not None and e == high and float(e).is_integer() and e <= 0 and (deepest is None or -e <= deepest):
            alts.append(f'"-{int(-e)}" {nonzero}')
    if not alts:
        return None
    return "(" + " | ".join(f"({a})" for a in alts) + ") space"


def _literal(text: str) -> str:
    """A GBNF string literal."""
    escaped = "".join({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c)
                      or (f"\\x{ord(c):02x}" if ord(c) < 0x20 else c) for c in text)
    return f'"{escaped}"'


def _converter() -> Any:
    """llama-cpp-python's JSON-schema converter, with number ranges and per-tool $defs names."""
    from llama_cpp import llama_grammar as lg

    base: Any = lg.SchemaConverter

    class Converter(base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
            self.ref_rules: dict[str, str] = {}

        def visit(self, schema: dict[str, Any], name: str) -> str:
            rule_name = name + "-" if name in lg.RESERVED_NAMES else name or "root"
            kind = schema.get("type")
            plain = not any(k in schema for k in ("$ref", "oneOf", "anyOf", "const", "enum"))
            if isinstance(kind, list) and plain:
                # The converter would visit {"type": t} alone and lose the bounds of ["integer", "null"].
                return str(self._add_rule(rule_name, " | ".join(
                    self.visit({**schema, "type": t}, f"{name}-{t}") for t in kind)))
            if kind in ("integer", "number") and plain:
                rule = number_gbnf(schema)
                if rule is not None:
                    return str(self._add_rule(rule_name, rule))
            pattern = schema.get("pattern")
            if isinstance(pattern, str) and not (pattern.startswith("^") and pattern.endswith("$")):
                # The converter takes anchored patterns only; an unanchored one constrains the string less than
                # a grammar could express, so the grammar leaves it free and validation checks it.
                schema = {k: v for k, v in schema.items() if k != "pattern"}
            return str(super().visit(schema, name))

        def _resolve_ref(self, ref: str) -> str:
            # The converter names a $ref's rule after its last segment and reuses any rule of that name: two tools'
            # "#/$defs/Unit" would share one rule. Here each ref (prefixed by its tool) gets its own name.
            known = self.ref_rules.get(ref)
            if known is not None:
                return known
            tool, _, pointer = ref.partition("#")
            stem = lg.INVALID_RULE_CHARS_RE.sub("-", f"{tool}-def-{pointer.rsplit('/', 1)[-1]}")
            name, i = stem, 0
            while name in self._rules or name in self.ref_rules.values():
                name, i = f"{stem}{i}", i + 1
            self.ref_rules[ref] = name
            key = str(self.visit(self._refs[ref], name))
            if key != name and name not in self._rules:
                self._rules[name] = key  # a primitive (string, integer) came back under its own name
            return name

    return Converter()


def call_grammar(use: ToolUse, fmt: CallFormat, *, after_open: bool) -> str:
    """GBNF whose root is the call block(s) tool_prompt teaches; after_open: it starts just after the first marker.

    Raises InvalidRequest (param "tools") when a schema cannot be converted or the grammar exceeds the bounds.
    """
    tools = [t for t in use.tools if use.choice != "named" or t.name == use.name]
    if not tools:
        raise InvalidRequest("tool_choice names a tool the request does not have", param="tool_choice")
    conv = _converter()
    calls: list[str] = []
    for tool in tools:
        try:
            # A private copy: resolve_refs rewrites $ref values in place; refs are prefixed with the tool's name.
            schema = conv.resolve_refs(json.loads(json.dumps(dict(tool.parameters))), tool.name)
            args = conv.visit(schema, f"{tool.name}-args")
        except Exception as exc:  # noqa: BLE001 - a third-party converter: any failure means this schema is unusable
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidRequest(f"tools: the parameters of {tool.name} cannot be turned into a grammar: {reason}",
                                 param="tools") from None
        calls.append(conv._add_rule(f"{tool.name}-call", f'{_literal(json.dumps(tool.name))} space "," space '
                                    f'{_literal(json.dumps(fmt.args_key))} space ":" space {args}'))
    name_key = _literal('"name"')
    body = conv._add_rule("call-body", f'{WS} "{{" space {name_key} space ":" space '
                                       f'({" | ".join(calls)}) "}}" {WS} {_literal(fmt.close)}')
    more = f" ({WS} {_literal(fmt.open)} {body}){{0,{MAX_CALLS - 1}}}" if use.parallel else ""
    first = body if after_open else f"{_literal(fmt.open)} {body}"
    conv._rules["root"] = first + more
    text = str(conv.format_grammar())
    check_gbnf(text, param="tools", hint=" (simplify the tools' parameter schemas)")
    return text
