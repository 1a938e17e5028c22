"""The llama.cpp side of embeddings: one more model, context and batch (embeddings on), pooled per the plan."""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import EngineError, ModelError
from .embedplan import MAX_GROUP_INPUTS, NATIVE_POOLING, EmbeddingPlan, Pooling
from .native import Handles, flash_attn_type, raw_function


class Stopped(Exception):
    """The request was cancelled (client gone) or the engine is stopping, between two decodes."""


class EmbeddingRuntime(Handles):
    """One llama_model + embeddings llama_context + batch; every method runs on the embedding worker thread."""

    def __init__(self, plan: EmbeddingPlan, *, threads: int, flash_attn: str = "auto") -> None:
        self.plan = plan
        super().__init__(plan.model_path, mmap=True, what="the embedding model",
                         setup=functools.partial(self._init_context, threads, flash_attn))

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
        cparams.flash_attn_type = flash_attn_type(lib, flash_attn)
        self._create_context(cparams, f"an embeddings context for {plan.describe()}")
        if plan.native:
            got = NATIVE_POOLING.get(int(lib.llama_pooling_type(self.ctx)), "?")
            if got not in ("mean", "cls", "last"):
                raise ModelError(f"{plan.model_path}: llama.cpp pools this model as {got!r}, not an embedding")
        self.dimensions = int(lib.llama_model_n_embd_out(self.model))
        self._init_batch(plan.n_batch, "an embeddings batch")
        self._embd_ith = raw_function(lib, "llama_get_embeddings_ith", [ctypes.c_void_p, ctypes.c_int32],
                                      ctypes.c_void_p)
        self._embd_seq = raw_function(lib, "llama_get_embeddings_seq", [ctypes.c_void_p, ctypes.c_int32],
                                      ctypes.c_void_p)

    def tokenize_input(self, text: str) -> list[int]:
        """The model's tokens for `text` with its BOS/CLS/SEP as the model adds them; control-token text stays text."""
        return self.tokenize(text, add_special=True, parse_special=False, what="an input")

    # -- evaluation ------------------------------------------------------------------------------------------------
    def embed(self, inputs: Sequence[Sequence[int]], stop: Callable[[], bool]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per input; `stop()` is asked between decodes."""
        out = np.zeros((len(inputs), self.dimensions), dtype=np.float32)
        for group in _groups([len(t) for t in inputs], self.plan.n_ctx):
            if stop():
                raise Stopped()
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
                raise Stopped()
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
                raise Stopped()
            self._decode(chunk, False)
        if stop():
            raise Stopped()
        self._decode([(ids[-1], len(ids) - 1, seq) for seq, ids in enumerate(tokens)], True)
        return self._rows(len(tokens))


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
