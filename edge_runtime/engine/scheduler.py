"""Continuous batching: slots share one KV cache; each step packs every slot's work into one llama_decode."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from ..errors import ClawdError, EngineError, InvalidRequest, fresh
from .adapters import adapter_key
from .groups import GroupTurns, has_work
from .logprobs import LogprobReader
from .native import Copy, Runtime
from .prompt import PromptBuilder
from .sampling import Sampler
from .slots import Job, Slot, Stats
from .text import StopMatcher
from .types import Chunk, FinishReason, TokenLogprob, Usage

# Job, Slot and Stats live in .slots; they stay importable from here, where the engine has always taken them.
__all__ = ["MIN_SHARED_PREFIX", "Job", "Scheduler", "Slot", "Stats", "common_prefix"]

log = logging.getLogger(__name__)
# A prefix held by another slot is copied (or waited for) only when it saves at least this many prompt tokens.
MIN_SHARED_PREFIX = 8


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _preparation_error(exc: Exception) -> ClawdError:
    """What a request whose preparation raised `exc` is told (the request alone fails; the engine goes on)."""
    if isinstance(exc, ClawdError):
        return exc
    if isinstance(exc, UnicodeEncodeError):  # e.g. a lone surrogate ("\ud800" in JSON) cannot become UTF-8
        return InvalidRequest(f"the request holds text that is not valid Unicode ({exc.reason} at character "
                              f"{exc.start})")
    log.exception("preparing a request failed")
    return EngineError(f"could not prepare the request: {type(exc).__name__}: {exc}")


class Scheduler:
    """Owns the slots of one loaded Runtime; every method runs on the engine's worker thread."""

    def __init__(self, rt: Runtime, prompts: PromptBuilder, stats: Stats,
                 emit: Callable[[Job, Chunk | BaseException], None], done: Callable[[Job], None]) -> None:
        """`emit` posts a chunk or error to a job's consumer; `done` is called once when a job leaves its slot."""
        self.rt = rt
        self.prompts = prompts
        self.stats = stats
        self._logprobs: LogprobReader | None = None
        self.emit = emit
        self.done = done
        self.slots = [Slot(seq) for seq in range(rt.plan.n_parallel)]
        self.slot_limit = min(rt.plan.n_ctx_per_slot, rt.n_ctx_seq)
        self._clock = itertools.count(1)
        self._turns = GroupTurns()
        self._grouped = len(rt.adapters) > 0  # without adapters every slot is in one group: skip the bookkeeping

    # -- admission ----------------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return sum(1 for s in self.slots if s.job is None)

    def busy(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    def cells(self, busy: bool) -> int:
        return sum(len(s.tokens) for s in self.slots if (s.job is not None) == busy)

    def admit(self, job: Job) -> bool:
        """Prepare `job` and give it the free slot with the longest cached prefix; False if no slot is free."""
        free = [s for s in self.slots if s.job is None]
        if not free:
            return False
        try:
            job.prompt = self.prompts.tokens(job.request, self.slot_limit)
            job.adapters = adapter_key(job.request.adapters)
            self.rt.adapters.check(job.adapters)
            params = job.request.sampling
            job.stop = StopMatcher(params.stop)
            job.sampler = Sampler(self.rt.lib, self.rt.vocab, params, job.grammar, n_vocab=self.rt.n_vocab,
                                  n_ctx=self.slot_limit, lazy=job.lazy)
        except Exception as exc:  # noqa: BLE001 - one request's preparation must never stop the engine worker
            self.done(job)
            self.emit(job, _preparation_error(exc))
            return True
        def cached(s: Slot) -> int:  # cells computed under other adapters are no prefix of this job's
            return common_prefix(s.tokens, job.prompt) if s.tag == job.adapters else 0

        slot = max(free, key=lambda s: (cached(s), -s.last_used))
        reuse = min(cached(slot), len(job.prompt) - 1)
        rt = self.rt
        if reuse > 0 and rt.n_swa > 0 and rt.seq_pos_min(slot.seq) > max(0, reuse - rt.n_swa):
            reuse = 0  # the sliding window already dropped cells this continuation would attend to
        if not rt.seq_rm(slot.seq, reuse):
            reuse = 0
            rt.seq_rm(slot.seq, 0)
        del slot.tokens[reuse:]
        slot.tag = job.adapters
        job.n_past = reuse
        job.order = next(self._clock)
        last_n = job.request.sampling.penalty_last_n
        job.sampler.accept_prompt(job.prompt if last_n < 0 else job.prompt[max(0, len(job.prompt) - last_n):])
        slot.job = job
        self._share(slot, job)
        if job.wait_for is None:
            self._count_cached(job)
        return True

    def _share(self, slot: Slot, job: Job) -> None:
        """Start from a longer prefix held by another slot: copy it now, or wait while it is being evaluated.

        Requests with the same system prompt (the kiosk's, or every request of an OpenAI app) then evaluate it
        once: a burst of 8 chats costs one system prompt and 8 questions instead of 8 of each, which is most of
        their time to first token on a 2-core CPU.
        """
        limit = len(job.prompt) - 1
        now, donor = job.n_past, None  # the longest prefix already evaluated in another slot
        later = job.n_past  # the longest one another slot's prompt is still evaluating
        awaited: tuple[Slot, Job, int] | None = None
        for other in self.slots:
            if other is slot or other.tag != slot.tag:
                continue
            n = min(common_prefix(other.tokens, job.prompt), limit)
            if n > now:
                now, donor = n, other
            o = other.job
            if o is not None and not o.generating and o.wait_for is None:
                m = min(common_prefix(o.prompt, job.prompt), limit)
                if m > later:
                    later, awaited = m, (other, o, m)
        if awaited is not None and later >= now + MIN_SHARED_PREFIX:
            job.wait_for = awaited
        elif donor is not None and now >= job.n_past + MIN_SHARED_PREFIX:
            self._copy_from(donor, slot, now)

    def _copy_from(self, donor: Slot, slot: Slot, n: int) -> bool:
        """Make the first n cells of `donor` this slot's prefix; False if they could not be copied."""
        job = slot.job
        assert job is not None
        if donor.tag != slot.tag:
            return False  # e.g. an awaited donor slot since reused under other adapters: its cells are not ours
        rt = self.rt
        result = rt.copy_prefix(donor.seq, slot.seq, n)
        if result is Copy.UNTOUCHED:
            return False  # refused before touching the slot: its own cached prefix (job.n_past) is still good
        # A sliding window may already have dropped cells the copy's continuation would attend to.
        if result is Copy.COPIED and not (rt.n_swa > 0 and rt.seq_pos_min(slot.seq) > 0):
            slot.tokens[:] = job.prompt[:n]
            job.n_past = n
            self.stats.prefix_copies += 1
            return True
        rt.seq_rm(slot.seq, 0)
        slot.tokens.clear()
        job.n_past = 0
        return False

    def _resolve_wait(self, slot: Slot, job: Job) -> None:
        """Copy the awaited prefix once it is evaluated, or whatever is left of it if its owner went away."""
        assert job.wait_for is not None
        donor, donor_job, wanted = job.wait_for
        n = min(common_prefix(donor.tokens, job.prompt), len(job.prompt) - 1)
        if donor.job is donor_job and not donor_job.generating and n < wanted:
            return
        job.wait_for = None
        if n >= job.n_past + MIN_SHARED_PREFIX:
            self._copy_from(donor, slot, n)
        self._count_cached(job)

    def _count_cached(self, job: Job) -> None:
        # Once per job, when its cached prefix is final (a copy may still replace or empty it before that), so
        # the exported counter never goes down.
        job.n_cached = job.n_past
        self.stats.cached_prompt_tokens += job.n_past

    # -- one step -----------------------------------------------------------------------------------------
    def step(self) -> None:
        """Release cancelled jobs, pack one batch (all next tokens, then prompt chunks), decode, sample."""
        rt = self.rt
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot, cancelled=True)
        for slot in self.slots:
            if slot.job is not None and slot.job.wait_for is not None:
                self._resolve_wait(slot, slot.job)
        busy = [s for s in self.slots if s.job is not None]
        if self._grouped:
            # llama.cpp applies adapters per context, so one decode serves one adapter set: this step's is the
            # next one in turn among those with work (see GroupTurns), set on the context only when it changes.
            turn = self._turns.pick(s.tag for s in busy if has_work(s))
            if turn is None:
                return
            busy = [s for s in busy if s.tag == turn]
            rt.adapters.apply(turn)
        generating = [s for s in busy if s.job is not None and s.job.generating]
        prompting = sorted((s for s in busy if s.job is not None and not s.job.generating),
                           key=lambda s: s.job.order if s.job else 0)
        budget = rt.n_batch - len(generating)
        at = 0
        outputs: list[tuple[Slot, int]] = []
        undo: list[tuple[Slot, int, int]] = []
        for slot in generating:
            job = slot.job
            assert job is not None
            undo.append((slot, len(slot.tokens), job.n_past))
            at = rt.add_one(at, job.next_token, len(slot.tokens), slot.seq)
            slot.tokens.append(job.next_token)
            outputs.append((slot, at - 1))
        for slot in prompting:
            job = slot.job
            assert job is not None
            if job.wait_for is not None:
                continue
            take = min(budget, len(job.prompt) - job.n_past)
            if take <= 0:
                break
            undo.append((slot, len(slot.tokens), job.n_past))
            chunk = job.prompt[job.n_past:job.n_past + take]
            last = job.n_past + take == len(job.prompt)
            at = rt.add(at, chunk, job.n_past, slot.seq, logits=last)
            slot.tokens.extend(chunk)
            job.n_past += take
            budget -= take
            if last:
                outputs.append((slot, at - 1))
        if at == 0:
            return
        status = rt.decode()
        self.stats.decode_calls += 1
        if status != 0:
            self._decode_failed(status, undo)
            return
        self.stats.prompt_tokens_evaluated += at - len(generating)
        for slot, index in outputs:
            job = slot.job
            assert job is not None
            if not job.generating:
                job.generating = True
                for twin in self._forks(slot, job):
                    self._sample(twin, index)
            self._sample(slot, index)

    def _forks(self, slot: Slot, job: Job) -> list[Slot]:
        """The slots waiting for exactly this prompt (the other choices of an n > 1 request, or the same request
        sent twice), now holding a copy of its cells: they sample their first token from the same logits row,
        so the prompt is evaluated once for all of them."""
        twins = []
        for other in self.slots:
            o = other.job
            if o is None or o.wait_for is None or o.wait_for[1] is not job or o.prompt != job.prompt:
                continue
            if self._copy_from(slot, other, len(job.prompt)):
                o.wait_for = None
                self._count_cached(o)
                o.generating = True
                twins.append(other)
        return twins

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        assert job is not None and job.sampler is not None
        rt = self.rt
        token = rt.pick_greedy(index) if job.sampler.greedy else None
        if token is None:
            token = job.sampler.sample(rt.ctx, index)
        top = job.request.sampling.logprobs
        logprob = None
        if top is not None:
            if self._logprobs is None:
                self._logprobs = LogprobReader(rt.n_vocab, rt.piece)
            logprob = self._logprobs.read(rt.logits_address(index), token, top)
        self._on_token(slot, token, logprob)

    def _on_token(self, slot: Slot, token: int, logprob: TokenLogprob | None) -> None:
        job = slot.job
        assert job is not None and job.sampler is not None
        rt = self.rt
        if rt.is_eog(token):
            self._finish(slot, FinishReason.STOP, job.stop.feed(job.utf8.flush())[0] + job.stop.flush())
            return
        job.n_generated += 1
        logprobs = () if logprob is None else (logprob,)
        decoded = job.utf8.feed(rt.piece(token))
        if decoded and not job.sampler.watch(decoded, self._text_tokens):
            # The model started a call whose first characters the call grammar cannot continue: end here (the
            # consumer reports the broken call) rather than feed llama.cpp's grammar a token it would abort on.
            text, _ = job.stop.feed(decoded)
            self._finish(slot, FinishReason.STOP, text + job.stop.flush(), logprobs)
            return
        text, stopped = job.stop.feed(decoded)
        if stopped:
            self._finish(slot, FinishReason.STOP, text, logprobs)
        elif job.n_generated >= job.request.sampling.max_tokens or len(slot.tokens) >= self.slot_limit:
            tail, stopped = job.stop.feed(job.utf8.flush())
            self._finish(slot, FinishReason.STOP if stopped else FinishReason.LENGTH,
                         text + tail + ("" if stopped else job.stop.flush()), logprobs)
        else:
            job.next_token = token
            if text or logprobs:
                self.emit(job, Chunk(text, index=job.index, logprobs=logprobs))

    def _text_tokens(self, text: str) -> list[int]:
        return self.rt.tokenize(text, add_special=False, parse_special=False)

    def _finish(self, slot: Slot, reason: FinishReason, text: str,
                logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        job = slot.job
        assert job is not None
        usage = Usage(prompt_tokens=len(job.prompt), completion_tokens=job.n_generated,
                      cached_prompt_tokens=job.n_cached)
        self.stats.completion_tokens += job.n_generated
        self.stats.requests_finished += 1
        self._release(slot, cancelled=False)
        self.emit(job, Chunk(text, finish_reason=reason, usage=usage, index=job.index, logprobs=logprobs))

    def _release(self, slot: Slot, *, cancelled: bool) -> None:
        """Free the slot now; its cells stay as a prefix cache, except a cancelled answer's (never continued)."""
        job = slot.job
        assert job is not None
        self.done(job)
        if job.sampler is not None:
            job.sampler.free()
            job.sampler = None
        if cancelled:
            keep = min(len(slot.tokens), len(job.prompt))
            self.rt.seq_rm(slot.seq, keep)
            del slot.tokens[keep:]
            self.stats.completion_tokens += job.n_generated
            self.stats.requests_cancelled += 1
        slot.job = None
        slot.last_used = next(self._clock)

    def _decode_failed(self, status: int, undo: list[tuple[Slot, int, int]]) -> None:
        for slot, n_tokens, n_past in undo:
            del slot.tokens[n_tokens:]
            if slot.job is not None:
                slot.job.n_past = n_past
        log.error("llama_decode failed with status %d", status)
        error = EngineError(f"llama.cpp failed to decode (status {status})")
        for slot, _, _ in undo:
            job = slot.job
            if job is not None:
                self._release(slot, cancelled=False)
                self.emit(job, fresh(error))
            self.rt.seq_rm(slot.seq, 0)
            slot.tokens.clear()

    def cancel_all(self) -> None:
        """End every running answer now, as cancelled (the shutdown bound): each consumer gets a final chunk."""
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, FinishReason.CANCELLED, "")

    def fail_all(self, error: BaseException) -> None:
        """Fail every running job with its own copy of `error`."""
        for slot in self.slots:
            job = slot.job
            if job is not None:
                self._release(slot, cancelled=False)
                self.emit(job, fresh(error))
