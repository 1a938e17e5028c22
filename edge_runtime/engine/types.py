"""The engine's public contract: requests, sampling parameters, streamed chunks and status (no llama.cpp here)."""
from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .toolparse import ArgsDelta, CallStart, ParsedCall
    from .tools import ToolCall, ToolUse


@dataclass(frozen=True)
class ChatMessage:
    """A chat turn; an assistant turn may carry tool calls, a `tool` turn answers the call `tool_call_id`."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Everything that shapes one completion; defaults follow llama-server's."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    json_schema: Mapping[str, Any] | None = None
    # (token id, bias) pairs added to the logits before sampling (OpenAI's logit_bias).
    logit_bias: tuple[tuple[int, float], ...] = ()
    # None: no logprobs; k >= 0: each token's log-probability and the k most likely alternatives.
    logprobs: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Either a raw prompt (completions) or chat messages (the engine applies the model's chat template)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    # Tools the model may (or must) call; chat requests only.
    tools: ToolUse | None = None
    # Choices generated from one evaluation of the prompt; choice i samples with seed + i.
    n: int = 1
    # LoRA adapters to apply: (index in the configured `adapters` list, scale) pairs, as llama-server's `lora`
    # field; empty: the model alone. The server resolves names and default scales (server.lora_api).
    adapters: tuple[tuple[int, float], ...] = ()


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, and the most likely alternatives (sorted)."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A delta of choice `index`; the last chunk of each choice carries finish_reason and usage.

    With tools, `text` is only the answer's plain text: `calls` streams the calls being written, and the last chunk
    lists every finished call in `tool_calls`.
    """

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    calls: tuple[CallStart | ArgsDelta, ...] = ()
    tool_calls: tuple[ParsedCall, ...] = ()


class EngineState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class EngineStatus:
    state: EngineState
    reason: str
    model: str
    slots_total: int
    slots_busy: int
    queue_depth: int
    kv_cells_used: int
    kv_cells_total: int
    load_seconds: float | None = None
    # Cells held by idle slots as prompt-prefix cache (reclaimable; not counted in kv_cells_used).
    kv_cells_cached: int = 0
    # Monotonic counters since the engine was created (Prometheus counters).
    prompt_tokens_evaluated_total: int = 0
    cached_prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    requests_finished_total: int = 0
    requests_cancelled_total: int = 0
    loads_total: int = 0
    # Prompt prefixes copied from another slot's cache (a shared system prompt evaluated once).
    prefix_copies_total: int = 0
    draft_tokens_total: int = 0
    draft_accepted_total: int = 0
    # The memory plan (MemoryPlan.describe()) the engine runs with.
    memory_plan: str = ""
    # UNIX time at which the loaded model unloads if no request arrives (keep_alive); None: not loaded, or never.
    expires_at: float | None = None


class Engine(Protocol):
    """What the HTTP server, the chat command and the kiosk need from an engine."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Stream a completion; closing the iterator early (or cancelling its task) frees the slot."""
        ...

    def status(self) -> EngineStatus: ...

    def keep_alive(self, seconds: float, *, load: bool = False) -> None:
        """Keep the model loaded `seconds` after the engine is next idle (0: unload when idle; < 0: never unload);
        `load` also loads it now."""
        ...

    async def close(self) -> None: ...
