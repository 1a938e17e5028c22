"""The greedy fast path (ggml's top-k on llama.cpp's logits in place) against llama.cpp's own greedy sampler."""
from __future__ import annotations

import ctypes
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edge_runtime.config import Settings
from edge_runtime.engine.greedy import MIN_VOCAB, GreedyPicker, slices_for
from edge_runtime.engine.native import Runtime, import_llama, library_dir
from edge_runtime.engine.planner import plan_for
from edge_runtime.engine.sampling import Sampler
from edge_runtime.engine.types import SamplingParams

T = TypeVar("T")


def lib_dir() -> Path:
    return library_dir(import_llama())


def in_thread(fn: Callable[[], T]) -> T:
    """llama.cpp work on a thread that then exits: its OpenMP team goes with it (a second team that stayed alive
    in the test process would make libgomp stop spinning and slow every later engine test)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class Row:
    """A float32 row aligned like llama.cpp's logits buffer."""

    def __init__(self, values: list[float]) -> None:
        self._raw = ctypes.create_string_buffer(4 * len(values) + 64)
        self.address = -(-ctypes.addressof(self._raw) // 32) * 32
        (ctypes.c_float * len(values)).from_address(self.address)[:] = values


def pick(p: GreedyPicker, values: list[float]) -> int | None:
    row = Row(values)  # alive until the pick is done
    return in_thread(lambda: p.pick(row.address))


@pytest.fixture
def picker() -> Iterator[Callable[[int], GreedyPicker]]:
    made: list[GreedyPicker] = []

    def make(n_vocab: int) -> GreedyPicker:
        p = GreedyPicker.create(lib_dir(), n_vocab, 2)
        assert p is not None
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_slices_divide_the_vocabulary() -> None:
    assert slices_for(262144) == 32  # Gemma-3
    assert slices_for(49152) == 32  # SmolLM2
    assert slices_for(151936) == 32  # Qwen2
    assert slices_for(50257) == 29  # GPT-2: 29 x 1733
    assert slices_for(65521) == 1  # a prime: no slicing, no fast path


def test_no_fast_path_for_small_or_unaligned_vocabularies() -> None:
    # 100257 floats per row: the second row starts off ggml's 32-byte alignment, so the sampler chain must decide.
    assert GreedyPicker.create(lib_dir(), 100257, 2) is None
    # Below MIN_VOCAB llama.cpp's own candidate array is as cheap (SmolLM2's 49152).
    assert GreedyPicker.create(lib_dir(), 49152, 2) is None
    assert GreedyPicker.create(lib_dir(), MIN_VOCAB, 2) is not None


def test_pick_is_the_argmax_with_ties_to_the_lowest_id(picker: Callable[[int], GreedyPicker]) -> None:
    n = 131072
    p = picker(n)
    rng = random.Random(7)
    for _ in range(20):
        values = [rng.gauss(0.0, 5.0) for _ in range(n)]
        assert pick(p, values) == max(range(n), key=values.__getitem__)
    for best in (0, 1, n // 32 - 1, n // 32, n - 1):
        values = [0.0] * n
        values[best] = 3.0
        assert pick(p, values) == best
    values = [-1.0] * n
    for tied in (5000, 5001, 90000):  # two in one slice, one in a later slice
        values[tied] = 2.5
    assert pick(p, values) == 5000
    assert pick(p, [float("-inf")] * n) is None  # nothing to pick: the chain decides


def test_unaligned_rows_are_left_to_the_sampler(picker: Callable[[int], GreedyPicker]) -> None:
    p = picker(131072)
    row = Row([1.0] * 131080)
    assert p.pick(row.address + 4) is None


def test_only_plain_greedy_requests_take_the_fast_path() -> None:
    def flag(**params: Any) -> bool:
        lib = import_llama()
        sampler = Sampler(lib, None, SamplingParams(**params), None, n_vocab=49152, n_ctx=512)
        try:
            return sampler.greedy
        finally:
            sampler.free()

    assert flag(temperature=0.0)
    assert not flag(temperature=0.7)
    assert not flag(temperature=0.0, repeat_penalty=1.1)
    assert not flag(temperature=0.0, presence_penalty=0.5)


def test_small_vocabularies_keep_llama_cpp_sampler(smollm2_path: Path) -> None:
    rt = in_thread(lambda: Runtime(plan_for(Settings(threads=2, parallel=1, max_sequence_length=256,
                                                     batch_size=64), smollm2_path), threads=2))
    try:
        assert rt.greedy is None and rt.pick_greedy(0) is None
    finally:
        in_thread(rt.close)


def test_fast_path_equals_llama_cpp_greedy_sampler(gemma3_path: Path) -> None:
    """On every step of a real generation (Gemma-3, 262k vocabulary) the fast path picks llama.cpp's token."""
    path = gemma3_path
    settings = Settings(threads=2, parallel=1, max_sequence_length=256, batch_size=64)

    def generate() -> tuple[list[int], list[int]]:
        rt = Runtime(plan_for(settings, path), threads=2)
        sampler = Sampler(rt.lib, rt.vocab, SamplingParams(temperature=0.0), None, n_vocab=rt.n_vocab, n_ctx=256)
        try:
            assert rt.greedy is not None and sampler.greedy
            tokens = rt.tokenize("The three primary colours are", add_special=True)
            at = rt.add(0, tokens, 0, 0, logits=True)
            fast: list[int] = []
            chain: list[int] = []
            for step in range(24):
                assert rt.decode() == 0
                picked = rt.pick_greedy(at - 1)
                fast.append(-1 if picked is None else picked)
                chain.append(sampler.sample(rt.ctx, at - 1))
                at = rt.add_one(0, chain[-1], len(tokens) + step, 0)
            return fast, chain
        finally:
            sampler.free()
            rt.close()

    fast, chain = in_thread(generate)
    assert fast == chain
