"""Prompt prefixes shared across slots: a system prompt in one slot's cache is copied, never recomputed."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from edge_runtime.engine import LlamaEngine

from .conftest import chat, collect, completion

MakeEngine = Callable[..., LlamaEngine]
SYSTEM = ("You are the voice of a museum kiosk. Answer visitors briefly and politely, in one sentence, "
          "and never invent opening hours or prices that you were not told about.")
QUESTIONS = ("Where is the toilet?", "Is there a cafe?", "Can I take photos?", "Where are the dinosaurs?")


def _references(make_engine: MakeEngine) -> list[str]:
    """Each question answered greedily by an engine that has nothing cached (so nothing can be copied)."""
    answers = []
    for question in QUESTIONS:
        engine = make_engine(parallel=1)
        answers.append(asyncio.run(collect(engine, chat(question, system=SYSTEM, max_tokens=24)))[0])
        engine.close_sync()
    return answers


def test_a_burst_with_one_system_prompt_evaluates_it_once(make_engine: MakeEngine) -> None:
    expected = _references(make_engine)
    engine = make_engine(parallel=4)

    async def burst() -> list[tuple[str, int, int]]:
        results = await asyncio.gather(*(collect(engine, chat(q, system=SYSTEM, max_tokens=24)) for q in QUESTIONS))
        return [(text, last.usage.prompt_tokens, last.usage.cached_prompt_tokens)  # type: ignore[union-attr]
                for text, last in results]

    results = asyncio.run(burst())
    status = engine.status()
    assert [text for text, _, _ in results] == expected
    total = sum(prompt for _, prompt, _ in results)
    cached = sum(c for _, _, c in results)
    # The first request evaluates the system turn; the other three copy it (≥ 40 tokens each) once it is there.
    assert status.prefix_copies_total == len(QUESTIONS) - 1
    assert cached >= 40 * (len(QUESTIONS) - 1)
    assert status.prompt_tokens_evaluated_total == total - cached


def test_a_busy_slot_lends_its_prefix_to_a_new_request(make_engine: MakeEngine) -> None:
    expected = _references(make_engine)[1]
    engine = make_engine(parallel=4)

    async def scenario() -> tuple[str, int]:
        generating = asyncio.Event()

        async def long_answer() -> None:
            # SmolLM2's ChatML up to the user's words, then counting: the same system turn as the chat below, and
            # an answer that greedy decoding keeps going for hundreds of tokens (a chat answer may stop early).
            head = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
            async for _ in engine.generate(completion(head + "Count from 1 to 500: 1, 2, 3,", max_tokens=400)):
                generating.set()

        long = asyncio.ensure_future(long_answer())
        await asyncio.wait_for(generating.wait(), timeout=60)  # its prompt is in the cache, its slot busy
        text, last = await collect(engine, chat(QUESTIONS[1], system=SYSTEM, max_tokens=24))
        assert not long.done()
        long.cancel()
        assert last.usage is not None
        return text, last.usage.cached_prompt_tokens

    text, cached = asyncio.run(scenario())
    assert text == expected
    assert cached >= 40
    assert engine.status().prefix_copies_total == 1


def test_sliding_window_model_copies_give_the_same_greedy_text(make_engine: MakeEngine, gemma3_path: Path) -> None:
    head = "The museum guide said: the dinosaur hall is on the second floor, the cafe is next to the shop, and"
    prompts = [head + tail for tail in (" the toilets are", " the exit is", " the library is")]
    expected = []
    # Speculation off: its drafts change how many rows a batch has, and a row decoded in a bigger batch can
    # round slightly differently; with drafts on, one near-tie of these three answers flipped (measured).
    for prompt in prompts:
        alone = make_engine(gemma3_path, parallel=1, speculative="off")
        expected.append(asyncio.run(collect(alone, completion(prompt, max_tokens=16)))[0])
        alone.close_sync()
    engine = make_engine(gemma3_path, parallel=3, speculative="off")

    async def burst() -> list[str]:
        return [text for text, _ in await asyncio.gather(*(collect(engine, completion(p, max_tokens=16))
                                                           for p in prompts))]

    assert asyncio.run(burst()) == expected
    assert engine.status().prefix_copies_total == 2


def test_shared_prefixes_under_churn_keep_every_answer_exact(make_engine: MakeEngine) -> None:
    """24 requests over 4 slots: two system prompts, six questions, every fourth request cancelled mid-way."""
    import random

    systems = (SYSTEM, "You are a terse librarian. Answer with as few words as you can, and never apologise.")
    questions = (*QUESTIONS, "What time is it?", "Who built this place?")
    prompts = [(systems[i % 2], questions[i % len(questions)]) for i in range(24)]
    reference = make_engine(parallel=1)
    expected = {p: asyncio.run(collect(reference, chat(p[1], system=p[0], max_tokens=16)))[0] for p in set(prompts)}
    reference.close_sync()
    engine = make_engine(parallel=4)
    rng = random.Random(7)

    async def one(index: int, prompt: tuple[str, str]) -> str | None:
        await asyncio.sleep(rng.random() * 0.5)
        if index % 4 == 3:  # cancelled after its first chunk: its slot and cells must be freed cleanly
            # (400 tokens: it cannot finish on its own before the cancel lands, even on a loaded machine)
            async for _ in engine.generate(chat(prompt[1], system=prompt[0], max_tokens=400)):
                break
            return None
        return (await collect(engine, chat(prompt[1], system=prompt[0], max_tokens=16)))[0]

    async def churn() -> list[str | None]:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    results = asyncio.run(churn())
    answered = [(text, expected[prompt]) for prompt, text in zip(prompts, results, strict=True) if text is not None]
    assert len(answered) == 18
    assert [got for got, _ in answered] == [want for _, want in answered]
    status = engine.status()
    assert status.slots_busy == 0 and status.queue_depth == 0
    assert status.prefix_copies_total > 0
    # A cancelled answer that reached its end first counts as finished: every request is accounted for once.
    assert status.requests_cancelled_total >= 1
    assert status.requests_cancelled_total + status.requests_finished_total == 24
