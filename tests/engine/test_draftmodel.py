"""The draft model of speculative decoding on real llama.cpp: its drafts are the target's greedy tokens."""
from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.engine.draftmodel import DraftModel
from edge_runtime.engine.native import Runtime
from edge_runtime.engine.planner import MIB, MemoryPlan, plan, plan_for
from edge_runtime.engine.speculative import DraftWant
from edge_runtime.errors import MemoryPlanError, ModelError
from edge_runtime.gguf_file import GgufInfo, inspect
from tests.engine.test_greedy import in_thread

GIB = 1024**3
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,"
LETTERS = "a, b, c, d, e, f, g, h, i, j, k,"
SETTINGS = Settings(threads=2, parallel=2, max_sequence_length=512, batch_size=256)


@pytest.fixture
def target(smollm2_path: Path) -> Iterator[Runtime]:
    rt = in_thread(lambda: Runtime(plan_for(SETTINGS, smollm2_path), threads=2))
    yield rt
    in_thread(rt.close)


@pytest.fixture
def make_draft(target: Runtime) -> Iterator[Callable[[Path], DraftModel]]:
    made: list[DraftModel] = []

    def factory(path: Path) -> DraftModel:
        plan = target.plan
        draft = in_thread(lambda: DraftModel(path, target, n_seq=plan.n_parallel, n_ctx_seq=plan.n_ctx_per_slot,
                                             threads=2, kv_type=plan.kv_type))
        made.append(draft)
        return draft

    yield factory
    for draft in made:
        in_thread(draft.close)


def greedy(rt: Runtime, tokens: list[int], n: int) -> list[int]:
    """The target's own greedy continuation of `tokens`, one token per decode, in its last sequence."""
    if n == 0:
        return []
    seq = rt.plan.n_parallel - 1
    rt.seq_rm(seq, 0)
    for start in range(0, len(tokens) - 1, rt.n_batch):  # all but the last token, in batches
        rt.add(0, tokens[start:min(start + rt.n_batch, len(tokens) - 1)], start, seq)
        assert rt.decode() == 0
    at = rt.add(0, tokens[-1:], len(tokens) - 1, seq, logits=True)
    out: list[int] = []
    for step in range(n):
        assert rt.decode() == 0
        row = np.ctypeslib.as_array(ctypes.cast(rt.logits_address(at - 1), ctypes.POINTER(ctypes.c_float)),
                                    (rt.n_vocab,))
        out.append(int(np.argmax(row)))
        at = rt.add_one(0, out[-1], len(tokens) + step, seq)
    rt.seq_rm(seq, 0)
    return out


def want(seq: int, context: list[int], n: int) -> DraftWant:
    return DraftWant(seq, context[:-1], context[-1], n)


def test_draft_is_the_targets_greedy_continuation(smollm2_path: Path, target: Runtime,
                                                  make_draft: Callable[[Path], DraftModel]) -> None:
    draft = make_draft(smollm2_path)
    assert not draft.cheap

    def run() -> tuple[list[int], list[int]]:
        prompt = target.tokenize(COUNTING, add_special=True)
        return draft.draft([want(0, prompt, 8)])[0], greedy(target, prompt, 8)

    made, expected = in_thread(run)
    assert len(made) >= 4, made  # counting on is an easy guess
    assert made == expected[:len(made)]


def test_drafts_follow_accepted_rejected_and_new_tokens(smollm2_path: Path, target: Runtime,
                                                         make_draft: Callable[[Path], DraftModel]) -> None:
    """The draft's cells follow each slot's tokens however they changed: grown by accepted tokens, cut back after
    a rejection, replaced by a new request sharing a prefix; two sequences are drafted in the same decodes."""
    draft = make_draft(smollm2_path)

    def check(wants: list[tuple[int, list[int]]], n: int = 6) -> list[list[int]]:
        made = draft.draft([want(seq, context, n) for seq, context in wants])
        for (_, context), tokens in zip(wants, made, strict=True):
            assert tokens == greedy(target, context, len(tokens))
        return made

    def run() -> list[int]:
        counting = target.tokenize(COUNTING, add_special=True)
        first = check([(0, counting)])[0]
        # Two drafted tokens accepted: the slot's cells grew by them, the target's third pick comes next.
        grown = check([(0, counting + first[:3])])[0]
        # A rejection: the slot's last token is not what the draft guessed (" 9" instead of " 17").
        rejected = check([(0, counting + first[:1] + target.tokenize(" 9", add_special=False))])[0]
        # A new request in slot 0 sharing only the prompt's start, and slot 1 drafting in the same decodes.
        letters = target.tokenize(LETTERS, add_special=True)
        other = check([(0, counting[:4] + target.tokenize(" 4, 6, 8, 10, 12, 14, 16, 18,", add_special=False)),
                       (1, letters)])
        # And back to the first prompt in slot 1, whose cells now hold the letters.
        back = check([(1, counting)])[0]
        return [len(first), len(grown), len(rejected), len(other[0]), len(other[1]), len(back)]

    lengths = in_thread(run)
    assert lengths == [6] * 6, lengths  # every guess here is an easy one: none stops early


def test_draft_stops_at_the_sequence_context(smollm2_path: Path, target: Runtime,
                                             make_draft: Callable[[Path], DraftModel]) -> None:
    draft = make_draft(smollm2_path)
    n_ctx = target.plan.n_ctx_per_slot

    def run() -> tuple[list[int], list[int]]:
        long = (target.tokenize(COUNTING, add_special=True) * n_ctx)[:n_ctx - 2]
        return draft.draft([want(0, long, 8)])[0], draft.draft([want(1, long + [long[-1]] * 3, 8)])[0]

    near_end, full = in_thread(run)
    assert len(near_end) == 3 and full == []  # 3: the cells left, and counting on is an easy guess


def test_sliding_window_draft_model_rolls_back_past_its_window(gemma3_path: Path) -> None:
    """Gemma-3 (262k vocabulary, sliding-window layers of 512): after a rejected draft deep into a context longer
    than the window, the next draft is again the target's greedy continuation."""
    settings = Settings(threads=2, parallel=1, max_sequence_length=1024, batch_size=256)

    def run() -> tuple[list[int], list[int]]:
        rt = Runtime(plan_for(settings, gemma3_path), threads=2)
        draft: DraftModel | None = None
        try:
            draft = DraftModel(gemma3_path, rt, n_seq=1, n_ctx_seq=1024, threads=2, kv_type=rt.plan.kv_type)
            assert draft.n_swa > 0
            context = rt.tokenize(", ".join(str(i) for i in range(1, 400)) + ",", add_special=True)[:700]
            first = draft.draft([want(0, context, 6)])[0]
            assert first == greedy(rt, context, len(first))
            # One token accepted: the draft's cells of first[1:5] are cut (as after a rejection of first[2]).
            shorter = context + first[:2]
            second = draft.draft([want(0, shorter, 6)])[0]
            assert second == greedy(rt, shorter, len(second))
            return first, second
        finally:
            if draft is not None:
                draft.close()
            rt.close()

    first, second = in_thread(run)
    assert len(first) == 6 and len(second) == 6  # counting on is easy


def test_other_vocabulary_is_refused_naming_both(gemma3_path: Path, smollm2_path: Path,
                                                 make_draft: Callable[[Path], DraftModel]) -> None:
    with pytest.raises(ModelError) as caught:
        make_draft(gemma3_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(gemma3_path) in message and str(smollm2_path) in message and "vocabulary" in message


def test_unloadable_draft_is_a_model_error(tmp_path: Path, make_draft: Callable[[Path], DraftModel]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelError, match=r"bad\.gguf"):
        make_draft(bad)


def test_planner_counts_the_draft_model(smollm2_path: Path, gemma3_path: Path) -> None:
    info, small = inspect(gemma3_path), inspect(smollm2_path)

    def fit(budget: int, draft: GgufInfo | None = None) -> MemoryPlan:
        return plan(info, budget=budget, budget_source="t", n_parallel=2, n_ctx_per_slot=2048, kv_cache_type="f16",
                    draft=draft)

    alone, both = fit(2 * GIB), fit(2 * GIB, small)
    assert alone.draft_bytes == 0 and alone.draft_path is None
    assert both.draft_path == smollm2_path and both.draft_bytes > small.file_size
    assert both.total_bytes == alone.total_bytes + both.draft_bytes
    assert f"draft model {both.draft_bytes / MIB:.0f} MiB" in both.describe()
    assert "draft" not in alone.describe()
    # Short of both: the context shrinks, and the draft model's cells with it, until nothing fits.
    shrunk = []
    for budget in range(both.total_bytes - 1, alone.total_bytes, -8 * MIB):
        try:
            shrunk.append(fit(budget, small))
        except MemoryPlanError:
            break
        assert shrunk[-1].n_ctx_per_slot < 2048 and shrunk[-1].total_bytes <= budget
    assert len(shrunk) >= 3 and shrunk[-1].n_ctx_per_slot < shrunk[0].n_ctx_per_slot
    assert shrunk[-1].draft_bytes < shrunk[0].draft_bytes < both.draft_bytes
    # Room for the model alone is not room for the draft model too (SmolLM2's KV dwarfs Gemma-3's windowed one).
    with pytest.raises(MemoryPlanError, match="draft model"):
        fit(alone.total_bytes, small)


def test_plan_for_resolves_the_draft_model(smollm2_path: Path) -> None:
    base = dataclasses.replace(SETTINGS, draft_model=str(smollm2_path))
    assert plan_for(base, smollm2_path).draft_path == smollm2_path  # speculative auto
    assert plan_for(dataclasses.replace(base, speculative="ngram"), smollm2_path).draft_bytes == 0
    assert plan_for(SETTINGS, smollm2_path).draft_path is None
