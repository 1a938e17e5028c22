"""OpenAI's shapes for one choice: its message or text, tool calls, streamed call deltas and logprobs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_runtime.engine.toolparse import ArgsDelta, CallStart, ParsedCall
from edge_runtime.engine.types import Chunk, FinishReason, TokenLogprob, Usage


def _token(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion (or of one streamed delta)."""
    return {"content": [
        {"token": _token(e.token), "logprob": e.logprob, "bytes": list(e.token),
         "top_logprobs": [{"token": _token(t), "logprob": lp, "bytes": list(t)} for t, lp in e.top]}
        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int = 0) -> dict[str, Any]:
    """`choices[].logprobs` of a text completion (the legacy shape); `offset` is where the text so far ends."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        text = _token(e.token)
        tokens.append(text)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_token(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def tool_calls_body(calls: tuple[ParsedCall, ...]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


def call_deltas(events: tuple[CallStart | ArgsDelta, ...]) -> list[dict[str, Any]]:
    """A streamed delta's `tool_calls`: a call's first fragment carries its id and name, later ones arguments."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, CallStart):
            out.append({"index": e.index, "id": e.id, "type": "function",
                        "function": {"name": e.name, "arguments": ""}})
        elif out and out[-1]["index"] == e.index:
            out[-1]["function"]["arguments"] += e.text
        else:
            out.append({"index": e.index, "function": {"arguments": e.text}})
    return out


@dataclass
class Choice:
    """One choice gathered from its chunks (non-streaming answers)."""

    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self.parts.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.last = chunk

    @property
    def finish_reason(self) -> FinishReason:
        return self.last.finish_reason or FinishReason.STOP if self.last else FinishReason.STOP

    def body(self, *, chat: bool, want_logprobs: bool) -> dict[str, Any]:
        text = "".join(self.parts)
        calls = self.last.tool_calls if self.last else ()
        finish = self.finish_reason.value
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
            if calls:
                message["tool_calls"] = tool_calls_body(calls)
            return {"index": self.index, "message": message,
                    "logprobs": chat_logprobs(self.logprobs) if want_logprobs else None, "finish_reason": finish}
        return {"index": self.index, "text": text,
                "logprobs": completion_logprobs(self.logprobs) if want_logprobs else None, "finish_reason": finish}


def total_usage(usages: list[Usage]) -> Usage:
    """One request's usage over its choices: the prompt was evaluated once, completions add up."""
    if not usages:
        return Usage(0, 0)
    first = usages[0]
    return Usage(first.prompt_tokens, sum(u.completion_tokens for u in usages), first.cached_prompt_tokens)
