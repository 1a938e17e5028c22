"""transcript (with Home Assistant's conversation_id) -> handled, the LLM answering with the conversation's history."""
from __future__ import annotations

import asyncio

from wyoming.asr import Transcript
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, NotHandled

from edge_runtime.kiosk.history import Turn

from .conftest import Running, exchange, types

QUESTION = "What is the capital of France?"
FOLLOW_UP = "Repeat your last answer."


async def ask(running: Running, text: str, conversation_id: str | None) -> list[Event]:
    """homeassistant/components/wyoming/conversation.py: a transcript with context, read until (not-)handled."""
    context = {"conversation_id": conversation_id} if conversation_id else None
    async with running.client() as client:
        return await exchange(client, Transcript(text=text, context=context, language="en").event(),
                              until=("handled-stop", "not-handled", "error"))


def handled(events: list[Event]) -> Handled:
    assert types(events)[0] == "handled-start", events
    assert types(events)[-2:] == ["handled", "handled-stop"], types(events)
    answer = Handled.from_event(events[-2])
    streamed = "".join(HandledChunk.from_event(e).text for e in events if HandledChunk.is_type(e.type))
    assert answer.text == streamed.strip() and answer.text
    return answer


def test_follow_up_is_answered_with_the_first_turn_in_its_prompt(running: Running) -> None:
    conversations = running.server.conversations
    first = handled(asyncio.run(ask(running, QUESTION, "conv-a")))
    assert first.context == {"conversation_id": "conv-a"}
    thread = conversations.peek("conv-a")
    assert thread is not None and thread.usage is not None
    first_usage = thread.usage
    assert list(thread.history.turns) == [Turn(QUESTION, first.text or "")]

    second = handled(asyncio.run(ask(running, FOLLOW_UP, "conv-a")))
    with_history = thread.usage
    assert with_history is not None
    assert list(thread.history.turns) == [Turn(QUESTION, first.text or ""), Turn(FOLLOW_UP, second.text or "")]

    # The same follow-up in a new conversation: its prompt lacks the first question and answer.
    handled(asyncio.run(ask(running, FOLLOW_UP, "conv-b")))
    fresh = conversations.peek("conv-b")
    assert fresh is not None and fresh.usage is not None
    assert with_history.prompt_tokens - fresh.usage.prompt_tokens >= first_usage.completion_tokens + 5


def test_conversations_are_bounded_least_recently_used_first(running: Running) -> None:
    conversations = running.server.conversations  # max_conversations 3 in this module
    for name in ("lru-1", "lru-2", "lru-3"):
        handled(asyncio.run(ask(running, "Hello!", name)))
    handled(asyncio.run(ask(running, "Hello again!", "lru-1")))  # lru-1 is now the most recent
    handled(asyncio.run(ask(running, "Hello!", "lru-4")))
    assert len(conversations) == 3
    assert conversations.peek("lru-2") is None
    assert all(conversations.peek(n) is not None for n in ("lru-1", "lru-3", "lru-4"))


def test_without_a_conversation_id_nothing_is_kept(running: Running) -> None:
    before = len(running.server.conversations)
    answer = handled(asyncio.run(ask(running, QUESTION, None)))
    assert answer.context is None
    assert len(running.server.conversations) == before


def test_engine_refusal_is_not_handled_and_the_server_keeps_serving(running: Running) -> None:
    # Korean text is about a token per character: over the 1024-token slot context, the engine refuses it.
    events = asyncio.run(ask(running, "가" * 1900, "too-long"))
    assert types(events) == ["not-handled"], events
    assert "context" in (NotHandled.from_event(events[0]).text or "")
    assert running.engine.status().slots_busy == 0
    handled(asyncio.run(ask(running, QUESTION, "after-refusal")))
