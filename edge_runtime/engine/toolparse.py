"""Generated text -> answer text and tool calls, incrementally (any chunking), with calls checked against schemas."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .text import partial_tail
from .tools import CallFormat, Tool, new_call_id, plain_json

_WS = " \t\r\n"
# Characters of JSON numbers and of true/false/null: anything else outside a string cannot be JSON.
_SCALAR = frozenset("-+.0123456789eEtruefalsn")
_MAX_REASON = 300


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgsDelta:
    index: int
    text: str


Event = TextDelta | CallStart | ArgsDelta


@dataclass(frozen=True)
class ParsedCall:
    """One call block; `arguments` is the JSON text the model wrote, `error` None when it is a valid call."""

    id: str
    name: str
    arguments: str
    error: str | None


class _Block:
    """The scanning state of one call block: a JSON object, tracked at its top level to find name and arguments."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.id = new_call_id()
        self.raw: list[str] = []  # the object's text
        self.depth = 0
        self.in_str = False
        self.escape = False
        self.str_role = ""  # of the string being read at depth 1: "key", "name" (the name's value) or "value"
        self.phase = "key"  # at depth 1: key, colon, value, scalar, after
        self.chars: list[str] = []  # the key or name string being read
        self.key = ""
        self.name: str | None = None
        self.capturing = False  # the depth-1 value being read is the arguments
        self.args: list[str] | None = None  # None until the arguments value begins
        self.started = False  # CallStart sent
        self.broken: str | None = None


class CallParser:
    """Splits a model's streamed output into answer text and call blocks of format `fmt`; never raises on any text."""

    def __init__(self, fmt: CallFormat, tools: tuple[Tool, ...]) -> None:
        self._fmt = fmt
        self._tools = {t.name: t for t in tools}
        self._validators: dict[str, Any] = {}
        self._state = "text"  # text, block (inside the object), post (after it), broken (skipping to a marker)
        self._held = ""  # text: a tail that may begin the open marker; post: the close marker's matched part;
        # broken: a tail that may begin either marker
        self._ws: list[str] = []  # whitespace after the text so far: dropped if a call follows
        self._after_block = False  # whitespace right after a block is swallowed
        self._block: _Block | None = None
        self._content: list[str] = []
        self._calls: list[ParsedCall] = []

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def calls(self) -> list[ParsedCall]:
        return list(self._calls)

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        pos = 0
        # Each step consumes text (or ends a block): linear in the input, whatever the chunking.
        while pos < len(text):
            if self._state == "text":
                text, pos = self._text(text, pos, events)
            elif self._state == "block":
                pos = self._scan(text, pos, events)
            elif self._state == "post":
                pos = self._post(text, pos, events)
            else:
                text, pos = self._broken(text, pos, events)
        return events

    def finish(self) -> list[Event]:
        """The end of the output: held text is text, an unfinished block is a call with an error."""
        events: list[Event] = []
        if self._state == "text":
            held, self._held = self._held, ""
            self._emit(held, events, before_call=False)
            if self._ws:
                self._out("".join(self._ws), events)
                self._ws.clear()
        elif self._block is not None:
            # A complete object whose close marker was cut off is a complete call.
            self._end_block(complete=self._state == "post")
        self._state, self._held = "text", ""
        return events

    # -- text outside blocks

    def _text(self, text: str, pos: int, events: list[Event]) -> tuple[str, int]:
        marker = self._fmt.open
        s = self._held + text[pos:] if self._held else text[pos:]
        self._held = ""
        at = s.find(marker)
        if at < 0:
            keep = partial_tail(s, (marker,))
            self._emit(s[:len(s) - keep], events, before_call=False)
            self._held = s[len(s) - keep:]
            return s, len(s)
        self._emit(s[:at], events, before_call=True)
        self._start_block()
        return s, at + len(marker)

    def _emit(self, text: str, events: list[Event], *, before_call: bool) -> None:
        """Answer text, holding back trailing whitespace (a call may follow: then it is dropped)."""
        if self._after_block:
            text = text.lstrip(_WS)
            self._after_block = not text
        body = text.rstrip(_WS)
        if before_call:
            if body:
                self._out("".join(self._ws) + body, events)
            self._ws.clear()
            return
        if not body:
            if text:
                self._ws.append(text)
            return
        self._out("".join(self._ws) + body, events)
        self._ws.clear()
        if len(body) < len(text):
            self._ws.append(text[len(body):])

    def _out(self, text: str, events: list[Event]) -> None:
        self._content.append(text)
        events.append(TextDelta(text))

    # -- inside a block

    def _start_block(self) -> None:
        self._block = _Block(len(self._calls))
        self._state = "block"

    def _scan(self, text: str, pos: int, events: list[Event]) -> int:
        b = self._block
        assert b is not None
        n, i = len(text), pos
        args_from = pos if b.capturing else -1

        def end_value(end: int) -> None:
            nonlocal args_from
            if b.capturing:
                self._args(b, text[args_from:end], events)
                b.capturing, args_from = False, -1
            b.phase = "after"

        while i < n:
            c = text[i]
            if b.in_str:
                if b.escape:
                    b.escape = False
                elif c == "\\":
                    b.escape = True
                elif c == '"':
                    b.in_str = False
                    if b.depth == 1:
                        if b.str_role == "key":
                            b.key, b.phase = "".join(b.chars), "colon"
                        else:
                            if b.str_role == "name":
                                self._named(b, "".join(b.chars), events)
                            end_value(i + 1)
                        i += 1
                        continue
                if b.depth == 1 and b.str_role in ("key", "name"):
                    b.chars.append(c)
                i += 1
                continue
            if c in _WS:
                if b.depth == 1 and b.phase == "scalar":
                    end_value(i)
                i += 1
                continue
            if b.depth == 0:
                if c != "{":
                    return self._break(b, text, pos, i, f"{self._fmt.open} is not followed by a JSON object")
                b.depth, b.phase = 1, "key"
            elif b.depth >= 2:
                if c == '"':
                    b.in_str, b.str_role = True, "value"
                elif c in "{[":
                    b.depth += 1
                elif c in "}]":
                    b.depth -= 1
                    if b.depth == 1:
                        end_value(i + 1)
                elif c not in _SCALAR and c not in ",:":
                    return self._break(b, text, pos, i, "the call is not valid JSON")
            elif b.phase == "value":
                if b.key == self._fmt.args_key and b.args is None:
                    b.args, b.capturing, args_from = [], True, i
                if c == '"':
                    b.in_str = True
                    b.str_role = "name" if b.key == "name" and b.name is None else "value"
                    b.chars = []
                elif c in "{[":
                    b.depth = 2
                elif c in _SCALAR:
                    b.phase = "scalar"
                else:
                    return self._break(b, text, pos, i, "the call is not valid JSON")
            elif c == "}" and b.phase in ("key", "scalar", "after"):
                if b.phase == "scalar":
                    end_value(i)
                b.raw.append(text[pos:i + 1])
                b.depth, self._state = 0, "post"
                return i + 1
            elif b.phase == "key" and c == '"':
                b.in_str, b.str_role, b.chars = True, "key", []
            elif (b.phase == "colon" and c == ":") or (b.phase in ("after", "scalar") and c == ","):
                if b.phase == "scalar":
                    end_value(i)
                b.phase = "value" if c == ":" else "key"
            elif not (b.phase == "scalar" and c in _SCALAR):
                return self._break(b, text, pos, i, "the call is not valid JSON")
            i += 1
        if b.capturing:
            self._args(b, text[args_from:n], events)
        b.raw.append(text[pos:n])
        return n

    def _args(self, b: _Block, piece: str, events: list[Event]) -> None:
        if not piece or b.args is None:
            return
        b.args.append(piece)
        if b.started:
            events.append(ArgsDelta(b.index, piece))

    def _named(self, b: _Block, raw: str, events: list[Event]) -> None:
        """The name string is complete: the call starts (with any arguments already written before it)."""
        try:
            name = json.loads(f'"{raw}"')
        except ValueError:
            name = raw
        b.name, b.started = name, True
        events.append(CallStart(b.index, b.id, name))
        if b.args:
            events.append(ArgsDelta(b.index, "".join(b.args)))

    def _break(self, b: _Block, text: str, pos: int, i: int, reason: str) -> int:
        """Not JSON at text[i]: skip to the next marker, starting at this very character (it may begin one)."""
        b.raw.append(text[pos:i])
        b.broken, b.capturing, self._state = reason, False, "broken"
        return i

    def _post(self, text: str, pos: int, events: list[Event]) -> int:
        """After the object: whitespace, then the close marker; anything else ends the block without it."""
        close, i = self._fmt.close, pos
        while i < len(text):
            c = text[i]
            if not self._held and c in _WS:
                i += 1
            elif c == close[len(self._held)]:
                self._held += c
                i += 1
                if self._held == close:
                    self._held = ""
                    self._end_block(complete=True)
                    return i
            else:
                held, self._held = self._held, ""
                self._end_block(complete=True)
                if held:  # a partial close marker was text after all
                    self._text(held, 0, events)
                return i
        return i

    def _broken(self, text: str, pos: int, events: list[Event]) -> tuple[str, int]:
        b = self._block
        assert b is not None
        fmt = self._fmt
        s = self._held + text[pos:] if self._held else text[pos:]
        self._held = ""
        ends = [(at, m) for m in (fmt.close, fmt.open) if (at := s.find(m)) >= 0]
        if not ends:
            keep = partial_tail(s, (fmt.open, fmt.close))
            b.raw.append(s[:len(s) - keep])
            self._held = s[len(s) - keep:]
            return s, len(s)
        at, marker = min(ends)
        b.raw.append(s[:at])
        if marker == fmt.open and b.depth == 0 and not "".join(b.raw).strip(_WS):
            # Two open markers in a row: the first one had nothing in it; the call starts after the second.
            self._start_block()
        else:
            self._end_block(complete=False)
            if marker == fmt.open:
                self._start_block()
        return s, at + len(marker)

    def _end_block(self, *, complete: bool) -> None:
        b = self._block
        assert b is not None
        self._block, self._state, self._after_block = None, "text", True
        arguments = "".join(b.args) if b.args is not None else "{}"
        error = b.broken
        if error is None and not complete:
            error = "the output ended inside the call"
        if error is None:
            try:
                json.loads("".join(b.raw), parse_constant=_no_constant)
            except ValueError as exc:
                error = f"the call is not valid JSON: {getattr(exc, 'msg', exc)}"
        if error is None and b.name is None:
            error = 'the call has no "name" string'
        if error is None:
            error = self._check(b.name or "", arguments)
        self._calls.append(ParsedCall(id=b.id, name=b.name or "", arguments=arguments, error=error))

    def _check(self, name: str, arguments: str) -> str | None:
        """Why `arguments` are not a valid call of tool `name`, or None."""
        tool = self._tools.get(name)
        if tool is None:
            return f"there is no tool named {name[:80]!r}"
        try:
            value = json.loads(arguments, parse_constant=_no_constant)
        except ValueError as exc:
            return f"arguments are not valid JSON: {getattr(exc, 'msg', exc)}"
        if not isinstance(value, dict):
            return "arguments must be a JSON object"
        import jsonschema

        validator = self._validators.get(name)
        if validator is None:
            validator = self._validators[name] = jsonschema.Draft202012Validator(plain_json(tool.parameters))
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is None:
            return None
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        reason = " ".join(f"arguments{path}: {error.message}".split())
        return reason if len(reason) <= _MAX_REASON else reason[:_MAX_REASON - 3] + "..."


def _no_constant(name: str) -> Any:
    # Python's json takes NaN and Infinity; JSON (and the client's parser) does not.
    raise ValueError(f"{name} is not JSON")

