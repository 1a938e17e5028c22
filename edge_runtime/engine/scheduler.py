"""Continuous batching: slots share one KV cache; each step packs every slot's work into one llama_decode."""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from ..errors import ClawdError, EngineError, InvalidRequest, fresh
from .adapters import adapter_key
from .groups import GroupTurns, has_work
from .logprobs import LogprobReader
from .native import Runtime
from .prompt import PromptBuilder
from .sampling import Sampler
from .sharing import MIN_SHARED_PREFIX, PrefixSharing, common_prefix
from .slots import Job, Slot, Stats
from .speculative import DraftWant, Speculator
from .text import StopMatcher
from .types import Chunk, FinishReason, TokenLogprob, Usage

# Job, Slot and Stats live in .slots, the prefix helpers in .sharing; they stay importable from here.
__all__ = ["MIN_SHARED_PREFIX", "Job", "Scheduler", "Slot", "Stats", "common_prefix"]

log = logging.getLogger(__name__)


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
                 emit: Callable[[Job, Chunk | BaseException], None], done: Callable[[Job], None], *,
                 speculator: Speculator | None = None) -> None:
        """`emit` posts a chunk or error to a job's consumer; `done` is called once when a job leaves its slot.
        With a `speculator`, slots' guessed next tokens are verified in the same decodes."""
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
        self.speculator = speculator
        self._sharing = PrefixSharing(rt, self.slots, stats)

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
        self._sharing.share(slot, job)
        if job.wait_for is None:
            self._sharing.count_cached(job)
        return True

    # -- one step -----------------------------------------------------------------------------------------
    def step(self) -> None:
        """Release cancelled jobs, pack one batch (all next tokens, then prompt chunks), decode, sample."""
        rt = self.rt
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._release(slot, cancelled=True)
        for slot in self.slots:
            if slot.job is not None and slot.job.wait_for is not None:
                self._sharing.resolve_wait(slot, slot.job)
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
        drafts = self._drafts(generating, prompting) if self.speculator is not None and \
            self.speculator.wanted(len(generating)) else None
        budget = rt.n_batch - len(generating)
        at = 0
        outputs: list[tuple[Slot, int, list[int]]] = []
        undo: list[tuple[Slot, int, int]] = []
        for i, slot in enumerate(generating):
            job = slot.job
            assert job is not None
            undo.append((slot, len(slot.tokens), job.n_past))
            draft = drafts[i] if drafts is not None else None
            if draft:
                first = at
                at = rt.add(at, [job.next_token, *draft], len(slot.tokens), slot.seq, logits=True, all_logits=True)
                slot.tokens.append(job.next_token)
                slot.tokens.extend(draft)
                budget -= len(draft)
                outputs.append((slot, first, draft))
                continue
            at = rt.add_one(at, job.next_token, len(slot.tokens), slot.seq)
            slot.tokens.append(job.next_token)
            outputs.append((slot, at - 1, []))
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
                outputs.append((slot, at - 1, []))
        if at == 0:
            return
        started = time.perf_counter()
        status = rt.decode()
        if self.speculator is not None:
            self.speculator.costs.observe(at, time.perf_counter() - started)
        self.stats.decode_calls += 1
        if status != 0:
            self._decode_failed(status, undo)
            return
        self.stats.prompt_tokens_evaluated += at - len(generating) - sum(len(d) for _, _, d in outputs)
        for slot, index, draft in outputs:
            job = slot.job
            assert job is not None
            if draft:
                self._verify(slot, job, index, draft)
                continue
            if not job.generating:
                job.generating = True
                for twin in self._sharing.forks(slot, job):
                    self._sample(twin, index)
            self._sample(slot, index)

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        assert job is not None
        self._on_token(slot, *self._pick(job, index))

    def _pick(self, job: Job, index: int) -> tuple[int, TokenLogprob | None]:
        """The job's token from batch row `index` (and its logprobs if the request asked for them)."""
        assert job.sampler is not None
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
        return token, logprob

    # -- speculative decoding -------------------------------------------------------------------------------
    def _drafts(self, generating: list[Slot], prompting: list[Slot]) -> list[list[int]]:
        """This step's guessed tokens for each generating slot (most steps, most slots: none)."""
        assert self.speculator is not None
        wants, jobs = [], []
        for slot in generating:
            job = slot.job
            assert job is not None
            # Guesses stay inside draft_max, the slot's context and the answer's max_tokens (this step yields one
            # more).
            limit = min(self.speculator.draft_max, self.slot_limit - 1 - len(slot.tokens),
                        job.request.sampling.max_tokens - job.n_generated - 1)
            wants.append(DraftWant(slot.seq, slot.tokens, job.next_token, max(0, limit)))
            jobs.append(job)
        pending = sum(len(s.job.prompt) - s.job.n_past for s in prompting if s.job is not None)
        return self.speculator.drafts(wants, [job.acceptance for job in jobs], pending)

    def _verify(self, slot: Slot, job: Job, first: int, draft: list[int]) -> None:
        """Keep the drafted tokens the model's own picks agree with, and cut the rest from the KV cache.

        Row first + i holds the logits after the i-th token of [next_token, *draft]. Its token is picked and
        delivered exactly as plain decoding would (same sampler state: it has seen just the tokens before; a
        sampled pick draws from the same RNG stream), and the next row is used only while the picks equal the
        draft. So the answer is the one plain decoding gives, token for token: greedy or sampled, with grammars,
        penalties and logprobs. A sampled pick simply agrees with a guess less often.
        """
        at = len(slot.tokens) - len(draft) - 1  # the position of the token decoded before the draft
        fed = accepted = 0
        for i in range(len(draft) + 1):
            token, logprob = self._pick(job, first + i)
            self._on_token(slot, token, logprob, filled=at + 1 + i)
            fed += 1
            if slot.job is not job or i == len(draft) or token != draft[i]:
                break
            accepted += 1
        self.stats.draft_tokens += len(draft)
        self.stats.draft_accepted += accepted
        job.acceptance.record(len(draft), accepted)
        # Cells up to the last delivered token's predecessor are the answer's; the last delivered token is the
        # next one to decode (a finished answer's cells stay as a prefix cache like any other).
        self._cut(slot, at + fed)

    def _cut(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            self.rt.seq_rm(slot.seq, keep)
            del slot.tokens[keep:]

    def _on_token(self, slot: Slot, token: int, logprob: TokenLogprob | None, filled: int | None = None) -> None:
        """Deliver one generated token; `filled` is the slot's length when the token was picked (default: now)."""
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
        elif job.n_generated >= job.request.sampling.max_tokens or \
                (len(slot.tokens) if filled is None else filled) >= self.slot_limit:
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

    def close(self) -> None:
        """Free the drafter and the runtime (the slots' cells go with it)."""
        if self.speculator is not None:
            self.speculator.close()
            self.speculator = None
        self.rt.close()

    def fail_all(self, error: BaseException) -> None:
        """Fail every running job with its own copy of `error`."""
        for slot in self.slots:
            job = slot.job
            if job is not None:
                self._release(slot, cancelled=False)
                self.emit(job, fresh(error))
