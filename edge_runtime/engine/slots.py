"""The scheduler's records: a request's Job, the KV-cache Slot it runs in, and the counters of both."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .adapters import NO_ADAPTERS, AdapterKey
from .sampling import Sampler
from .speculative import Acceptance
from .text import StopMatcher, Utf8Stream
from .types import Chunk, GenerationRequest, TokenLogprob


@dataclass(eq=False)
class Job:
    """One request from submission to its last chunk; the consumer side only reads `queue` and sets `cancelled`."""

    request: GenerationRequest
    grammar: str | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    finished: bool = False
    index: int = 0  # which choice of its request this job generates
    # "auto" tool calls: the marker that starts a call, and the grammar that takes over once the model wrote it.
    lazy: tuple[str, str] | None = None
    # Delivery state (engine thread): text and logprobs not yet posted and when the last chunk went out.
    held: str = ""
    held_logprobs: list[TokenLogprob] = field(default_factory=list)
    sent_at: float = 0.0
    # Worker-side state.
    prompt: list[int] = field(default_factory=list)
    adapters: AdapterKey = NO_ADAPTERS
    n_past: int = 0
    n_cached: int = 0
    n_generated: int = 0
    generating: bool = False
    next_token: int = -1
    order: int = 0
    # Set while this job waits for another slot to finish evaluating a prefix it will copy: (slot, its job, length).
    wait_for: tuple[Slot, Job, int] | None = None
    sampler: Sampler | None = None
    acceptance: Acceptance = field(default_factory=Acceptance)  # of this job's drafted tokens, lately
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stop: StopMatcher = field(default_factory=lambda: StopMatcher(()))


@dataclass(eq=False)
class Slot:
    """A sequence id of the KV cache and the tokens whose cells it holds (positions 0..len-1)."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    # The adapter set `tokens`' cells were computed under: only a job with the same set may reuse or copy them.
    tag: AdapterKey = NO_ADAPTERS
    job: Job | None = None
    last_used: int = 0


@dataclass
class Stats:
    """Monotonic counters for /metrics; plain ints written by the worker thread only."""

    prompt_tokens_evaluated: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    decode_calls: int = 0
    prefix_copies: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
