"""Speculative decoding's decisions: who drafts how many tokens this step, from n-grams or a draft model."""
from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config import Settings
    from .native import Runtime

# The n-gram lengths looked up, longest first: a longer match predicts its continuation better. Not 2: on the
# benchmark's chat, JSON and repeat prompts, drafts after a 2-token match were accepted 12%, 44% and 100% of the
# time (of 72, 81 and 9 tokens), after a 4-token match 79%, 89% and 98% (of 190, 265 and 361): the 2-token ones
# mostly cost a bigger decode for nothing.
NGRAM_SIZES = (4, 3)
# Decode time grows with the batch: t(n) ~ t(1) * (1 + r * (n - 1)). Until this board's own decodes say otherwise,
# r is what SmolLM2-135M Q4_1 measured on 2 Zen 4 cores (llama-bench pp1..pp8 and engine batches of 1-9 tokens
# with every row's logits: 11.5 ms for 1 token, 45 ms for 9).
PRIOR_SLOPE = 0.4
# The cost table is rebuilt after this many new measurements (a per-step rebuild would cost more than it tells)
# from the last RECENT decodes of each size up to FIT_MAX tokens.
COST_REFRESH = 16
RECENT = 9
FIT_MAX = 64
# A job's acceptance rate starts here (optimistic: one short draft is the only way to learn), counted as this many
# observations; older observations fade by DECAY per verification, so a quote inside a chat is noticed.
PRIOR_ACCEPT = 0.9
PRIOR_WEIGHT = 1.0
DECAY = 0.95
# A rejected token usually means the text left what it was copying (a quoted value ended, the sign was read out):
# the run of hits before it says little about the next guess, so a miss keeps only this share of them.
MISS_KEEP = 0.3
# No slot drafts while more than this many slots generate. With drafting allowed at any load, 8 clients on 2 cores
# measured 0.87x and 0.89x of plain decoding (1.00x with this limit), although the policy below already drafts
# less in a full batch. Not measured apart, but a likely part of it: a draft changes the batch's shape, and
# llama.cpp reuses its compute graph only while shapes repeat, so it rebuilds it for that step and the next.
BUSY_LIMIT = 4
# Between drafts the evidence fades toward the prior by this factor per step: a job whose drafts failed tries
# again, briefly, after a few dozen tokens (its text may have reached a part that repeats).
IDLE_DECAY = 0.97


@dataclass(frozen=True)
class SpecSettings:
    """How a loaded model speculates: `mode` ngram, draft or off; at most `draft_max` tokens per slot per step."""

    mode: str = "ngram"
    draft_max: int = 16
    draft_model: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, draft_path: Path | None = None) -> SpecSettings:
        """auto drafts with the draft model when one is configured (`draft_path`, resolved), else with n-grams."""
        mode = settings.speculative
        if mode == "auto":
            mode = "draft" if settings.draft_model is not None else "ngram"
        return cls(mode=mode, draft_max=settings.draft_max, draft_model=draft_path if mode == "draft" else None)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def speculator(self, target: Runtime, *, threads: int) -> Speculator | None:
        """Speculation for a loaded target (a draft model is loaded now, next to it); None when off."""
        drafter: Drafter
        if self.mode == "ngram":
            drafter = NgramDrafter()
        elif self.mode == "draft" and self.draft_model is not None:
            from .draftmodel import DraftModel

            plan = target.plan
            drafter = DraftModel(self.draft_model, target, n_seq=plan.n_parallel, n_ctx_seq=plan.n_ctx_per_slot,
                                 threads=threads, kv_type=plan.kv_type)
        else:
            return None
        return Speculator(drafter, draft_max=self.draft_max, rows=target.plan.draft_rows, n_batch=target.n_batch)

    @property
    def rows(self) -> int:
        """Logits rows beyond one per slot that a verifying decode may ask for (the planner reserves them).

        One full draft's worth, shared by the slots drafting in a step: each row is n_vocab floats of compute
        buffer and of output buffer, so the plan grows by 6 MiB for SmolLM2 and 32 MiB for Gemma-3's 262k tokens.
        """
        return self.draft_max if self.enabled else 0


@dataclass(frozen=True)
class DraftWant:
    """A slot asking for a draft: its KV sequence, its cells' tokens, the token decoded next, and how many."""

    seq: int
    tokens: list[int]
    last: int
    n: int


class Drafter(Protocol):
    """Proposes tokens to follow each slot's `last`; the target verifies them, so a wrong guess costs only time."""

    # True when drafting costs (almost) nothing, so drafts are made first and the policy cuts them to length.
    cheap: bool

    def draft(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        """At most want.n tokens per want, in order; fewer (or none) where the drafter has no good guess."""
        ...

    def close(self) -> None:
        ...


@dataclass
class _Index:
    """The n-grams of one sequence's confirmed tokens, each mapped to where its latest continuation starts."""

    tokens: list[int] = field(default_factory=list)
    grams: dict[int, dict[tuple[int, ...], int]] = field(default_factory=lambda: {n: {} for n in NGRAM_SIZES})

    def extend(self, new: Sequence[int]) -> None:
        tokens, grams = self.tokens, self.grams
        for token in new:
            i = len(tokens)
            for n, table in grams.items():
                if i >= n:
                    table[tuple(tokens[i - n:i])] = i  # the n tokens before position i are followed by tokens[i]
            tokens.append(token)


def continues(have: list[int], cells: list[int], last: int) -> bool:
    """Whether `have` is a prefix of cells + [last] (so a mirror of it only needs the rest appended)."""
    n = len(have)
    if n <= len(cells):
        return cells[:n] == have
    return n == len(cells) + 1 and have[-1] == last and have[:-1] == cells


class NgramDrafter:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last n tokens.

    It needs no model: what it guesses is what the prompt or the answer already holds, which is what quoting a
    sign back, filling JSON from an OCR'd text, tool-call arguments and edited code repeat.
    """

    cheap = True

    def __init__(self) -> None:
        self._indexes: dict[int, _Index] = {}

    def draft(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        return [self._one(want) for want in wants]

    def _one(self, want: DraftWant) -> list[int]:
        index = self._sync(want.seq, want.tokens, want.last)
        tokens = index.tokens
        end = len(tokens)
        for n, table in index.grams.items():
            if end < n:
                continue
            start = table.get(tuple(tokens[end - n:]))
            if start is not None:
                return tokens[start:start + want.n]
        return []

    def _sync(self, seq: int, cells: list[int], last: int) -> _Index:
        """The index of cells + [last], updated by what was appended since the last call (rebuilt otherwise)."""
        index = self._indexes.get(seq)
        if index is None or not continues(index.tokens, cells, last):
            index = self._indexes[seq] = _Index()
        have = len(index.tokens)
        if have < len(cells):
            index.extend(cells[have:])
        if len(index.tokens) == len(cells):
            index.extend((last,))
        return index

    def close(self) -> None:
        self._indexes.clear()


class DecodeCosts:
    """What a decode of n tokens costs on this board, learnt from the decodes themselves.

    One decode alone is noisy (another process, a page fault) and each choice of draft length decides which sizes
    get measured next, so per-size averages drift and lock in: measured as single-stream speed-ups between 1.0x and
    1.9x for the same request, run to run. So t(1) is the median of its recent decodes, and larger sizes follow one
    line a + b*n fitted through the medians of every size seen up to FIT_MAX (prompt chunks of hundreds of tokens
    cost less per token and would bend it).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._recent: dict[int, deque[float]] = {}
        self._table: list[float] = []
        self._pending = COST_REFRESH
        self._rebuild()

    def observe(self, n: int, seconds: float) -> None:
        if not 0 < n <= min(self._limit, FIT_MAX):
            return
        recent = self._recent.get(n)
        if recent is None:
            recent = self._recent[n] = deque(maxlen=RECENT)
            self._pending = 0  # a size never seen before changes the fit: rebuild now
        recent.append(seconds)
        self._pending -= 1
        if self._pending <= 0:
            self._rebuild()

    def time(self, n: int) -> float:
        return self._table[min(max(n, 1), self._limit)]

    def _rebuild(self) -> None:
        self._pending = COST_REFRESH
        medians = {n: (statistics.median(r), len(r)) for n, r in self._recent.items()}
        one = medians.pop(1, None)
        line = self._line(medians)
        if line is None:
            unit = one[0] if one is not None else 1.0
            line = (unit * (1 - PRIOR_SLOPE), unit * PRIOR_SLOPE)
        a, b = line
        first = one[0] if one is not None else a + b
        self._table = [first] * 2 + [max(first, a + b * n) for n in range(2, self._limit + 1)]

    @staticmethod
    def _line(points: dict[int, tuple[float, int]]) -> tuple[float, float] | None:
        """Weighted least squares through (size, median) points of sizes >= 2; one point takes the prior slope."""
        if not points:
            return None
        if len(points) == 1:
            ((n, (t, _)),) = points.items()
            unit = t / (1 + PRIOR_SLOPE * (n - 1))
            return unit * (1 - PRIOR_SLOPE), unit * PRIOR_SLOPE
        w = sum(c for _, c in points.values())
        mx = sum(n * c for n, (_, c) in points.items()) / w
        my = sum(t * c for t, c in points.values()) / w
        sxx = sum(c * (n - mx) ** 2 for n, (_, c) in points.items())
        sxy = sum(c * (n - mx) * (t - my) for n, (t, c) in points.items())
        b = max(sxy / sxx, 0.0) if sxx > 0 else 0.0
        return my - b * mx, b


@dataclass
class Acceptance:
    """How often one job's drafted tokens were accepted lately (a fading count of hits and misses)."""

    hits: float = 0.0
    misses: float = 0.0

    @property
    def rate(self) -> float:
        return (self.hits + PRIOR_ACCEPT * PRIOR_WEIGHT) / (self.hits + self.misses + PRIOR_WEIGHT)

    def record(self, drafted: int, accepted: int) -> None:
        missed = accepted < drafted
        self.hits = self.hits * (MISS_KEEP if missed else DECAY) + accepted
        self.misses = self.misses * DECAY + missed

    def idle(self) -> None:
        self.hits *= IDLE_DECAY
        self.misses *= IDLE_DECAY


def choose(candidates: Sequence[tuple[float, int]], produced: int, batch: int, costs: DecodeCosts, *,
           rows: int, draft_step: float = 0.0) -> list[int]:
    """How many tokens each candidate drafts: the lengths that maximise the step's expected tokens per second.

    `candidates` are (acceptance rate, most tokens it can draft); `produced` is the tokens the step yields
    without drafts (one per generating slot), `batch` the tokens it decodes, `rows` the most drafted tokens in
    all, `draft_step` what making one more draft token costs (a draft model's decode, shared by every slot it
    drafts for; 0 for n-grams). A drafted token adds its cost to every slot in the step, so with a full batch on
    a small board drafting mostly stops by itself; alone, a slot drafts as far as its acceptance makes worthwhile.
    """
    lengths = [0] * len(candidates)
    value, size, longest = float(produced), batch, 0
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i][0])
    for i in order:
        rate, most = candidates[i][0], min(candidates[i][1], rows)
        spent = costs.time(size) + draft_step * longest
        best_k, best_ratio, best_gain = 0, value / spent, 0.0
        gain, p = 0.0, 1.0
        for k in range(1, most + 1):
            p *= rate
            gain += p  # expected accepted tokens of a k-token draft: rate + rate^2 + ... + rate^k
            ratio = (value + gain) / (costs.time(size + k) + draft_step * max(k, longest))
            if ratio > best_ratio:
                best_k, best_ratio, best_gain = k, ratio, gain
        if best_k:
            lengths[i] = best_k
            value += best_gain
            size += best_k
            rows -= best_k
            longest = max(longest, best_k)
    return lengths


class Speculator:
    """A loaded model's drafter and what it knows about this board's decode costs; used by the scheduler."""

    def __init__(self, drafter: Drafter, *, draft_max: int, rows: int, n_batch: int) -> None:
        """`rows`: the logits rows a decode has for drafts (plan.draft_rows); `n_batch`: the batch's tokens."""
        self.drafter = drafter
        self.costs = DecodeCosts(n_batch)
        self._draft_step: float | None = None  # seconds per drafted position of the last drafts (a draft model)
        self.draft_max = draft_max
        self._rows = rows
        self._n_batch = n_batch

    def wanted(self, generating: int) -> bool:
        """Whether slots may draft at all in a step where `generating` slots decode their next token."""
        return 0 < generating <= BUSY_LIMIT

    def drafts(self, wants: Sequence[DraftWant], acceptance: Sequence[Acceptance], pending: int) -> list[list[int]]:
        """Each generating slot's draft for this step ([] for most); `pending`: prompt tokens waiting for room.

        A want's n is at most draft_max (the caller's bound)."""
        drafter = self.drafter
        proposals: list[list[int]] | None = None
        if drafter.cheap:  # n-grams: every guess first, then the policy decides how much of each to check
            made = iter(drafter.draft([w for w in wants if w.n]))
            proposals = [next(made) if w.n else [] for w in wants]
        most = [len(p) for p in proposals] if proposals is not None else [w.n for w in wants]
        room = self._n_batch - len(wants)
        step = 0.0
        if not drafter.cheap:  # until measured, a draft token is taken to cost half a target decode
            step = self._draft_step if self._draft_step is not None else 0.5 * self.costs.time(1)
        lengths = choose([(a.rate, n) for a, n in zip(acceptance, most, strict=True)], len(wants),
                         len(wants) + min(pending, room), self.costs, rows=min(self._rows, room), draft_step=step)
        for a, n in zip(acceptance, lengths, strict=True):
            if n == 0:
                a.idle()
        if proposals is None:  # a draft model: only the lengths chosen are drafted
            asked = [DraftWant(w.seq, w.tokens, w.last, n) for w, n in zip(wants, lengths, strict=True) if n]
            started = time.perf_counter()
            drafted = drafter.draft(asked) if asked else []
            if asked:
                per = (time.perf_counter() - started) / max(lengths)
                self._draft_step = per if self._draft_step is None else 0.8 * self._draft_step + 0.2 * per
            made = iter(drafted)
            proposals = [next(made) if n else [] for n in lengths]
        return [p[:n] for p, n in zip(proposals, lengths, strict=True)]

    def close(self) -> None:
        self.drafter.close()
