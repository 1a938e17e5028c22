"""The engine's failure paths on the real model, with faults injected at narrow seams (a size cap, one method)."""
from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from edge_runtime.engine import LlamaEngine, native
from edge_runtime.engine.native import Copy, Runtime
from edge_runtime.engine.scheduler import Scheduler
from edge_runtime.errors import EngineError, fresh

from .conftest import collect, completion, wait_for

MakeEngine = Callable[..., LlamaEngine]
# ~120 tokens of prompt: long enough that its halves differ by far more than MIN_SHARED_PREFIX.
TEXT = " ".join(f"Item {i} of the museum inventory is a carved wooden figure." for i in range(12))


def _tokens(engine: LlamaEngine, text: str) -> int:
    sched = engine._sched
    assert sched is not None
    return len(sched.rt.tokenize(text, add_special=True))


def test_a_refused_prefix_copy_keeps_the_slots_own_cache(make_engine: MakeEngine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(parallel=2)
    half = TEXT[: len(TEXT) // 2]

    async def scenario() -> tuple[int, int]:
        long = engine.generate(completion(TEXT + " Then", max_tokens=200))  # the whole text, in slot 0
        await long.__anext__()  # generating: slot 0 holds all of TEXT
        await collect(engine, completion(half + " Note:", max_tokens=1))  # slot 1 now holds the first half
        copies = engine.status().prefix_copies_total
        # Slot 0's state is now "too large to stage": a copy from it is refused before the target is touched.
        monkeypatch.setattr(native, "MAX_STATE_COPY_BYTES", 0)
        _, last = await collect(engine, completion(TEXT + " Also", max_tokens=1))  # can only go to slot 1
        await long.aclose()
        assert last.usage is not None
        assert engine.status().prefix_copies_total == copies
        return last.usage.cached_prompt_tokens, copies

    cached, _ = asyncio.run(scenario())
    # Before: the refused copy emptied slot 1 as well, and the half it held was evaluated again (0 cached).
    assert cached >= _tokens(engine, half) - 2, cached


def test_a_copy_that_fails_part_way_never_makes_the_cached_counter_go_down(make_engine: MakeEngine,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(parallel=3)
    half, three_quarters = TEXT[: len(TEXT) // 2], TEXT[: 3 * len(TEXT) // 4]
    seen: list[int] = []

    def emptied(self: Runtime, src: int, dst: int, n: int) -> Copy:
        self.seq_rm(dst, 0)  # what a failed llama_state_seq_set_data leaves behind
        seen.append(engine._stats.cached_prompt_tokens)
        return Copy.EMPTIED

    async def scenario() -> None:
        # Two slots with prefixes of TEXT: a half and three quarters (the second copied from the first).
        await asyncio.gather(collect(engine, completion(half + " A", max_tokens=1)),
                             collect(engine, completion(three_quarters + " B", max_tokens=1)))
        monkeypatch.setattr(Runtime, "copy_prefix", emptied)
        before = engine.status().cached_prompt_tokens_total
        # The long one takes the three-quarter slot; the short one the half slot, where it waits for the long
        # prompt to be evaluated and then copies it -- and that copy fails part-way.
        await asyncio.gather(collect(engine, completion(TEXT + " long", max_tokens=2)),
                             collect(engine, completion(TEXT + " short", max_tokens=2)))
        assert engine.status().cached_prompt_tokens_total >= before

    asyncio.run(scenario())
    assert seen, "the scenario never reached a prefix copy"
    # Before: the waiting request's own prefix was counted at admission and subtracted when the copy failed
    # (measured on the old code: 273 at the copy, 195 after).
    assert engine.status().cached_prompt_tokens_total >= max(seen)


def test_every_request_failed_by_one_fault_gets_its_own_exception(make_engine: MakeEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(parallel=2)
    step = Scheduler.step

    def failing_step(self: Scheduler) -> None:
        if self.busy() == 2:  # both slots taken and a third request queued: fail them all at once
            raise RuntimeError("injected fault")
        step(self)

    async def scenario() -> list[BaseException]:
        monkeypatch.setattr(Scheduler, "step", failing_step)
        results = await asyncio.gather(*(collect(engine, completion(f"Count {i}:", max_tokens=50))
                                         for i in range(3)), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(scenario())
    assert len(errors) == 3 and all(isinstance(e, EngineError) for e in errors), errors
    assert len({id(e) for e in errors}) == 3, "one exception object was raised in several requests"
    assert len({str(e) for e in errors}) == 1


def test_a_load_failure_fails_every_queued_request_with_its_own_exception(make_engine: MakeEngine,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(preload=False)

    def refuse(self: Runtime, *args: Any, **kwargs: Any) -> None:
        raise native.ModelError("injected: the model file is truncated")

    monkeypatch.setattr(Runtime, "__init__", refuse)

    async def scenario() -> list[BaseException]:
        results = await asyncio.gather(*(collect(engine, completion("Hi", max_tokens=2)) for _ in range(3)),
                                       return_exceptions=True)
        await wait_for(lambda: engine.status().state.value == "failed")
        return [r for r in results if isinstance(r, BaseException)]

    errors = asyncio.run(scenario())
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3, errors
    assert all("truncated" in str(e) for e in errors)
    # The worker lives on and retries the load on the next request: the watchdog must keep pinging (before, it
    # stopped, and systemd restarted the daemon every 35 s over a file a restart cannot mend).
    from edge_runtime.server.runner import Liveness

    assert engine.crashed() is None and Liveness(engine)()


def test_fresh_copies_an_error_without_calling_its_constructor_again() -> None:
    from edge_runtime.errors import ConfigError, DependencyMissing

    for error in (DependencyMissing("vosk", extra="voice"), ConfigError("bad", key="server.port")):
        try:
            raise error
        except type(error) as raised:
            clone = fresh(raised)
        assert type(clone) is type(error) and str(clone) == str(error) and vars(clone) == vars(error)
        assert clone is not error and clone.__traceback__ is None


def test_a_special_token_longer_than_64_bytes_keeps_its_text() -> None:
    # A stand-in for llama_token_to_piece: llama.cpp answers -n when the piece needs n bytes.
    piece = b"<|" + b"x" * 100 + b"|>"

    def to_piece(vocab: object, token: int, buf: Any, size: int, lstrip: int, special: bool) -> int:
        if size < len(piece):
            return -len(piece)
        ctypes.memmove(buf, piece, len(piece))
        return len(piece)

    runtime = SimpleNamespace(lib=SimpleNamespace(llama_token_to_piece=to_piece), vocab=None)
    assert Runtime._special_text(runtime, 7) == piece.decode()  # type: ignore[arg-type]


def test_a_batch_with_more_logits_rows_than_slots_is_refused_not_an_abort(make_engine: MakeEngine) -> None:
    # llama.cpp's own answer is GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max): the whole process aborts.
    engine = make_engine(parallel=2)
    asyncio.run(wait_for(lambda: engine._sched is not None))
    sched = engine._sched
    assert sched is not None
    rt = sched.rt
    # More tokens than the rows reserved (one per slot plus the speculative drafts' rows).
    tokens = rt.tokenize("The museum opens at nine. " * 20, add_special=True)
    assert len(tokens) > rt.n_outputs_max + 1

    def decode(rows: int) -> int:
        # The worker is idle (nothing submitted), so the runtime can be driven from here.
        rt.lib.llama_memory_clear(rt.memory, True)
        at = 0
        for pos, token in enumerate(tokens[:rows]):
            at = rt.add_one(at, token, pos, 0)
        return rt.decode()

    assert decode(rt.n_outputs_max + 1) == native.TOO_MANY_OUTPUTS
    assert decode(rt.n_outputs_max) == 0  # the next batch is counted afresh
    _, last = asyncio.run(collect(engine, completion("The capital of France is", max_tokens=4)))
    assert last.finish_reason is not None and last.finish_reason.value == "length"


def test_a_real_decode_failure_fails_the_batch_alone_and_the_engine_recovers(make_engine: MakeEngine,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(parallel=2)
    add_one = Runtime.add_one
    armed = [False]

    def poisoned(self: Runtime, at: int, token: int, pos: int, seq: int) -> int:
        if armed[0]:
            armed[0] = False
            token = self.n_vocab + 7  # llama_decode itself rejects the batch: "invalid token"
        return add_one(self, at, token, pos, seq)

    monkeypatch.setattr(Runtime, "add_one", poisoned)

    async def scenario() -> list[object]:
        streams = [engine.generate(completion(f"Count to ten, take {i}:", max_tokens=100)) for i in range(2)]
        for stream in streams:
            await stream.__anext__()  # both generating
        before = engine.status()
        armed[0] = True
        results: list[object] = []
        for stream in streams:
            try:
                async for _ in stream:
                    pass
                results.append("finished")
            except EngineError as exc:
                results.append(exc)
        after = engine.status()
        assert after.slots_busy == 0 and after.queue_depth == 0
        for name in ("prompt_tokens_evaluated_total", "completion_tokens_total", "cached_prompt_tokens_total"):
            assert getattr(after, name) >= getattr(before, name), name
        _, last = await collect(engine, completion("The capital of France is", max_tokens=4))
        assert last.finish_reason is not None and last.finish_reason.value == "length"
        return results

    results = asyncio.run(scenario())
    errors = [r for r in results if isinstance(r, EngineError)]
    assert len(errors) == 2 and errors[0] is not errors[1], results
    assert all("failed to decode" in str(e) for e in errors)


def test_no_room_in_the_kv_cache_fails_the_batch_alone(make_engine: MakeEngine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(parallel=2)
    decode = Runtime.decode
    armed = [False]

    def full(self: Runtime) -> int:
        status = decode(self)
        if armed[0]:
            armed[0] = False
            return 1  # what llama_decode answers when it finds no KV slot for the batch
        return status

    monkeypatch.setattr(Runtime, "decode", full)

    async def scenario() -> BaseException | None:
        stream = engine.generate(completion("Count to ten:", max_tokens=100))
        await stream.__anext__()
        armed[0] = True
        try:
            async for _ in stream:
                pass
        except EngineError as exc:
            return exc
        return None

    error = asyncio.run(scenario())
    assert isinstance(error, EngineError) and "status 1" in str(error), error
    assert engine.status().slots_busy == 0
    _, last = asyncio.run(collect(engine, completion("The capital of France is", max_tokens=4)))
    assert last.finish_reason is not None and last.finish_reason.value == "length"


def test_a_slow_step_delays_but_changes_nothing(make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    engine = make_engine(parallel=2)
    expected, _ = asyncio.run(collect(engine, completion("The capital of France is", max_tokens=12)))
    step = Scheduler.step
    slow = [3]

    def sluggish(self: Scheduler) -> None:
        if slow[0] > 0:
            slow[0] -= 1
            time.sleep(0.4)  # a board under memory pressure or thermal throttling
        step(self)

    monkeypatch.setattr(Scheduler, "step", sluggish)
    text, last = asyncio.run(collect(engine, completion("The capital of France is", max_tokens=12)))
    assert text == expected and last.finish_reason is not None
    assert engine.status().state.value == "ready" and engine.status().slots_busy == 0
