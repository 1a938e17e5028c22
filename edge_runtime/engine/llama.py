"""LlamaEngine: the async Engine over one worker thread that loads, batches, and unloads the model when idle."""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ClawdError, EngineBusy, EngineError, InvalidRequest, ShuttingDown, WorkerLost, fresh
from ..gguf_file import inspect
from .jobs import make_jobs
from .outbox import Outbox
from .planner import MemoryPlan, plan_for
from .prompt import PromptBuilder, call_format
from .rpc import parse_workers, unreachable
from .scheduler import Job, Scheduler, Stats
from .slotstate import SlotCache, open_slot_cache
from .specials import SpecialText
from .speculative import SpecSettings
from .template import load_template
from .toolstream import ToolStream
from .types import Chunk, EngineState, EngineStatus, GenerationRequest

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import ResolvedModel
    from .native import Runtime

log = logging.getLogger(__name__)
# When an RPC worker dies mid-run: how long the requests' error answers get to reach their clients before the
# process exits, and its exit status (EX_TEMPFAIL: systemd's Restart=on-failure brings the daemon back).
WORKER_LOST_GRACE = 1.0
EXIT_WORKER_LOST = 75
# n > 1 asks for this many choices at most: each takes a slot (or waits for one) like a request of its own.
MAX_CHOICES = 16
# A stream's text is delivered at most this often (its first token and its end at once); see Outbox. 50 ms is
# below what a reader or the kiosk's sentence splitter notices, and each delivery wakes the event loop, whose CPU
# time comes out of llama.cpp's two threads on a 2-core board (measured: +1-2% single-stream tok/s over 20 ms).
STREAM_INTERVAL = 0.05


class LlamaEngine:
    """Implements the Engine protocol; all llama.cpp work happens on one dedicated worker thread.

    keep_alive (Ollama-like): seconds the model stays loaded after the last request finished; 0 unloads as soon
    as the engine is idle (and skips the preload); `.inf` never unloads. The next request reloads it (mmap makes
    that cheap: the weights are usually still in the page cache).
    """

    def __init__(self, settings: Settings, plan: MemoryPlan, name: str, *, preload: bool = True,
                 flash_attn: str = "auto", stream_interval: float = STREAM_INTERVAL) -> None:
        info = inspect(plan.model_path)
        self._template = load_template(settings.chat_template, info.chat_template)
        self._call_format = call_format(self._template)[0]
        self._settings = settings
        self.plan = plan
        self.name = name
        self._flash_attn = flash_attn
        self._keep_alive = settings.keep_alive
        self._max_inflight = plan.n_parallel + settings.server.max_queue
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._inflight = 0
        self._closing = False
        self._crash: str | None = None
        self._lost: str | None = None  # why an RPC worker's loss is about to end the process
        self._halting = self._halted = False
        self._want_load = preload and self._keep_alive > 0
        self._state = EngineState.LOADING if self._want_load else EngineState.UNLOADED
        self._reason = f"loading {plan.model_path}" if self._want_load else "not loaded yet; loads on the first request"
        self._load_seconds: float | None = None
        self._loads = 0
        self._stats = Stats()
        self._sched: Scheduler | None = None
        self._slot_cache: SlotCache | None = None
        self._checkpointed = False  # this load's slots were written once (see SlotCache.save)
        self._waiting: deque[Job] = deque()
        self._outbox = Outbox(stream_interval)
        self._idle_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="clawd-edge-engine", daemon=True)
        self._thread.start()

    # -- async API (event loop threads) -------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        jobs = make_jobs(request, self._call_format, min(MAX_CHOICES, self._max_inflight))
        with self._cond:
            if self._lost is not None:
                raise WorkerLost(self._lost)
            if self._closing or self._halting:
                if self._state is EngineState.FAILED:
                    raise EngineError(f"the engine is not running: {self._reason}")
                raise ShuttingDown("the server is shutting down; retry shortly")
            if self._inflight + len(jobs) > self._max_inflight:
                queued = max(0, self._inflight - self.plan.n_parallel)
                raise EngineBusy(f"all {self.plan.n_parallel} slots are busy and {queued} requests are queued "
                                 "(server.max_queue); retry later")
            self._inflight += len(jobs)
            self._pending.extend(jobs)
            self._cond.notify()
        use = request.tools
        streams = [ToolStream(use, self._call_format) for _ in jobs] if use is not None else None
        queue, running = jobs[0].queue, len(jobs)
        try:
            while running:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if streams is not None:
                    item = streams[item.index].chunk(item)
                if item.finish_reason is not None:
                    running -= 1
                yield item
        finally:
            if any(not job.finished for job in jobs):
                for job in jobs:
                    job.cancelled = True
                with self._cond:
                    self._cond.notify()

    def status(self) -> EngineStatus:
        sched = self._sched
        busy = sched.busy() if sched else 0
        s = self._stats
        return EngineStatus(
            state=self._state, reason=self._reason, model=self.name, slots_total=self.plan.n_parallel,
            slots_busy=busy, queue_depth=max(0, self._inflight - busy),
            kv_cells_used=sched.cells(busy=True) if sched else 0, kv_cells_total=self.plan.n_ctx,
            load_seconds=self._load_seconds, kv_cells_cached=sched.cells(busy=False) if sched else 0,
            prompt_tokens_evaluated_total=s.prompt_tokens_evaluated, cached_prompt_tokens_total=s.cached_prompt_tokens,
            completion_tokens_total=s.completion_tokens, requests_finished_total=s.requests_finished,
            requests_cancelled_total=s.requests_cancelled, loads_total=self._loads,
            prefix_copies_total=s.prefix_copies, draft_tokens_total=s.draft_tokens,
            draft_accepted_total=s.draft_accepted, memory_plan=self.plan.describe(), expires_at=self._expires_at(),
        )

    def _expires_at(self) -> float | None:
        """Wall-clock time the loaded model unloads at if no request arrives (while busy: keep_alive from now)."""
        keep_alive = self._keep_alive
        if self._sched is None or math.isinf(keep_alive):
            return None
        idle_for = 0.0 if self._inflight else max(0.0, time.monotonic() - self._idle_since)
        return time.time() - idle_for + keep_alive

    def keep_alive(self, seconds: float, *, load: bool = False) -> None:
        """Keep the model loaded for `seconds` after the engine is next idle (Ollama's per-request keep_alive: the
        last caller's value wins); 0 unloads as soon as no request runs, negative or inf never unloads.

        `load` also loads an unloaded model now (Ollama's empty request that preloads); status() says LOADING from
        this call on, so wait_ready() waits for it. A keep_alive of 0 never loads.
        """
        if math.isnan(seconds):
            raise InvalidRequest("keep_alive must be a number of seconds", param="keep_alive")
        with self._cond:
            self._keep_alive = math.inf if seconds < 0 else seconds
            if load and seconds != 0 and self._sched is None and not (self._closing or self._halting):
                self._want_load = True
                if self._state is not EngineState.FAILED:
                    self._state, self._reason = EngineState.LOADING, f"loading {self.plan.model_path}"
            self._cond.notify()

    def halt(self) -> None:
        """Stop generating, for shutdown: running answers end as cancelled (a final chunk each), queued and new
        requests fail with ShuttingDown (503). Called before the server's drain bound, so no response is cut."""
        with self._cond:
            self._halting = True
            self._cond.notify()

    def _halt(self) -> None:
        self._halted = True
        if self._sched is not None:
            self._sched.cancel_all()
        self._fail_queued(lambda: ShuttingDown("the server shut down before this request started; retry shortly"))

    def crashed(self) -> str | None:
        """Why the worker thread died, or None: a crashed engine never serves again, so the process should exit."""
        return self._crash

    async def close(self) -> None:
        self._request_close()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def close_sync(self) -> None:
        """For callers without an event loop (tests, the CLI's exit path)."""
        self._request_close()
        self._thread.join()

    def _request_close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    # -- worker thread -------------------------------------------------------------------------------------
    def _done(self, job: Job) -> None:
        if job.finished:
            return
        job.finished = True
        with self._cond:
            self._inflight -= 1

    def _idle_deadline(self) -> float | None:
        if self._sched is None or math.isinf(self._keep_alive):
            return None
        return self._idle_since + self._keep_alive

    def _wait_for_work(self) -> None:
        # The steady state (slots generating, nothing submitted, no close) needs no lock: every Python line between
        # two decodes is paid in CPU caches the decode just flushed. Unlocked reads of a deque and a bool are safe.
        if self._sched is not None and self._sched.busy() and not self._pending and not self._closing:
            return
        with self._cond:
            while not self._closing:
                while self._pending:
                    self._waiting.append(self._pending.popleft())
                busy = self._sched.busy() if self._sched else 0
                if busy or self._waiting or (self._want_load and self._sched is None) or (
                        self._halting and not self._halted):
                    return
                deadline = self._idle_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    return
                # A keep_alive of years is a wait longer than the OS can time (OverflowError): wake up and look again.
                self._cond.wait(None if deadline is None
                                else min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX))

    def _run(self) -> None:
        try:
            while True:
                self._wait_for_work()
                if self._closing:
                    break
                self._tick()
                self._outbox.flush()
        except BaseException as exc:
            log.exception("engine worker crashed")
            self._crash = f"engine worker crashed: {type(exc).__name__}: {exc}"
            self._state, self._reason = EngineState.FAILED, self._crash
            error = EngineError(f"the engine failed: {exc}")
            self._fail_everything(error)
        finally:
            self._shutdown()

    def _tick(self) -> None:
        if self._halting and not self._halted:
            self._halt()
        if self._waiting:
            self._waiting = deque(j for j in self._waiting if not self._drop_if_cancelled(j))
        if self._sched is None and (self._waiting or self._want_load):
            self._load()
        sched = self._sched
        if sched is None:
            return
        had_work = bool(self._waiting) or sched.busy() > 0
        while self._waiting and sched.free_slots():
            sched.admit(self._waiting.popleft())
        if sched.busy():
            sched.step()
        if had_work:
            if not sched.busy() and not self._waiting:
                self._idle_since = time.monotonic()  # keep_alive counts from the end of the last request
                if self._slot_cache is not None and not self._checkpointed:
                    self._checkpointed = True
                    self._slot_cache.save(sched.rt, sched.slots, only_missing=True)
        elif not self._waiting:
            deadline = self._idle_deadline()
            if deadline is not None and time.monotonic() >= deadline:
                self._unload(f"unloaded after {self._keep_alive:g} s idle (keep_alive); reloads on the next "
                             "request")

    def _drop_if_cancelled(self, job: Job) -> bool:
        if job.cancelled:
            self._done(job)
            return True
        return False

    def _load(self) -> None:
        from .native import Runtime

        self._want_load = False
        self._state, self._reason = EngineState.LOADING, f"loading {self.plan.model_path}"
        start = time.monotonic()
        try:
            runtime: Runtime = Runtime(self.plan, threads=self._settings.threads, flash_attn=self._flash_attn,
                                       on_abort=self._worker_lost if self.plan.split is not None else None)
        except ClawdError as exc:
            self._state, self._reason = EngineState.FAILED, f"load failed: {exc}"
            self._fail_queued(functools.partial(fresh, exc))
            return
        self._load_seconds = time.monotonic() - start
        self._loads += 1
        specials = None if self._settings.parse_special_in_messages else SpecialText(runtime.control_texts())
        prompts = PromptBuilder(runtime, self._template, self._settings.system_prompt, specials)
        spec = SpecSettings.from_settings(self._settings, self.plan.draft_path)
        try:
            speculator = spec.speculator(runtime, threads=self._settings.threads)
        except ClawdError as exc:
            runtime.close()
            self._state, self._reason = EngineState.FAILED, f"load failed: {exc}"
            self._fail_queued(functools.partial(fresh, exc))
            return
        self._sched = Scheduler(runtime, prompts, self._stats, self._outbox.emit, self._done,
                                speculator=speculator)
        self._slot_cache = open_slot_cache(self._settings, self.plan, flash_attn=self._flash_attn,
                                           slot_ctx=self._sched.slot_limit)
        self._checkpointed = False
        if self._slot_cache is not None:
            self._slot_cache.restore(runtime, self._sched.slots, self._sched.slot_limit)
        self._idle_since = time.monotonic()
        self._state = EngineState.READY
        self._reason = (f"ready: {self.plan.n_parallel} slot(s) x {self._sched.slot_limit} ctx, KV {self.plan.kv_type},"
                        f" loaded in {self._load_seconds:.2f} s")
        log.info("model %s loaded in %.2f s; %s", self.name, self._load_seconds, self.plan.describe())

    def _unload(self, reason: str) -> None:
        sched, self._sched = self._sched, None
        if sched is not None:
            if self._slot_cache is not None:
                self._slot_cache.save(sched.rt, sched.slots)
            sched.close()
        self._state, self._reason = EngineState.UNLOADED, reason
        log.info("model %s %s", self.name, reason)

    def _worker_lost(self, message: str) -> None:
        """ggml is about to abort the process: an RPC worker died (llama.cpp cannot carry on without its layers).

        Runs on the thread that hit the error while the engine thread is stuck in llama_decode for good. Every
        request gets a 503 (an error event if it is streaming), /health says why for a moment, then the process
        exits with EXIT_WORKER_LOST for systemd to restart it; returning would let the abort kill it silently.
        """
        # ggml's message starts with its source file and line, of no use to a client.
        detail = message.rsplit(": ", 1)[-1] if message else "connection lost"
        dead = unreachable(parse_workers(self._settings.rpc))
        who = f"RPC worker {', '.join(w.endpoint for w in dead)}" if dead else "an RPC worker"
        if self._state is EngineState.LOADING and not dead:
            # Alive but it dropped us while taking its layers: a worker whose --mem (or RAM) is below its share.
            detail += "; while loading its layers: is its --mem below the share in the memory plan?"
        reason = f"{who} failed ({detail}); restarting"
        log.critical("%s: failing %d request(s) and exiting with status %d", reason, self._inflight, EXIT_WORKER_LOST)
        # Not self._crash: the runner would stop serving at once, and /health should say why until the exit.
        self._state, self._reason = EngineState.FAILED, reason
        self._lost = f"{reason}; retry in a few seconds"  # new requests meanwhile: the same 503
        try:
            self._fail_everything(WorkerLost(self._lost))
            time.sleep(WORKER_LOST_GRACE)  # the event loop writes those answers meanwhile
        finally:
            logging.shutdown()
            os._exit(EXIT_WORKER_LOST)

    def _fail_everything(self, error: BaseException) -> None:
        if self._sched is not None:
            self._sched.fail_all(error)
        self._fail_queued(functools.partial(fresh, error))

    def _fail_queued(self, error: Callable[[], BaseException]) -> None:
        """Fail every request not yet in a slot with `error()`, and deliver that at once."""
        with self._cond:
            self._waiting.extend(self._pending)
            self._pending.clear()
        while self._waiting:
            job = self._waiting.popleft()
            if not job.finished:
                self._done(job)
                self._outbox.emit(job, error())
        self._outbox.flush()

    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
        self._fail_everything(EngineError("the engine shut down before this request finished"))
        if self._state != EngineState.FAILED:
            self._unload("shut down")
        else:
            sched, self._sched = self._sched, None
            if sched is not None:
                sched.close()


def create_engine(settings: Settings, model: ResolvedModel | Path | str, *, preload: bool = True,
                  flash_attn: str = "auto", stream_interval: float = STREAM_INTERVAL) -> LlamaEngine:
    """Plan memory (raising MemoryPlanError before anything is loaded), then start the engine's worker.

    With `preload` the model starts loading at once (status LOADING, then READY); otherwise on the first request.
    `flash_attn` is auto (llama.cpp decides, as llama-server does), on or off. `stream_interval` (seconds) merges
    a fast stream's tokens into fewer chunks; 0 delivers every token on its own.
    """
    plan = plan_for(settings, model)
    name = Path(model).stem if isinstance(model, (Path, str)) else model.name
    return LlamaEngine(settings, plan, name, preload=preload, flash_attn=flash_attn, stream_interval=stream_interval)
