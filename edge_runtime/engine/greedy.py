"""Greedy picks straight from llama.cpp's logits with ggml's own top-k op: no candidate array is built."""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# ggml's CPU backend refuses tensors whose data is not aligned to this (TENSOR_ALIGNMENT in ggml-impl.h).
_ALIGN = 32
# The logits row is searched as this many slices at most, split between the threads; each slice's winner is
# then compared here, which is a loop over these few values, never over the vocabulary.
MAX_SLICES = 32
# Below this vocabulary llama.cpp's candidate array is as cheap as a ggml pass (measured on SmolLM2's 49k: the chain
# was 0.7% faster; on Gemma-3's 262k this path is 1.4% faster): its cost grows with the vocabulary, ours mostly not.
MIN_VOCAB = 65536
_GGML_TYPE_F32 = 0
_P = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _bind(base: ctypes.CDLL, cpu: ctypes.CDLL) -> None:
    signatures: list[tuple[ctypes.CDLL, str, list[Any], Any]] = [
        (base, "ggml_init", [_InitParams], _P),
        (base, "ggml_free", [_P], None),
        (base, "ggml_tensor_overhead", [], ctypes.c_size_t),
        (base, "ggml_graph_overhead", [], ctypes.c_size_t),
        (base, "ggml_new_tensor_2d", [_P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], _P),
        (base, "ggml_top_k", [_P, _P, ctypes.c_int], _P),
        (base, "ggml_new_graph", [_P], _P),
        (base, "ggml_build_forward_expand", [_P, _P], None),
        (base, "ggml_backend_cpu_buffer_from_ptr", [_P, ctypes.c_size_t], _P),
        (base, "ggml_backend_tensor_alloc", [_P, _P, _P], ctypes.c_int),
        (base, "ggml_backend_buffer_free", [_P], None),
        (base, "ggml_backend_graph_compute", [_P, _P], ctypes.c_int),
        (base, "ggml_backend_free", [_P], None),
        (cpu, "ggml_backend_cpu_init", [], _P),
        (cpu, "ggml_backend_cpu_set_n_threads", [_P, ctypes.c_int], None),
    ]
    for lib, name, argtypes, restype in signatures:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype


def slices_for(n_vocab: int) -> int:
    """The most slices (<= MAX_SLICES) that divide the vocabulary evenly."""
    return next(s for s in range(MAX_SLICES, 0, -1) if n_vocab % s == 0)


class GreedyPicker:
    """Picks the highest logit of a row in place, the way llama.cpp's greedy sampler does, only cheaper.

    llama.cpp's sampler first copies every logit into a 12-byte candidate record (3 MiB for Gemma-3's 262k
    vocabulary) and then scans that copy: about 280 us per token on a 2-core board, 2.5% of Gemma-3's decode.
    Here ggml's top-k op (k = 1) runs on the logits where llama.cpp left them, in slices shared by the same
    threads that decode, and the slices' winners are compared in Python: 140-170 us for the same token.
    It is a ggml op rather than a sampler because llama.cpp's in-graph (backend) greedy sampler pads the whole
    logits tensor first, which made each decode 1.1 ms slower here.

    Ties go to the lowest token id, as in llama.cpp's greedy sampler (slices are compared with a strict >, and
    ggml's top-k keeps the first of equal values within a slice). One graph per logits row address is built
    once; rows are few (one per slot) and llama.cpp keeps its output buffer for the context's lifetime.
    """

    def __init__(self, lib_dir: Path, n_vocab: int, threads: int) -> None:
        self._base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        self._cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
        _bind(self._base, self._cpu)
        self.n_vocab = n_vocab
        self.slices = slices_for(n_vocab)
        self.width = n_vocab // self.slices
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self._winners_raw = ctypes.create_string_buffer(4 * self.slices + _ALIGN)
        winners_at = -(-ctypes.addressof(self._winners_raw) // _ALIGN) * _ALIGN
        self._winners = (ctypes.c_int32 * self.slices).from_address(winners_at)
        self._winners_buffer: Any = None
        self._backend = self._cpu.ggml_backend_cpu_init()
        if not self._backend:
            raise RuntimeError("ggml could not create a CPU backend")
        self._cpu.ggml_backend_cpu_set_n_threads(self._backend, max(1, threads))
        self._winners_buffer = self._base.ggml_backend_cpu_buffer_from_ptr(winners_at, 4 * self.slices)
        if not self._winners_buffer:
            self.close()
            raise RuntimeError("ggml could not wrap the winners buffer")
        self._winners_at = winners_at

    @classmethod
    def create(cls, lib_dir: Path, n_vocab: int, threads: int) -> GreedyPicker | None:
        """A picker, or None where the fast path does not apply (the sampler chain then does the work)."""
        # Aligned rows (n_vocab a multiple of 8) always split into at least 8 slices.
        if n_vocab < MIN_VOCAB or (4 * n_vocab) % _ALIGN:
            return None
        try:
            return cls(lib_dir, n_vocab, threads)
        except (OSError, AttributeError, RuntimeError) as exc:
            log.info("greedy fast path unavailable (%s); llama.cpp's sampler chain picks greedy tokens", exc)
            return None

    def _graph(self, address: int) -> tuple[Any, Any, Any, Any] | None:
        base = self._base
        ctx = base.ggml_init(_InitParams(4 * base.ggml_tensor_overhead() + base.ggml_graph_overhead() + 1024,
                                         None, True))
        if not ctx:
            return None
        logits = base.ggml_new_tensor_2d(ctx, _GGML_TYPE_F32, self.width, self.slices)
        winners = base.ggml_top_k(ctx, logits, 1)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, winners)
        buffer = base.ggml_backend_cpu_buffer_from_ptr(address, 4 * self.n_vocab)
        if not buffer or base.ggml_backend_tensor_alloc(buffer, logits, address) != 0 \
                or base.ggml_backend_tensor_alloc(self._winners_buffer, winners, self._winners_at) != 0:
            if buffer:
                base.ggml_backend_buffer_free(buffer)
            base.ggml_free(ctx)
            return None
        values = (ctypes.c_float * self.n_vocab).from_address(address)
        entry = self._graphs[address] = (ctx, graph, buffer, values)
        return entry

    def pick(self, address: int) -> int | None:
        """The greedy token of the logits row at `address`, or None to let the sampler chain decide."""
        entry = self._graphs.get(address)
        if entry is None:
            if address % _ALIGN or len(self._graphs) >= 64:
                return None
            entry = self._graph(address)
            if entry is None:
                return None
        if self._base.ggml_backend_graph_compute(self._backend, entry[1]) != 0:
            return None
        values, width = entry[3], self.width
        best, best_value, start = -1, float("-inf"), 0
        for offset in self._winners:
            value = values[start + offset]
            if value > best_value:
                best, best_value = start + offset, value
            start += width
        return best if best >= 0 else None

    def close(self) -> None:
        base = self._base
        for ctx, _, buffer, _ in self._graphs.values():
            base.ggml_backend_buffer_free(buffer)
            base.ggml_free(ctx)
        self._graphs.clear()
        if self._winners_buffer:
            base.ggml_backend_buffer_free(self._winners_buffer)
            self._winners_buffer = None
        if self._backend:
            base.ggml_backend_free(self._backend)
            self._backend = None
