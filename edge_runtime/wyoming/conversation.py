"""The conversation agent: bounded history per Home Assistant conversation id, answers streamed from the LLM."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..config import Settings
from ..engine.types import Engine, GenerationRequest, SamplingParams, Usage
from ..kiosk.history import Conversation
from .options import WyomingOptions, system_prompt


@dataclass
class Thread:
    """One conversation id's history and what the engine reported for its last prompt."""

    history: Conversation
    usage: Usage | None = None


class Conversations:
    """Histories by conversation id, least recently used dropped beyond `limit`: Home Assistant makes a new id
    for every conversation, so without a bound a long-running server would keep every one it ever saw."""

    def __init__(self, settings: Settings, options: WyomingOptions) -> None:
        self.prompt = system_prompt(settings, options)
        self.max_turns = options.history_turns
        self.limit = options.max_conversations
        # A slot's context, less the answer's room: what Conversation keeps the prompt under.
        slot_context = min(settings.max_sequence_length, settings.total_context // settings.parallel)
        self.budget = max(64, slot_context - options.max_tokens)
        self.sampling = SamplingParams(max_tokens=options.max_tokens, temperature=options.temperature)
        self._threads: OrderedDict[str, Thread] = OrderedDict()

    def __len__(self) -> int:
        return len(self._threads)

    def get(self, conversation_id: str | None) -> Thread:
        """The thread of `conversation_id` (created if new); without an id, a one-turn thread nobody keeps."""
        if conversation_id is None:
            return self._new()
        thread = self._threads.get(conversation_id)
        if thread is None:
            thread = self._threads[conversation_id] = self._new()
            while len(self._threads) > self.limit:
                self._threads.popitem(last=False)
        self._threads.move_to_end(conversation_id)
        return thread

    def peek(self, conversation_id: str) -> Thread | None:
        """The thread without touching its recency."""
        return self._threads.get(conversation_id)

    def _new(self) -> Thread:
        return Thread(Conversation(self.prompt, max_turns=self.max_turns, budget=self.budget))


async def answer(engine: Engine, thread: Thread, text: str, sampling: SamplingParams) -> AsyncIterator[str]:
    """The LLM's reply to `text`, delta by delta; the turn joins the history only once the reply is complete.

    Closing this generator early (the client left) closes the engine's stream, which frees its slot.
    """
    messages = thread.history.messages(text)
    stream = engine.generate(GenerationRequest(sampling=sampling, messages=messages))
    reply = ""
    try:
        async for chunk in stream:
            if chunk.text:
                reply += chunk.text
                yield chunk.text
            if chunk.usage is not None:
                thread.usage = chunk.usage
                thread.history.calibrate(messages, chunk.usage.prompt_tokens)
    finally:
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
    thread.history.add(text, reply)
