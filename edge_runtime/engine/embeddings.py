"""The embedding engine: requests queued to a worker thread of its own, its model loaded on the first of them."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ClawdError, EngineBusy, EngineError, InvalidRequest, ShuttingDown, fresh
from ..threads import ThreadFeed
from .embedplan import EmbeddingPlan, plan_embeddings
from .embedruntime import EmbeddingRuntime, Stopped
from .types import EngineState

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import ResolvedModel
    from .planner import MemoryPlan

log = logging.getLogger(__name__)

Input = str | Sequence[int]


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # float32, one L2-normalised row per input
    prompt_tokens: int
    seconds: float  # time on the worker, loading excluded


@dataclass(frozen=True)
class EmbeddingStatus:
    state: EngineState
    reason: str
    model: str
    dimensions: int
    requests_total: int
    inputs_total: int
    tokens_total: int
    loads_total: int


@dataclass(eq=False)
class _Job:
    inputs: tuple[Input, ...]
    future: asyncio.Future[EmbeddingResult]
    cancelled: bool = False


@dataclass
class _Counters:
    requests: int = 0
    inputs: int = 0
    tokens: int = 0
    loads: int = 0


_UNLOAD = object()


class EmbeddingEngine:
    """Embeddings on a worker thread of their own (never the chat engine's), one request at a time; `embed` is
    called from one event loop.

    The model loads on the first request and unloads after `keep_alive` idle seconds (0: after every request,
    inf: never), like the chat model. At most `max_queue` requests wait behind the running one (then EngineBusy).
    A request whose caller goes away (its task is cancelled) stops at the next decode; `halt()` ends the running
    one and fails the queued ones with ShuttingDown; `close()` stops the thread and frees llama.cpp's memory.
    """

    def __init__(self, plan: EmbeddingPlan, *, threads: int, keep_alive: float = 300.0, max_queue: int = 32,
                 flash_attn: str = "auto") -> None:
        self.plan = plan
        self.threads = threads
        self.keep_alive = keep_alive
        self.max_queue = max_queue
        self.flash_attn = flash_attn
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()  # waiting for the worker (shared with it, under _cond)
        self._jobs: set[_Job] = set()  # every request not answered yet (event loop only)
        self._feed: ThreadFeed[Any] | None = None
        self._feeds = 0
        self._halting = False
        self._closed = False
        self._state = EngineState.UNLOADED
        self._reason = "not loaded yet; loads on the first request"
        self._dimensions: int | None = None
        self._counters = _Counters()

    @property
    def dimensions(self) -> int:
        """The length of every vector: llama.cpp's once loaded, the GGUF's before."""
        return self._dimensions or self.plan.dimensions

    def status(self) -> EmbeddingStatus:
        c = self._counters
        return EmbeddingStatus(state=self._state, reason=self._reason, model=self.plan.name,
                               dimensions=self.dimensions, requests_total=c.requests, inputs_total=c.inputs,
                               tokens_total=c.tokens, loads_total=c.loads)

    async def embed(self, inputs: Sequence[Input]) -> EmbeddingResult:
        """Vectors for `inputs` (strings, or token-id lists used as they are). Lengths and token ids are checked on
        the worker, which has the model's tokenizer (InvalidRequest naming input[i], before anything is evaluated)."""
        if not inputs:
            raise InvalidRequest("input must not be empty", param="input")
        if self._closed or self._halting:
            raise ShuttingDown("the server is shutting down; retry shortly")
        if len(self._jobs) > self.max_queue:
            raise EngineBusy(f"the embedding worker is busy and {len(self._jobs) - 1} requests are queued "
                             "(server.max_queue); retry later")
        if self._feed is None:
            self._feeds += 1
            self._feed = ThreadFeed("clawd-edge-embeddings", "computing embeddings", self._produce,
                                    functools.partial(self._deliver, self._feeds), stop=self._wake)
            self._feed.start()
        job = _Job(tuple(inputs), asyncio.get_running_loop().create_future())
        self._jobs.add(job)
        with self._cond:
            self._queue.append(job)
            self._cond.notify()
        try:
            return await job.future
        finally:
            if not job.future.done() or job.future.cancelled():
                job.cancelled = True  # the worker skips it, or stops it at its next decode
            self._jobs.discard(job)

    def halt(self) -> None:
        """For shutdown: the running request ends, queued and new ones fail with ShuttingDown (503)."""
        self._halting = True
        self._fail_all(lambda: ShuttingDown("the server shut down before these embeddings were computed; "
                                            "retry shortly"))
        self._wake()

    async def close(self) -> None:
        self._closed = True
        self.halt()
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.close()

    # -- event loop side -------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _fail_all(self, error: Callable[[], BaseException]) -> None:
        with self._cond:
            self._queue.clear()
        for job in list(self._jobs):
            job.cancelled = True
            if not job.future.done():
                job.future.set_exception(error())

    def _deliver(self, feed: int, item: Any) -> None:
        if item is None:  # the worker ended (closed, or after a crash): nothing it left behind will be answered
            if feed == self._feeds:
                self._feed = None  # the next request starts a new worker
            self._fail_all(lambda: EngineError("the embedding worker stopped"))
        elif isinstance(item, BaseException):
            self._state, self._reason = EngineState.FAILED, f"embedding worker crashed: {type(item).__name__}: {item}"
            self._fail_all(lambda: EngineError(self._reason))
        else:
            job, result = item
            if job.future.done():
                return
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    # -- worker thread ---------------------------------------------------------------------------------------------
    def _take(self, cancel: threading.Event, idle_since: float | None) -> Any:
        """The next job, _UNLOAD when the model has been idle for keep_alive seconds, None when cancelled."""
        with self._cond:
            while True:
                if cancel.is_set():
                    return None
                while self._queue:
                    job = self._queue.popleft()
                    if not job.cancelled:
                        return job
                timeout = None
                if idle_since is not None and not math.isinf(self.keep_alive):
                    timeout = idle_since + self.keep_alive - time.monotonic()
                    if timeout <= 0:
                        return _UNLOAD
                self._cond.wait(timeout)

    def _produce(self, cancel: threading.Event) -> Iterator[tuple[_Job, EmbeddingResult | BaseException]]:
        runtime: EmbeddingRuntime | None = None
        idle_since: float | None = None
        try:
            while True:
                job = self._take(cancel, idle_since if runtime is not None else None)
                if job is None:
                    return
                if job is _UNLOAD:
                    assert runtime is not None
                    runtime.close()
                    runtime = None
                    self._state = EngineState.UNLOADED
                    self._reason = (f"unloaded after {self.keep_alive:g} s idle (keep_alive); reloads on the next "
                                    "request")
                    log.info("embedding model %s %s", self.plan.name, self._reason)
                    continue
                if runtime is None:
                    try:
                        runtime = self._load()
                    except ClawdError as exc:
                        yield job, fresh(exc)
                        continue
                result = self._run(runtime, job, cancel)
                idle_since = time.monotonic()
                if result is not None:
                    yield job, result
                if self.keep_alive == 0:
                    idle_since = time.monotonic() - 1.0  # unload as soon as nothing is queued
        except Exception:
            log.exception("embedding worker crashed")
            raise
        finally:
            if runtime is not None:
                runtime.close()
                self._state, self._reason = EngineState.UNLOADED, "shut down"

    def _load(self) -> EmbeddingRuntime:
        self._state, self._reason = EngineState.LOADING, f"loading {self.plan.model_path}"
        start = time.monotonic()
        try:
            runtime = EmbeddingRuntime(self.plan, threads=self.threads, flash_attn=self.flash_attn)
        except ClawdError as exc:
            self._state, self._reason = EngineState.FAILED, f"load failed: {exc}"
            raise
        self._dimensions = runtime.dimensions
        self._counters.loads += 1
        seconds = time.monotonic() - start
        self._state, self._reason = EngineState.READY, f"ready: loaded in {seconds:.2f} s"
        log.info("embedding model %s loaded in %.2f s; %s", self.plan.name, seconds, self.plan.describe())
        return runtime

    def _run(self, runtime: EmbeddingRuntime, job: _Job,
             cancel: threading.Event) -> EmbeddingResult | BaseException | None:
        """The job's result or its error; None when its caller has gone (nobody to tell)."""
        def stop() -> bool:
            return job.cancelled or self._halting or cancel.is_set()

        start = time.perf_counter()
        try:
            tokens = self._tokens(runtime, job.inputs, stop)
            vectors = runtime.embed(tokens, stop)
        except Stopped:
            return None if job.cancelled else ShuttingDown("the server is shutting down; retry shortly")
        except InvalidRequest as exc:
            return exc
        except ClawdError as exc:  # a failed decode: this request fails, the context is cleared for the next
            with contextlib.suppress(Exception):
                runtime.lib.llama_memory_clear(runtime.memory, True)
            return exc
        count = sum(len(t) for t in tokens)
        c = self._counters
        c.requests, c.inputs, c.tokens = c.requests + 1, c.inputs + len(tokens), c.tokens + count
        return EmbeddingResult(vectors=vectors, prompt_tokens=count, seconds=time.perf_counter() - start)

    def _tokens(self, runtime: EmbeddingRuntime, inputs: Sequence[Input],
                stop: Callable[[], bool]) -> list[list[int]]:
        limit = self.plan.n_ctx
        out: list[list[int]] = []
        for i, item in enumerate(inputs):
            if stop():
                raise Stopped()
            if isinstance(item, str):
                tokens = runtime.tokenize_input(item)
            else:
                tokens = list(item)
                bad = next((t for t in tokens if not 0 <= t < runtime.n_vocab), None)
                if bad is not None:
                    raise InvalidRequest(f"input[{i}] has token id {bad}, outside this model's vocabulary of "
                                         f"{runtime.n_vocab} tokens", param=f"input[{i}]")
            if not tokens:
                raise InvalidRequest(f"input[{i}] has no tokens", param=f"input[{i}]")
            if len(tokens) > limit:
                raise InvalidRequest(
                    f"input[{i}] is {len(tokens)} tokens long; this embedding model's maximum context length is "
                    f"{limit} tokens (embedding_ctx). Please shorten or split it.", param=f"input[{i}]")
            out.append(tokens)
        return out


def create_embeddings(settings: Settings, model: ResolvedModel | Path | str, *, chat: MemoryPlan,
                      name: str | None = None, flash_attn: str = "auto") -> EmbeddingEngine:
    """Plan (MemoryPlanError before anything loads) and make the engine; its model loads on the first request."""
    plan = plan_embeddings(settings, model, chat=chat, name=name)
    return EmbeddingEngine(plan, threads=settings.threads, keep_alive=settings.keep_alive,
                           max_queue=settings.server.max_queue, flash_attn=flash_attn)
