"""A request made into engine jobs: validated first (a 400 never takes a slot), one job per choice, one queue."""
from __future__ import annotations

import asyncio
import dataclasses

from ..errors import InvalidRequest
from .grammar import grammar_text
from .sampling import validate
from .scheduler import Job
from .toolgrammar import call_grammar
from .tools import CallFormat
from .types import Chunk, GenerationRequest


def make_jobs(request: GenerationRequest, call_format: CallFormat, max_choices: int) -> list[Job]:
    """One job per choice, sharing one queue; choice i samples with seed + i. `call_format` is the model's way of
    writing a tool call; `max_choices` bounds `n` (the slots plus the queue)."""
    if (request.prompt is None) == (request.messages is None):
        raise InvalidRequest("give exactly one of prompt or messages", param="messages")
    if request.messages is not None and not request.messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    if not 1 <= request.n <= max_choices:
        raise InvalidRequest(f"n must be between 1 and {max_choices} (the slots plus server.max_queue)", param="n")
    sampling = request.sampling
    validate(sampling)
    use, grammar, lazy = request.tools, grammar_text(sampling), None
    if use is not None:
        if request.messages is None:
            raise InvalidRequest("tools need chat messages", param="tools")
        if grammar is not None:
            raise InvalidRequest("tools cannot be combined with grammar or response_format", param="tools")
        # "auto": the model writes freely until it starts a call; "required" and a named tool: from the start.
        if use.choice == "auto":
            lazy = call_grammar(use, call_format, after_open=True)
        else:
            grammar = call_grammar(use, call_format, after_open=False)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
    jobs = []
    for index in range(request.n):
        seeded = request if sampling.seed is None or index == 0 else dataclasses.replace(
            request, sampling=dataclasses.replace(sampling, seed=(sampling.seed + index) % 2**32))
        jobs.append(Job(seeded, grammar, loop, queue, index=index,
                        lazy=None if lazy is None else (call_format.open, lazy)))
    return jobs
