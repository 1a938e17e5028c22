"""Embeddings: one more llama_model + llama_context (embeddings on), loaded on the first request, run on a worker
thread of its own (never the chat engine's), with requests served one at a time.

Two ways to pool, chosen from the GGUF:

- An embedding model (its GGUF has `<arch>.pooling_type`: BERT, nomic, bge, EmbeddingGemma, ...) is pooled by
  llama.cpp itself (its pooling and any dense or classifier layers after it). Such a model may attend both ways,
  so every input is evaluated in one ubatch: n_ctx = n_batch = n_ubatch = embedding_ctx, and several inputs share
  one batch as different sequence ids.
- A causal LM (no pooling metadata, e.g. the chat model) is run with llama.cpp's pooling NONE and pooled here
  (its last token by default, or the mean over its tokens). Its attention is causal, so a long input may be
  evaluated in chunks that build on the KV cache, which matters because llama.cpp computes the output head for
  every token of an embeddings batch: in one 512-token ubatch that is 512 rows of logits, 512 MiB of compute
  buffer plus a 512 MiB output buffer for Gemma-3's 262k vocabulary (measured: 1.4 GiB RSS). Chunks are sized so
  those logits stay within LOGITS_BUDGET; last-token pooling evaluates all but each input's last token without
  any outputs (no output head at all).

The memory this costs is planned before anything loads (plan_embeddings) and checked against the budget left by
the chat engine's plan.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
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

from ..errors import (
    ClawdError,
    ConfigError,
    EngineBusy,
    EngineError,
    InvalidRequest,
    MemoryPlanError,
    ModelError,
    ShuttingDown,
    fresh,
)
from ..gguf_file import GgufInfo, inspect
from ..threads import ThreadFeed
from .planner import MIB, compute_bytes, kv_bytes_per_cell, swa_bytes
from .types import EngineState

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import ResolvedModel
    from .planner import MemoryPlan

log = logging.getLogger(__name__)

# Inputs evaluated together (sequence ids of one context); also the most outputs of a last-token batch.
MAX_GROUP_INPUTS = 32
# Causal LMs: logits rows per chunk are bounded by this many bytes of logits (compute buffer + output buffer).
LOGITS_BUDGET = 64 * MIB
MIN_CHUNK = 32
# The worker thread's own malloc arena, numpy's arrays and the output rows copied out: measured 15-20 MiB above
# llama.cpp's buffers in the daemon's RSS (beside the second mapping of shared weights, which RSS counts twice).
RUNTIME_OVERHEAD = 24 * MIB
# llama.cpp's pooling_type values (llama.h).
_NATIVE_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
_POOLING_IDS = {"mean": 1, "cls": 2, "last": 3}
UNSPECIFIED, NONE = -1, 0


class Pooling(str, enum.Enum):
    MEAN = "mean"
    LAST = "last"
    CLS = "cls"


# A causal LM has no pooling of its own; this is what `embedding_pooling: auto` gives it. Its last token has seen the
# whole input: on scripts/bench_embeddings.py it separated paraphrases from near misses better than the mean for
# both bundled models (and from unrelated sentences as well as the mean on SmolLM2, better on Gemma-3), and it needs
# no output head for any token but the last (README, Embeddings).
CAUSAL_DEFAULT = Pooling.LAST


@dataclass(frozen=True)
class EmbeddingPlan:
    """The embedding context, decided before anything is loaded; sizes in bytes (on top of the chat plan)."""

    model_path: Path
    name: str
    n_ctx: int
    n_batch: int  # = n_ubatch; = n_ctx when llama.cpp pools (one ubatch per batch)
    pooling: Pooling
    native: bool  # llama.cpp pools (the GGUF declares a pooling), else pooled here from token embeddings
    llama_pooling: int  # the context's pooling_type: UNSPECIFIED (the GGUF's own), an explicit one, or NONE
    dimensions: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    shared_weights: bool
    budget: int
    budget_source: str
    chat_bytes: int
    source: str  # where the pooling came from

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

    def describe(self) -> str:
        weights = "weights shared with the chat model (same file, one mmap in the page cache)" \
            if self.shared_weights else f"weights {_mib(self.weights_bytes)}"
        how = "one ubatch per batch" if self.native else f"chunks of {self.n_batch} tokens"
        return (f"{self.name}: {self.dimensions} dimensions, inputs up to {self.n_ctx} tokens, {self.pooling.value} "
                f"pooling ({self.source}), {how}; estimated {_mib(self.total_bytes)} = {weights} + KV "
                f"{_mib(self.kv_bytes)} + compute {_mib(self.compute_bytes)} + runtime {_mib(self.overhead_bytes)}, "
                f"loaded on the first request; with the "
                f"chat plan {_mib(self.chat_bytes + self.total_bytes)} of budget {_mib(self.budget)} "
                f"({self.budget_source})")


def _mib(n: float) -> str:
    return f"{n / MIB:.0f} MiB"


def _chunk(info: GgufInfo, n_ctx: int) -> int:
    """Tokens per decode for a causal LM: a power of two whose logits rows fit LOGITS_BUDGET, within [32, n_ctx]."""
    rows = max(1, LOGITS_BUDGET // max(1, info.n_vocab * 8))
    chunk = 1 << max(0, rows.bit_length() - 1)
    return max(min(chunk, n_ctx), min(MIN_CHUNK, n_ctx), min(MAX_GROUP_INPUTS, n_ctx))


def _pooling(info: GgufInfo, requested: str) -> tuple[Pooling, int | None, str]:
    """(pooling, the llama.cpp pooling_type for it or None when pooled here, where the choice came from)."""
    declared = info.metadata.get(f"{info.architecture}.pooling_type")
    if declared is not None:
        name = _NATIVE_POOLING.get(int(declared), str(declared))
        if name == "rank":
            raise ModelError(f"{info.path}: a reranking model (pooling_type rank), not an embedding model")
        if requested != "auto":
            return Pooling(requested), _POOLING_IDS[requested], "embedding_pooling"
        if name == "none":  # token embeddings only: average them (one ubatch, so both-way attention still works)
            return Pooling.MEAN, _POOLING_IDS["mean"], f"{info.architecture}.pooling_type none in the GGUF; averaged"
        return Pooling(name), UNSPECIFIED, f"{info.architecture}.pooling_type in the GGUF"
    if requested != "auto":
        return Pooling(requested), None, "embedding_pooling; a causal LM, pooled here"
    return CAUSAL_DEFAULT, None, "no pooling in the GGUF: a causal LM, pooled here"


def plan_embeddings(settings: Settings, model: ResolvedModel | Path | str, *, chat: MemoryPlan,
                    name: str | None = None) -> EmbeddingPlan:
    """The embedding context for `model`, checked against what `chat` leaves of its budget.

    Raises MemoryPlanError naming the sizes when it does not fit (the caller decides whether that is fatal).
    """
    path = Path(model) if isinstance(model, (Path, str)) else model.path
    label = name or (Path(model).stem if isinstance(model, (Path, str)) else model.name)
    info = inspect(path)
    pooling, llama_pooling, source = _pooling(info, settings.embedding_pooling)
    native = llama_pooling is not None
    n_ctx = settings.embedding_ctx
    if info.n_ctx_train and n_ctx > info.n_ctx_train:
        raise ConfigError(f"{n_ctx} is larger than {path.name}'s training context of {info.n_ctx_train} tokens",
                          key="embedding_ctx")
    n_batch = n_ctx if native else _chunk(info, n_ctx)
    shared = _same_file(path, chat.model_path)
    weights = 0 if shared else info.file_size
    # One unified KV pool of n_ctx cells for the inputs evaluated together; sliding-window layers hold all n_ctx
    # cells too (their window covers every sequence of the pool), which swa_bytes gives for an ubatch of n_ctx.
    kv = int(n_ctx * kv_bytes_per_cell(info, "f16")) + swa_bytes(info, "f16", 1, n_ctx, n_ctx)
    compute = compute_bytes(info, n_batch, n_batch)  # every token of an embeddings batch is an output row
    dims = int(info.metadata.get(f"{info.architecture}.embedding_length_out", info.n_embd))
    plan = EmbeddingPlan(model_path=path, name=label, n_ctx=n_ctx, n_batch=n_batch, pooling=pooling, native=native,
                         llama_pooling=NONE if llama_pooling is None else llama_pooling, dimensions=dims,
                         weights_bytes=weights, kv_bytes=kv, compute_bytes=compute, overhead_bytes=RUNTIME_OVERHEAD,
                         shared_weights=shared, budget=chat.budget, budget_source=chat.budget_source,
                         chat_bytes=chat.total_bytes, source=source)
    if plan.chat_bytes + plan.total_bytes > plan.budget:
        left = max(0, plan.budget - plan.chat_bytes)
        raise MemoryPlanError(
            f"embeddings with {label} need {_mib(plan.total_bytes)} (weights {_mib(weights)} + KV {_mib(kv)} + "
            f"compute {_mib(compute)} + runtime {_mib(RUNTIME_OVERHEAD)} for inputs of up to {n_ctx} tokens) but "
            f"the chat model's plan leaves {_mib(left)} of the memory budget of {_mib(plan.budget)} "
            f"({plan.budget_source}); use a smaller embedding_ctx or embedding_model, fewer chat slots (parallel) "
            "or a larger memory_budget")
    return plan


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


# -- llama.cpp (worker thread only) ------------------------------------------------------------------------------


class _Stopped(Exception):
    """The request was cancelled (client gone) or the engine is stopping, between two decodes."""


class _Runtime:
    """One llama_model + embeddings llama_context + batch; every method runs on the embedding worker thread."""

    def __init__(self, plan: EmbeddingPlan, *, threads: int, flash_attn: str = "auto") -> None:
        from .native import import_llama

        lib = self.lib = import_llama()  # the CPU guard first, and llama.cpp's log routed to Python
        lib.llama_backend_init()
        self.plan = plan
        mparams = lib.llama_model_default_params()
        mparams.load_mode = lib.LLAMA_LOAD_MODE_MMAP if lib.llama_supports_mmap() else lib.LLAMA_LOAD_MODE_NONE
        self.model = lib.llama_model_load_from_file(str(plan.model_path).encode(), mparams)
        if not self.model:
            raise ModelError(f"{plan.model_path}: llama.cpp could not load the embedding model (unsupported "
                             "architecture or corrupt tensor data; run with -v for llama.cpp's log)")
        self.ctx: Any = None
        self.batch: Any = None
        try:
            self._init_context(threads, flash_attn)
        except BaseException:
            self.close()
            raise

    def _init_context(self, threads: int, flash_attn: str) -> None:
        lib, plan = self.lib, self.plan
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = plan.n_ctx
        cparams.n_batch = cparams.n_ubatch = plan.n_batch
        cparams.n_seq_max = MAX_GROUP_INPUTS
        cparams.n_outputs_max = plan.n_batch  # every token of an embeddings batch is an output
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.embeddings = True
        cparams.pooling_type = plan.llama_pooling
        # One pool for the inputs evaluated together; it is cleared whole between groups, never per sequence.
        cparams.kv_unified = True
        cparams.swa_full = False
        cparams.no_perf = True
        modes = {"auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                 "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED}
        cparams.flash_attn_type = modes[flash_attn]
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create an embeddings context for {plan.describe()}")
        if plan.native:
            got = _NATIVE_POOLING.get(int(lib.llama_pooling_type(self.ctx)), "?")
            if got not in ("mean", "cls", "last"):
                raise ModelError(f"{plan.model_path}: llama.cpp pools this model as {got!r}, not an embedding")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.dimensions = int(lib.llama_model_n_embd_out(self.model))
        self.batch = lib.llama_batch_init(plan.n_batch, 0, 1)
        self._token_addr = _address(self.batch.token)
        self._pos_addr = _address(self.batch.pos)
        self._logits_addr = _address(self.batch.logits)
        self._seq_rows = [self.batch.seq_id[i] for i in range(plan.n_batch)]
        for i in range(plan.n_batch):
            self.batch.n_seq_id[i] = 1
        self._embd_ith = _raw_function(lib, "llama_get_embeddings_ith", [ctypes.c_void_p, ctypes.c_int32],
                                       ctypes.c_void_p)
        self._embd_seq = _raw_function(lib, "llama_get_embeddings_seq", [ctypes.c_void_p, ctypes.c_int32],
                                       ctypes.c_void_p)

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for `text` with its BOS/CLS/SEP as the model adds them; control-token text stays text."""
        raw = text.encode("utf-8")
        size = len(raw) + 8
        while True:
            buf = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, True, False)
            if n >= 0:
                return list(buf[:n])
            if -n <= size:  # pragma: no cover - llama.cpp only returns a negative count when it needs more room
                raise EngineError("llama.cpp failed to tokenize an input")
            size = -n

    # -- evaluation ------------------------------------------------------------------------------------------------
    def embed(self, inputs: Sequence[Sequence[int]], stop: Callable[[], bool]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per input; `stop()` is asked between decodes."""
        out = np.zeros((len(inputs), self.dimensions), dtype=np.float32)
        for group in _groups([len(t) for t in inputs], self.plan.n_ctx):
            if stop():
                raise _Stopped()
            self.lib.llama_memory_clear(self.memory, True)
            tokens = [inputs[i] for i in group]
            if self.plan.native:
                vectors = self._pooled_by_llama(tokens)
            elif self.plan.pooling == Pooling.LAST:
                vectors = self._last(tokens, stop)
            else:
                vectors = self._mean(tokens, stop)
            out[group] = vectors
        self.lib.llama_memory_clear(self.memory, True)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)  # type: ignore[no-any-return]

    def _decode(self, entries: Sequence[tuple[int, int, int]], outputs: bool) -> None:
        """One batch of (token, position, sequence) entries; all of them outputs or none."""
        n = len(entries)
        tokens, positions, seqs = zip(*entries, strict=True)
        ctypes.memmove(self._token_addr, (ctypes.c_int32 * n)(*tokens), 4 * n)
        ctypes.memmove(self._pos_addr, (ctypes.c_int32 * n)(*positions), 4 * n)
        ctypes.memset(self._logits_addr, 1 if outputs else 0, n)
        rows = self._seq_rows
        for i, seq in enumerate(seqs):
            rows[i][0] = seq
        self.batch.n_tokens = n
        self.lib.llama_set_embeddings(self.ctx, outputs)
        status = int(self.lib.llama_decode(self.ctx, self.batch))
        if status != 0:
            raise EngineError(f"llama.cpp failed to evaluate an embeddings batch of {n} tokens (status {status})")

    def _rows(self, n: int) -> np.ndarray:
        """The token embeddings of the last decode's n outputs, in batch order (a copy)."""
        first = self._embd_ith(self.ctx, 0)
        last = self._embd_ith(self.ctx, n - 1)
        dims = self.dimensions
        if not first or not last:
            raise EngineError("llama.cpp returned no token embeddings")
        if last - first == 4 * dims * (n - 1):  # rows in batch order, one block (always, with one ubatch per batch)
            return np.ctypeslib.as_array(ctypes.cast(first, ctypes.POINTER(ctypes.c_float)), (n, dims)).copy()
        out = np.empty((n, dims), dtype=np.float32)  # pragma: no cover - llama.cpp reordered its outputs
        for i in range(n):
            address = self._embd_ith(self.ctx, i)
            out[i] = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), (dims,))
        return out

    def _pooled_by_llama(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        self._decode([(t, pos, seq) for seq, ids in enumerate(tokens) for pos, t in enumerate(ids)], True)
        out = np.empty((len(tokens), self.dimensions), dtype=np.float32)
        for seq in range(len(tokens)):
            address = self._embd_seq(self.ctx, seq)
            if not address:
                raise EngineError(f"llama.cpp returned no pooled embedding for sequence {seq}")
            out[seq] = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), (self.dimensions,))
        return out

    def _chunks(self, entries: list[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
        step = self.plan.n_batch
        for start in range(0, len(entries), step):
            yield entries[start:start + step]

    def _mean(self, tokens: Sequence[Sequence[int]], stop: Callable[[], bool]) -> np.ndarray:
        sums = np.zeros((len(tokens), self.dimensions), dtype=np.float64)
        entries = [(t, pos, seq) for seq, ids in enumerate(tokens) for pos, t in enumerate(ids)]
        for chunk in self._chunks(entries):
            if stop():
                raise _Stopped()
            self._decode(chunk, True)
            rows = self._rows(len(chunk))
            np.add.at(sums, np.fromiter((seq for _, _, seq in chunk), dtype=np.intp, count=len(chunk)), rows)
        counts = np.array([len(ids) for ids in tokens], dtype=np.float64)[:, None]
        return (sums / counts).astype(np.float32)

    def _last(self, tokens: Sequence[Sequence[int]], stop: Callable[[], bool]) -> np.ndarray:
        # Everything but each input's last token, without outputs (no output head at all), then the last tokens.
        prefix = [(t, pos, seq) for seq, ids in enumerate(tokens) for pos, t in enumerate(ids[:-1])]
        for chunk in self._chunks(prefix):
            if stop():
                raise _Stopped()
            self._decode(chunk, False)
        if stop():
            raise _Stopped()
        self._decode([(ids[-1], len(ids) - 1, seq) for seq, ids in enumerate(tokens)], True)
        return self._rows(len(tokens))

    def close(self) -> None:
        lib = self.lib
        if self.batch is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None


def _groups(lengths: Sequence[int], n_ctx: int) -> Iterator[list[int]]:
    """Consecutive inputs evaluated together: at most MAX_GROUP_INPUTS of them and n_ctx tokens in all."""
    group: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if group and (used + n > n_ctx or len(group) == MAX_GROUP_INPUTS):
            yield group
            group, used = [], 0
        group.append(i)
        used += n
    if group:
        yield group


def _raw_function(lib: Any, name: str, argtypes: list[Any], restype: Any) -> Any:
    """A private handle on a libllama function returning a bare address (not a ctypes float pointer)."""
    fn = getattr(ctypes.CDLL(lib.llama_cpp._lib._name), name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _address(pointer: Any) -> int:
    value = ctypes.cast(pointer, ctypes.c_void_p).value
    if not value:
        raise EngineError("llama.cpp could not allocate an embeddings batch")
    return int(value)


# -- the async side ----------------------------------------------------------------------------------------------


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
    """Embeddings on a worker thread of their own; `embed` is called from one event loop.

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
        runtime: _Runtime | None = None
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

    def _load(self) -> _Runtime:
        self._state, self._reason = EngineState.LOADING, f"loading {self.plan.model_path}"
        start = time.monotonic()
        try:
            runtime = _Runtime(self.plan, threads=self.threads, flash_attn=self.flash_attn)
        except ClawdError as exc:
            self._state, self._reason = EngineState.FAILED, f"load failed: {exc}"
            raise
        self._dimensions = runtime.dimensions
        self._counters.loads += 1
        seconds = time.monotonic() - start
        self._state, self._reason = EngineState.READY, f"ready: loaded in {seconds:.2f} s"
        log.info("embedding model %s loaded in %.2f s; %s", self.plan.name, seconds, self.plan.describe())
        return runtime

    def _run(self, runtime: _Runtime, job: _Job, cancel: threading.Event) -> EmbeddingResult | BaseException | None:
        """The job's result or its error; None when its caller has gone (nobody to tell)."""
        def stop() -> bool:
            return job.cancelled or self._halting or cancel.is_set()

        start = time.perf_counter()
        try:
            tokens = self._tokens(runtime, job.inputs, stop)
            vectors = runtime.embed(tokens, stop)
        except _Stopped:
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

    def _tokens(self, runtime: _Runtime, inputs: Sequence[Input], stop: Callable[[], bool]) -> list[list[int]]:
        limit = self.plan.n_ctx
        out: list[list[int]] = []
        for i, item in enumerate(inputs):
            if stop():
                raise _Stopped()
            if isinstance(item, str):
                tokens = runtime.tokenize(item)
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
