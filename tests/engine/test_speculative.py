"""Speculative decoding: the drafting policy's parts, and on the real SmolLM2 answers identical to plain decoding."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from edge_runtime.config import Settings, from_mapping
from edge_runtime.engine import LlamaEngine
from edge_runtime.engine import speculative as spec
from edge_runtime.engine.speculative import (
    Acceptance,
    DecodeCosts,
    DraftWant,
    NgramDrafter,
    SpecSettings,
    Speculator,
    choose,
)
from edge_runtime.engine.types import ChatMessage, Chunk, GenerationRequest, TokenLogprob
from edge_runtime.errors import ConfigError

from .conftest import chat, collect

SIGN = ("Maple Court Residents' Association. Annual meeting: Thursday 14 March 2027 at 7:30 pm in the community "
        "hall, 12 Birch Lane. Agenda: budget for the new playground, parking permits, and the election of a "
        "treasurer. Contact: Dana Whitfield, phone 555-0142, email dana.whitfield@maplecourt.example.")
REPEAT = f"Repeat the following text exactly, word for word:\n\n{SIGN}"
JSON_ASK = f"Extract the contact's name, phone and email from this notice as JSON.\n\n{SIGN}"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "phone": {"type": "string"},
                                           "email": {"type": "string"}}, "required": ["name", "phone", "email"]}


# -- the parts ------------------------------------------------------------------------------------------------
def test_ngram_drafter_continues_the_latest_earlier_occurrence() -> None:
    drafter = NgramDrafter()
    cells = [5, 1, 2, 3, 4, 9, 9, 1, 2, 3, 7, 8, 1, 2]
    # The last 3 tokens (1 2, then the next token 3) occurred twice before; the latest was followed by 7 8 1 2.
    assert drafter.draft([DraftWant(0, cells, 3, 4)]) == [[7, 8, 1, 2]]
    # A sequence without any repeat drafts nothing.
    assert drafter.draft([DraftWant(1, [10, 11, 12], 13, 4)]) == [[]]
    # The slot's cells were cut back (a rejected draft): the later occurrence is gone from the index too.
    assert drafter.draft([DraftWant(0, cells[:9], 3, 3)]) == [[4, 9, 9]]
    # A new request in the slot, sharing nothing: nothing stale is proposed.
    assert drafter.draft([DraftWant(0, [20, 21], 22, 3)]) == [[]]
    # Draft length is capped by what exists after the match.
    assert drafter.draft([DraftWant(2, [1, 2, 3, 1, 2], 3, 8)]) == [[1, 2, 3]]


def test_decode_costs_follow_the_measured_medians_not_one_slow_decode() -> None:
    costs = DecodeCosts(64)
    assert costs.time(5) / costs.time(1) == pytest.approx(1 + spec.PRIOR_SLOPE * 4)  # nothing measured: the prior
    for seconds in (0.010, 0.010, 0.010, 1.0):  # one decode stalled by another process
        costs.observe(1, seconds)
    costs.observe(3, 0.020)
    costs.observe(9, 0.044)
    costs._rebuild()
    assert costs.time(1) == pytest.approx(0.010)
    # Sizes >= 2 lie on the line through the measured sizes: 8 ms + 4 ms per token.
    assert [costs.time(n) for n in (2, 5, 16)] == pytest.approx([0.016, 0.028, 0.072])
    costs.observe(0, 1.0)  # sizes outside the table are ignored
    costs.observe(65, 1.0)
    assert costs.time(64) < 1.0


def test_choose_drafts_only_where_it_pays() -> None:
    costs = DecodeCosts(64)  # the prior: every extra token costs 0.4 of a one-token decode
    alone_sure = choose([(0.98, 16)], produced=1, batch=1, costs=costs, rows=32)
    alone_unsure = choose([(0.3, 16)], produced=1, batch=1, costs=costs, rows=32)
    assert alone_sure[0] >= 8 and alone_unsure == [0]
    # Eight slots already decoding: the same guess costs every one of them, so far less of it is worth checking.
    crowded = choose([(0.9, 16)] + [(0.0, 0)] * 7, produced=8, batch=8, costs=costs, rows=32)
    assert crowded[0] < choose([(0.9, 16)], produced=1, batch=1, costs=costs, rows=32)[0]
    # The rows reserved for drafts bound the total.
    assert sum(choose([(0.99, 16)] * 4, produced=4, batch=4, costs=costs, rows=10)) <= 10
    # Nothing to draft: nothing chosen.
    assert choose([(0.99, 0)], produced=1, batch=1, costs=costs, rows=32) == [0]


def test_a_busy_batch_never_drafts() -> None:
    speculator = Speculator(NgramDrafter(), draft_max=16, rows=32, n_batch=256)
    assert speculator.wanted(1) and speculator.wanted(spec.BUSY_LIMIT)
    assert not speculator.wanted(spec.BUSY_LIMIT + 1) and not speculator.wanted(0)


def test_acceptance_learns_and_forgets() -> None:
    a = Acceptance()
    start = a.rate
    for _ in range(5):
        a.record(8, 8)
    assert a.rate > 0.95
    a.record(8, 0)
    a.record(8, 0)
    assert a.rate < 0.75  # the copy ended: two misses outweigh the long run of hits before them
    for _ in range(200):
        a.idle()
    assert abs(a.rate - start) < 0.01  # long unused evidence fades back to the prior: the job may try again


def test_settings_pick_the_mode() -> None:
    assert SpecSettings.from_settings(Settings()).mode == "ngram"
    assert SpecSettings.from_settings(Settings(speculative="off")).rows == 0
    with pytest.raises(ConfigError, match="needs a draft_model"):
        Settings().replace(speculative="draft")
    # `speculative: off` in YAML arrives as False.
    assert from_mapping(yaml.safe_load("speculative: off")).speculative == "off"
    assert from_mapping(yaml.safe_load("speculative: on")).speculative == "auto"


# -- the engine: answers identical to plain decoding ---------------------------------------------------------------
@pytest.fixture
def fixed_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode costs pinned to the prior's shape, so whether a slot drafts never depends on this machine's load."""
    monkeypatch.setattr(DecodeCosts, "observe", lambda self, n, seconds: None)


def _answers(engine: LlamaEngine, requests: list[GenerationRequest]) -> list[tuple[str, Chunk]]:
    async def together() -> list[tuple[str, Chunk]]:
        return list(await asyncio.gather(*(collect(engine, r) for r in requests)))

    return asyncio.run(together())


def _logprobs(engine: LlamaEngine, request: GenerationRequest) -> list[TokenLogprob]:
    async def every() -> list[TokenLogprob]:
        return [lp async for chunk in engine.generate(request) for lp in chunk.logprobs]

    return asyncio.run(every())


def _answer(engine: LlamaEngine, request: GenerationRequest) -> tuple[str, Chunk]:
    text, last = asyncio.run(collect(engine, request))
    return text, last


def _pair(make_engine: Callable[..., LlamaEngine], **overrides: Any) -> tuple[LlamaEngine, LlamaEngine]:
    return (make_engine(speculative="off", slot_cache=False, **overrides),
            make_engine(speculative="ngram", slot_cache=False, **overrides))


CASES = {
    "greedy": chat(REPEAT, max_tokens=120),
    "sampled with a seed": chat(REPEAT, max_tokens=120, temperature=0.8, seed=7),
    "repeat penalty": chat(REPEAT, max_tokens=120, repeat_penalty=1.1),
    "json schema": chat(JSON_ASK, max_tokens=80, json_schema=SCHEMA),
    "logprobs": chat(REPEAT, max_tokens=40, logprobs=3),
    "stop string inside a draft": chat(REPEAT, max_tokens=120, stop=("Birch",)),
    "max_tokens inside a draft": chat(REPEAT, max_tokens=23),
}


@pytest.mark.parametrize("name", list(CASES))
def test_speculative_answer_equals_plain_decoding(make_engine: Callable[..., LlamaEngine],
                                                        fixed_costs: None, name: str) -> None:
    plain, fast = _pair(make_engine)
    request = CASES[name]
    text, last = _answer(plain, request)
    spec_text, spec_last = _answer(fast, request)
    assert spec_text == text
    assert spec_last.finish_reason == last.finish_reason
    assert spec_last.usage == last.usage
    if name == "logprobs":
        # The same tokens with the same top alternatives; the values agree to float noise (a row decoded in a
        # batch of 9 goes through other matrix kernels than a row decoded alone, as with continuous batching).
        plain_lp, spec_lp = _logprobs(plain, request), _logprobs(fast, request)
        assert [(t.token, [a for a, _ in t.top]) for t in spec_lp] == [(t.token, [a for a, _ in t.top])
                                                                         for t in plain_lp]
        assert max(abs(a.logprob - b.logprob) for a, b in zip(spec_lp, plain_lp, strict=True)) < 0.02
    status = fast.status()
    assert status.draft_tokens_total > 0
    if name not in ("sampled with a seed",):
        assert status.draft_accepted_total > 0


def test_drafts_really_save_decodes(make_engine: Callable[..., LlamaEngine], fixed_costs: None) -> None:
    """A copied text takes far fewer decodes than tokens: the accepted drafts are delivered, not recomputed."""
    plain, fast = _pair(make_engine)
    _answer(plain, chat(REPEAT, max_tokens=120))
    text, last = _answer(fast, chat(REPEAT, max_tokens=120))
    assert "Dana Whitfield" in text  # the model copies the sign (what makes this case worth speculating on)
    calls = fast.status()
    assert last.usage is not None
    assert calls.draft_accepted_total >= last.usage.completion_tokens // 2
    assert fast._stats.decode_calls < plain._stats.decode_calls * 0.6


def test_concurrent_slots_and_the_prefix_cache_stay_exact(make_engine: Callable[..., LlamaEngine],
                                                                 fixed_costs: None) -> None:
    """Three answers at once (two copying, one free) match their plain runs; then a follow-up that reuses a slot's
    cells (rejected drafts cut from them) matches too."""
    plain, fast = _pair(make_engine, parallel=3)
    requests = [chat(REPEAT, max_tokens=100), chat(JSON_ASK, max_tokens=60),
                chat("Tell me a short story about a robot who learns to paint.", max_tokens=60)]
    expected = [text for text, _ in _answers(plain, requests)]
    got = [text for text, _ in _answers(fast, requests)]
    assert got == expected
    follow_up = GenerationRequest(
        messages=(*requests[0].messages, ChatMessage("assistant", expected[0]), ChatMessage("user", "Again, please.")),
        sampling=requests[0].sampling)
    assert (_answer(fast, follow_up))[0] == (_answer(plain, follow_up))[0]
    assert fast.status().cached_prompt_tokens_total > 0


def test_context_limit_inside_a_draft(make_engine: Callable[..., LlamaEngine], fixed_costs: None) -> None:
    """A slot whose context fills mid-copy stops where plain decoding stops (drafts never pass the limit)."""
    plain, fast = _pair(make_engine, max_sequence_length=180)
    request = chat(REPEAT, max_tokens=500)
    text, last = _answer(plain, request)
    spec_text, spec_last = _answer(fast, request)
    assert (spec_text, spec_last.finish_reason) == (text, last.finish_reason)
    assert last.finish_reason is not None and last.finish_reason.value == "length"
