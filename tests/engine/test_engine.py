"""The engine on the real SmolLM2 model: llama.cpp-identical greedy output, batching, cancellation, reuse."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.config import ServerSettings
from edge_runtime.engine import LlamaEngine
from edge_runtime.engine.types import EngineState, FinishReason
from edge_runtime.errors import EngineBusy, EngineError, InvalidRequest, ModelError

from .conftest import QUESTION, chat, collect, completion, wait_for

MakeEngine = Callable[..., LlamaEngine]
STORY = "Once upon a time, in a small village by the sea,"


def _oracle_greedy(model: Path, prompt: str, max_tokens: int) -> str:
    """llama.cpp's own greedy continuation through llama-cpp-python's high-level API, same context settings."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=512, n_batch=256, n_ubatch=256, n_threads=2, flash_attn=True,
                verbose=False)
    try:
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0)
        return str(out["choices"][0]["text"])
    finally:
        llm.close()


def test_greedy_equals_llama_cpp(make_engine: MakeEngine, smollm2_path: Path) -> None:
    expected = _oracle_greedy(smollm2_path, STORY, 48)
    engine = make_engine(parallel=1, flash_attn="on")
    text, last = asyncio.run(collect(engine, completion(STORY, max_tokens=48)))
    assert len(expected) > 40
    assert text == expected
    assert last.usage is not None and last.usage.completion_tokens == 48
    assert last.finish_reason is FinishReason.LENGTH


def test_chat_answer_is_the_same_while_four_other_slots_are_busy(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=5)

    async def scenario() -> tuple[str, str, int]:
        alone, _ = await collect(engine, chat(QUESTION, max_tokens=48))
        others = [asyncio.ensure_future(collect(engine, completion(f"Count from {i} to 500: {i}, {i + 1},",
                                                                     max_tokens=160)))
                  for i in range(1, 5)]
        await wait_for(lambda: engine.status().slots_busy == 4)
        busy_seen = 0
        parts = []
        async for chunk in engine.generate(chat(QUESTION, max_tokens=48)):
            busy_seen = max(busy_seen, engine.status().slots_busy)
            parts.append(chunk.text)
        await asyncio.gather(*others)
        return alone, "".join(parts), busy_seen

    alone, crowded, busy_seen = asyncio.run(scenario())
    assert "Paris" in alone
    assert crowded == alone
    assert busy_seen == 5


def test_cancelling_a_stream_frees_its_slot(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=1)

    async def scenario() -> None:
        stream = engine.generate(completion(STORY, max_tokens=400))
        first = await stream.__anext__()
        assert engine.status().slots_busy == 1
        assert first.finish_reason is None
        await stream.aclose()  # what the server does when a client disconnects
        await wait_for(lambda: engine.status().slots_busy == 0)
        status = engine.status()
        assert status.requests_cancelled_total == 1 and status.kv_cells_used == 0
        # The cancelled answer's cells are dropped; only the prompt stays cached for reuse.
        assert 0 < status.kv_cells_cached <= 20
        # The only slot is free again: a new request gets it at once.
        text, last = await collect(engine, chat(QUESTION, max_tokens=32))
        assert "Paris" in text and last.finish_reason is FinishReason.STOP

    asyncio.run(scenario())


def test_cancelling_the_consumer_task_frees_the_slot(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=1)

    async def scenario() -> None:
        task = asyncio.ensure_future(collect(engine, completion(STORY, max_tokens=400)))
        await wait_for(lambda: engine.status().completion_tokens_total > 0 or engine.status().slots_busy == 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: engine.status().slots_busy == 0 and engine.status().requests_cancelled_total == 1)

    asyncio.run(scenario())


def test_prefix_reuse_skips_the_shared_system_prompt(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=2)
    system = ("You are the voice of a museum kiosk. Answer visitors briefly and politely, in one sentence, "
              "and never invent opening hours or prices that you were not told about.")

    async def scenario() -> None:
        _, first = await collect(engine, chat("Where is the toilet?", system=system, max_tokens=8))
        evaluated = engine.status().prompt_tokens_evaluated_total
        _, second = await collect(engine, chat("Is there a cafe?", system=system, max_tokens=8))
        evaluated_second = engine.status().prompt_tokens_evaluated_total - evaluated
        assert first.usage is not None and second.usage is not None
        assert first.usage.cached_prompt_tokens == 0
        assert second.usage.cached_prompt_tokens >= 40  # the whole system turn
        assert evaluated_second == second.usage.prompt_tokens - second.usage.cached_prompt_tokens
        assert evaluated_second < second.usage.prompt_tokens / 2

    asyncio.run(scenario())


def test_json_schema_forces_valid_json(make_engine: MakeEngine) -> None:
    import json

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    engine = make_engine()
    text, last = asyncio.run(collect(engine, chat("Describe Paris as JSON.", max_tokens=64, json_schema=schema)))
    value = json.loads(text)
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and isinstance(value["population"], int)
    assert last.finish_reason is FinishReason.STOP


def test_gbnf_grammar_and_bad_grammar(make_engine: MakeEngine) -> None:
    engine = make_engine()
    grammar = 'root ::= ("yes" | "no") "."'
    text, _ = asyncio.run(collect(engine, chat("Is Paris in France?", max_tokens=8, grammar=grammar)))
    assert text in ("yes.", "no.")
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(collect(engine, chat("hi", grammar="root ::= (")))
    assert caught.value.param == "grammar"
    assert engine.status().slots_busy == 0


def test_stop_string_is_not_emitted(make_engine: MakeEngine) -> None:
    engine = make_engine()
    full, _ = asyncio.run(collect(engine, completion(STORY, max_tokens=32)))
    stop = full.split()[3]  # a word from the middle of the greedy continuation
    cut, last = asyncio.run(collect(engine, completion(STORY, max_tokens=32, stop=(stop,))))
    assert cut == full[:full.index(stop)]
    assert stop not in cut
    assert last.finish_reason is FinishReason.STOP


def test_max_tokens_finishes_with_length(make_engine: MakeEngine) -> None:
    engine = make_engine()
    text, last = asyncio.run(collect(engine, completion(STORY, max_tokens=5)))
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None and last.usage.completion_tokens == 5 and text


def test_invalid_requests_are_refused_with_the_parameter(make_engine: MakeEngine) -> None:
    engine = make_engine(max_sequence_length=64)
    with pytest.raises(InvalidRequest, match=r"the prompt is .* tokens but a slot's context holds 64") as caught:
        asyncio.run(collect(engine, completion("word " * 200)))
    assert caught.value.param == "prompt"
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(collect(engine, completion("hi", max_tokens=0)))
    assert caught.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(collect(engine, completion("hi", top_p=0.0)))
    assert caught.value.param == "top_p"
    assert engine.status().slots_busy == 0 and engine.status().queue_depth == 0


def test_full_queue_raises_engine_busy(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=1, server=ServerSettings(max_queue=1))

    async def scenario() -> None:
        running = asyncio.ensure_future(collect(engine, completion(STORY, max_tokens=64)))
        await wait_for(lambda: engine.status().slots_busy == 1)
        queued = asyncio.ensure_future(collect(engine, completion(STORY, max_tokens=4)))
        await wait_for(lambda: engine.status().queue_depth == 1)
        with pytest.raises(EngineBusy, match="all 1 slots are busy"):
            await collect(engine, completion(STORY, max_tokens=4))
        await asyncio.gather(running, queued)
        assert engine.status().queue_depth == 0

    asyncio.run(scenario())


def test_long_prompt_is_chunked_and_does_not_stall_a_running_stream(make_engine: MakeEngine) -> None:
    # Every token its own chunk (no merging), so the events below count decode steps.
    engine = make_engine(parallel=2, batch_size=32, max_sequence_length=1024, stream_interval=0.0)
    long_prompt = "The history of the town is long. " * 60  # ~480 tokens -> at least 15 chunks of 32

    async def scenario() -> None:
        events: list[str] = []

        async def follow(name: str, request_prompt: str, max_tokens: int) -> None:
            async for chunk in engine.generate(completion(request_prompt, max_tokens=max_tokens)):
                if chunk.text:
                    events.append(name)

        runner = asyncio.ensure_future(follow("A", STORY, 120))
        await wait_for(lambda: "A" in events)
        await follow("B", long_prompt, 4)
        await runner
        first_b = events.index("B")
        start_b = events.index("A")
        # While B's prompt was evaluated chunk by chunk, A kept getting tokens every step.
        assert events[start_b:first_b].count("A") >= 10

    asyncio.run(scenario())


def test_idle_unload_and_reload(make_engine: MakeEngine) -> None:
    engine = make_engine(keep_alive=0.3)

    async def scenario() -> None:
        text, _ = await collect(engine, chat(QUESTION, max_tokens=32))
        assert "Paris" in text
        await wait_for(lambda: engine.status().state is EngineState.UNLOADED, timeout=10)
        assert "idle" in engine.status().reason
        again, _ = await collect(engine, chat(QUESTION, max_tokens=32))
        assert again == text
        assert engine.status().loads_total >= 2

    asyncio.run(scenario())


def test_preload_reaches_ready_and_keep_alive_zero_loads_on_demand(make_engine: MakeEngine) -> None:
    engine = make_engine()
    asyncio.run(wait_for(lambda: engine.status().state is EngineState.READY))
    status = engine.status()
    assert status.load_seconds is not None and status.loads_total == 1 and "ready" in status.reason
    lazy = make_engine(keep_alive=0.0)
    assert lazy.status().state is EngineState.UNLOADED and lazy.status().loads_total == 0
    text, _ = asyncio.run(collect(lazy, chat(QUESTION, max_tokens=24)))
    assert "Paris" in text
    asyncio.run(wait_for(lambda: lazy.status().state is EngineState.UNLOADED))


def test_model_without_chat_template_refuses_chat_but_completes(make_engine: MakeEngine, gemma3_path: Path) -> None:
    engine = make_engine(gemma3_path, parallel=1)
    with pytest.raises(InvalidRequest, match="has no chat template") as caught:
        asyncio.run(collect(engine, chat("hi")))
    assert caught.value.param == "messages"
    text, last = asyncio.run(collect(engine, completion("The capital of France is", max_tokens=8)))
    assert text and last.usage is not None and last.usage.completion_tokens >= 1


def test_close_fails_running_streams_and_refuses_new_ones(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=1)

    async def scenario() -> None:
        stream = engine.generate(completion(STORY, max_tokens=400))
        await stream.__anext__()
        await engine.close()
        with pytest.raises(EngineError, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(EngineError, match="shutting down"):
            await collect(engine, completion(STORY))
        assert engine.status().state is EngineState.UNLOADED

    asyncio.run(scenario())


def test_a_small_total_context_is_split_and_each_stream_ends_at_its_share(make_engine: MakeEngine) -> None:
    engine = make_engine(parallel=2, max_sequence_length=512, context=256, batch_size=64)
    assert engine.plan.n_ctx == 256 and engine.plan.n_ctx_per_slot == 128

    async def scenario() -> list[tuple[str, int, int]]:
        results = await asyncio.gather(*(collect(engine, completion(f"Count from {i} to 900: {i}, {i + 1},",
                                                                    max_tokens=200)) for i in (1, 500)))
        return [(last.finish_reason.value if last.finish_reason else "",
                 last.usage.prompt_tokens if last.usage else 0,
                 last.usage.completion_tokens if last.usage else 0) for _, last in results]

    # Both streams run to the end of their own 128 cells, side by side: neither takes the other's share.
    for reason, prompt, completion_tokens in asyncio.run(scenario()):
        assert reason == "length"
        assert prompt + completion_tokens == 128 + 1  # the last token is sampled, never stored in a cell
    assert engine.status().slots_busy == 0


def test_seeded_sampling_is_reproducible_and_penalties_apply(make_engine: MakeEngine) -> None:
    engine = make_engine()
    prompt = "Count from 1 to 50: 1, 2, 3,"

    async def scenario() -> tuple[str, str, list[str], str, str]:
        poem = "Write a short poem about the sea:\n"
        first, _ = await collect(engine, completion(poem, temperature=1.0, seed=42, max_tokens=24))
        again, _ = await collect(engine, completion(poem, temperature=1.0, seed=42, max_tokens=24))
        others = [(await collect(engine, completion(poem, temperature=1.0, seed=s, max_tokens=24)))[0]
                  for s in (1, 2, 3)]
        plain, _ = await collect(engine, completion(prompt, max_tokens=24))
        penalised, _ = await collect(engine, completion(prompt, max_tokens=24, repeat_penalty=1.5,
                                                        presence_penalty=1.0))
        return first, again, others, plain, penalised

    first, again, others, plain, penalised = asyncio.run(scenario())
    assert first == again
    assert any(o != first for o in others)
    assert plain.startswith(" 4, 5, 6,")  # greedy counting...
    assert penalised != plain  # ...which repetition penalties break up


def test_model_llama_cpp_cannot_load_fails_cleanly(make_engine: MakeEngine, smollm2_path: Path,
                                                   tmp_path: Path) -> None:
    data = bytearray(smollm2_path.read_bytes())
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4 + 8  # value type (u32) and string length (u64) follow the key
    assert data[at:at + 5] == b"llama"
    data[at:at + 5] = b"zzzzz"  # a well-formed GGUF of an architecture llama.cpp does not know
    broken = tmp_path / "unknown-arch.gguf"
    broken.write_bytes(bytes(data))
    engine = make_engine(broken)
    asyncio.run(wait_for(lambda: engine.status().state is EngineState.FAILED))
    assert "load failed" in engine.status().reason and "could not load the model" in engine.status().reason
    with pytest.raises(ModelError, match="could not load the model"):
        asyncio.run(collect(engine, completion("hi")))
    assert engine.status().queue_depth == 0 and engine.status().slots_busy == 0


def test_fast_streams_are_merged_into_fewer_chunks_without_losing_text(make_engine: MakeEngine) -> None:
    engine = make_engine(stream_interval=0.0)

    async def chunks(e: LlamaEngine) -> list[str]:
        return [c.text async for c in e.generate(completion(STORY, max_tokens=48))]

    every_token = asyncio.run(chunks(engine))
    engine.close_sync()
    merging = make_engine(stream_interval=60.0)
    merged = asyncio.run(chunks(merging))
    assert "".join(merged) == "".join(every_token)
    assert len(every_token) >= 40
    # The first token goes out at once; everything after it, inside the 60 s window, rides on the final chunk.
    assert len(merged) == 2


def test_wait_ready_returns_for_preloaded_and_on_demand_engines(make_engine: MakeEngine) -> None:
    from edge_runtime.engine.ready import wait_ready

    preloaded = make_engine()
    asyncio.run(asyncio.wait_for(wait_ready(preloaded), timeout=60))
    assert preloaded.status().state is EngineState.READY
    on_demand = make_engine(keep_alive=0.0)
    asyncio.run(asyncio.wait_for(wait_ready(on_demand), timeout=5))  # nothing loads until the first request
    assert on_demand.status().loads_total == 0


def test_per_request_keep_alive_unloads_preloads_and_reports_expiry(make_engine: MakeEngine) -> None:
    import math
    import time

    from edge_runtime.engine.ready import wait_ready

    engine = make_engine(keep_alive=math.inf)
    asyncio.run(asyncio.wait_for(wait_ready(engine), timeout=60))
    assert engine.status().state is EngineState.READY and engine.status().expires_at is None  # inf: never

    engine.keep_alive(1e15)  # longer than the OS can wait at once: the worker must survive it
    asyncio.run(asyncio.sleep(0.2))
    assert engine.crashed() is None and engine.status().state is EngineState.READY
    engine.keep_alive(120)
    expires = engine.status().expires_at
    assert expires is not None and 110 < expires - time.time() <= 120

    engine.keep_alive(0)  # Ollama's keep_alive 0 on an idle engine: unload now
    asyncio.run(wait_for(lambda: engine.status().state is EngineState.UNLOADED, timeout=10))
    assert engine.status().expires_at is None

    engine.keep_alive(0, load=True)  # 0 never loads
    assert engine.status().state is EngineState.UNLOADED
    engine.keep_alive(-1, load=True)  # negative: load now and keep for ever
    assert engine.status().state is EngineState.LOADING  # at once, so wait_ready cannot return early
    asyncio.run(asyncio.wait_for(wait_ready(engine), timeout=60))
    assert engine.status().state is EngineState.READY and engine.status().loads_total == 2
    text, _ = asyncio.run(collect(engine, chat(QUESTION, max_tokens=16)))
    assert text and engine.status().state is EngineState.READY
    with pytest.raises(InvalidRequest):
        engine.keep_alive(math.nan)
