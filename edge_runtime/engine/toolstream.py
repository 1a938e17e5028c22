"""The consumer side of a choice with tools: raw generated text becomes answer text, call events and checked calls."""
from __future__ import annotations

import dataclasses

from ..errors import ToolCallError
from .toolparse import CallParser, TextDelta
from .tools import CallFormat, ToolUse
from .types import Chunk, FinishReason


class ToolStream:
    """Runs on the event loop (not the engine thread) over one choice's chunks, in order.

    A call whose arguments do not parse or do not validate against its tool's schema is never handed on as a
    call: the stream raises ToolCallError instead (HTTP 422, or an error event mid-stream), naming the reason.
    """

    def __init__(self, use: ToolUse, fmt: CallFormat) -> None:
        self._use = use
        self._parser = CallParser(fmt, use.tools)

    def chunk(self, chunk: Chunk) -> Chunk:
        parser = self._parser
        events = parser.feed(chunk.text)
        if chunk.finish_reason is not None:
            events += parser.finish()
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        calls = tuple(e for e in events if not isinstance(e, TextDelta))
        if chunk.finish_reason is None or chunk.finish_reason is FinishReason.CANCELLED:
            return dataclasses.replace(chunk, text=text, calls=calls)
        parsed = tuple(parser.calls)
        for call in parsed:
            if call.error is not None:
                cut = " (the answer reached max_tokens)" if chunk.finish_reason is FinishReason.LENGTH else ""
                raise ToolCallError(f"the model wrote an invalid call of {call.name or 'a tool'}{cut}: {call.error}")
        if not parsed and self._use.choice != "auto":
            raise ToolCallError("the model did not call a tool although tool_choice requires one (the answer "
                                f"ended: {chunk.finish_reason.value})")
        reason = FinishReason.TOOL_CALLS if parsed else chunk.finish_reason
        return dataclasses.replace(chunk, text=text, calls=calls, tool_calls=parsed, finish_reason=reason)
