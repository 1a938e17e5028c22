"""Memory planner: from GGUF metadata and the memory budget, choose slots x context, KV type and mmap, or refuse."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import sysinfo
from ..adapter_config import AdapterSpec
from ..errors import ConfigError, MemoryPlanError
from ..gguf_file import GgufInfo, inspect
from .adapters import check_files
from .rpc import Split, parse_workers, probe, split_layers
from .speculative import SpecSettings

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import ResolvedModel

MIB = 1024**2
# Bytes per KV element: f16 is 2; q8_0 stores 32 values in 34 bytes (one f16 scale per block).
KV_ELEMENT_BYTES = {"f16": 2.0, "q8_0": 34 / 32}
# The smallest per-slot context the planner shrinks to before it gives up (a short chat still fits).
MIN_SLOT_CONTEXT = 256
# Python, llama.cpp's code, jinja2, asyncio and the HTTP stack: measured RSS of an idle daemon is ~70-90 MiB.
RUNTIME_OVERHEAD = 96 * MIB
# Physical batch: llama-server uses 512; a larger ubatch only grows the compute buffer on CPU.
MAX_UBATCH = 512
# Sliding-window architectures: one layer in N uses full attention, the others only the window (llama.cpp's
# per-architecture layer patterns; the GGUFs of these families do not record the pattern).
SWA_GLOBAL_EVERY = {"gemma3": 6, "gemma2": 2, "cohere2": 4}


@dataclass(frozen=True)
class MemoryPlan:
    """What the engine will allocate, decided before anything is loaded; sizes in bytes."""

    model_path: Path
    budget: int
    budget_source: str
    n_parallel: int
    n_ctx_per_slot: int
    n_ctx: int
    kv_type: str
    use_mmap: bool
    n_batch: int
    n_ubatch: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    notes: tuple[str, ...] = field(default=())
    # Layers on llama.cpp RPC workers (weights_bytes and kv_bytes are then this board's share only).
    split: Split | None = None
    # LoRA adapters loaded with the model (checked against it), and their tensors' bytes (read into RAM).
    adapters: tuple[AdapterSpec, ...] = ()
    adapter_bytes: int = 0
    # Logits rows beyond one per slot that a decode may ask for: speculative drafts verified in the same step.
    draft_rows: int = 0
    # A speculative decoding draft model loaded next to the model, and its weights + KV + compute bytes.
    draft_path: Path | None = None
    draft_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.adapter_bytes + self.draft_bytes + self.kv_bytes + self.compute_bytes
                + self.overhead_bytes)

    def describe(self) -> str:
        """One line for `clawd-edge doctor` and the daemon's startup log."""
        text = (
            f"{self.n_parallel} slot(s) x {self.n_ctx_per_slot} ctx ({self.n_ctx} KV cells, split evenly, "
            f"KV {self.kv_type}), {'mmap' if self.use_mmap else 'read into RAM'}, batch {self.n_batch}/"
            f"{self.n_ubatch}; estimated {_mib(self.total_bytes)} = weights {_mib(self.weights_bytes)} + "
            + (f"{len(self.adapters)} LoRA adapter(s) {_mib(self.adapter_bytes)} + " if self.adapters else "")
            + (f"draft model {_mib(self.draft_bytes)} + " if self.draft_path is not None else "")
            + f"KV {_mib(self.kv_bytes)} + compute {_mib(self.compute_bytes)} + runtime "
            f"{_mib(self.overhead_bytes)}, of budget {_mib(self.budget)} ({self.budget_source})"
        )
        if self.split is not None:
            text += f"; {self.split.describe()}"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


def _mib(n: float) -> str:
    return f"{n / MIB:.0f} MiB"


def _layer_bytes(info: GgufInfo, kv_type: str) -> float:
    """K and V of one layer for one context cell."""
    arch = info.architecture
    k_dim = int(info.metadata.get(f"{arch}.attention.key_length", info.head_dim))
    v_dim = int(info.metadata.get(f"{arch}.attention.value_length", k_dim))
    return info.n_head_kv * (k_dim + v_dim) * KV_ELEMENT_BYTES[kv_type]


def kv_bytes_per_cell(info: GgufInfo, kv_type: str) -> float:
    """K and V of every full-attention layer for one context cell (one token of one sequence)."""
    return (info.n_layers - _swa_layers(info)) * _layer_bytes(info, kv_type)


def _swa_layers(info: GgufInfo) -> int:
    """Layers with sliding-window attention: their cache holds only the window (llama.cpp swa_full=false)."""
    window = info.metadata.get(f"{info.architecture}.attention.sliding_window")
    every = SWA_GLOBAL_EVERY.get(info.architecture)
    if not window or not every:
        return 0  # unknown layout: plan every layer at full size (an over-estimate, never an OOM)
    return info.n_layers - info.n_layers // every


def swa_bytes(info: GgufInfo, kv_type: str, n_parallel: int, slot_ctx: int, n_ubatch: int) -> int:
    """The sliding-window layers' cache: per sequence, the window plus one ubatch, padded to 256 cells."""
    layers = _swa_layers(info)
    if not layers:
        return 0
    window = int(info.metadata[f"{info.architecture}.attention.sliding_window"])
    cells = min(slot_ctx, -(-(window + n_ubatch) // 256) * 256)
    return int(layers * _layer_bytes(info, kv_type) * cells * n_parallel)


def compute_bytes(info: GgufInfo, n_ubatch: int, n_outputs: int) -> int:
    """llama.cpp's CPU compute and output buffers, fitted on SmolLM2 and Gemma-3 logs, rounded up.

    The engine asks for at most one output (logits row) per slot per decode, so the logits buffers scale with
    the slot count rather than with the batch (llama.cpp's default would reserve n_batch x n_vocab floats).
    """
    n_ff = int(info.metadata.get(f"{info.architecture}.feed_forward_length", 4 * info.n_embd))
    activations = n_ubatch * (info.n_embd * 24 + n_ff * 8)
    logits = n_outputs * info.n_vocab * 4 * 2
    return activations + logits + 2 * MIB


def draft_bytes(info: GgufInfo, kv_type: str, n_parallel: int, slot_ctx: int, n_ubatch: int) -> int:
    """A draft model's weights (mmapped but all read, every step), its KV for the slots' cells and its compute."""
    kv = kv_bytes_per_cell(info, kv_type) * n_parallel * slot_ctx + swa_bytes(info, kv_type, n_parallel, slot_ctx,
                                                                                 n_ubatch)
    return info.file_size + int(kv) + compute_bytes(info, n_ubatch, n_parallel)


def _choose_kv_types(requested: str) -> tuple[str, ...]:
    if requested == "auto":
        return ("f16", "q8_0")
    if requested in KV_ELEMENT_BYTES:
        return (requested,)
    raise ConfigError(f"{requested!r} is not allowed; expected one of auto, f16, q8_0", key="kv_cache_type")


def plan(info: GgufInfo, *, budget: int, budget_source: str, n_parallel: int, n_ctx_per_slot: int,
         total_context: int | None = None, kv_cache_type: str = "auto", n_batch: int = 256,
         workers: Sequence[tuple[str, int]] = (), adapters: tuple[AdapterSpec, ...] = (),
         adapter_bytes: int = 0, draft: GgufInfo | None = None, draft_rows: int = 0) -> MemoryPlan:
    """Fit `n_parallel` slots of `n_ctx_per_slot` into `budget`: f16 KV, else q8_0 (auto), else a shorter context.

    `total_context` below n_parallel x n_ctx_per_slot is split evenly between the slots. Not one pool shared by
    the slots (llama.cpp's kv_unified): in llama.cpp 0.3.36 (llama-cpp-python 0.3.36) a shared pool corrupts
    other sequences' cells once one sequence's cells are removed and reused, measured as logit differences of
    0.66-40 against decoding alone (scripts/repro_unified_kv.py); with a stream per slot they are 0.
    Raises MemoryPlanError naming the sizes when even the smallest context cannot fit.

    `workers` ((endpoint, free bytes) of llama.cpp RPC workers) take an even share of the layers, with their weights
    and KV cells: the budget then holds only this board's share (rpc.split_layers checks each worker's).
    A `draft` model (speculative decoding) stays on this board with as many cells as the slots, at the same KV type;
    `draft_rows` logits rows beyond one per slot hold the drafted tokens a decode verifies.
    """
    if n_parallel < 1 or n_ctx_per_slot < 1 or n_batch < 1:
        raise ConfigError("parallel, max_sequence_length and batch_size must be >= 1")
    notes: list[str] = []
    slot_ctx = n_ctx_per_slot
    if info.n_ctx_train and slot_ctx > info.n_ctx_train:
        notes.append(f"max_sequence_length {slot_ctx} capped to the model's training context {info.n_ctx_train}")
        slot_ctx = info.n_ctx_train
    if total_context is not None and total_context < n_parallel * slot_ctx:
        split = max(1, total_context // n_parallel)
        notes.append(f"context {total_context} split evenly: {split} per slot instead of max_sequence_length "
                     f"{slot_ctx}")
        slot_ctx = split
    pool = n_parallel * slot_ctx
    n_ubatch = min(n_batch, MAX_UBATCH)
    kv_types = _choose_kv_types(kv_cache_type)
    rpc_split = None
    share = 1.0  # of the layers (and so of the KV cells) held by this board
    weights = info.file_size
    if workers:
        layer_kv = (kv_bytes_per_cell(info, kv_types[0]) * pool
                    + swa_bytes(info, kv_types[0], n_parallel, slot_ctx, n_ubatch)) / info.n_layers
        rpc_split = split_layers(info.n_layers, info.file_size / info.n_layers, layer_kv, workers)
        share = rpc_split.local_share
        weights = info.file_size - sum(b.weights_bytes for b in rpc_split.workers)
    compute = compute_bytes(info, n_ubatch, n_parallel + draft_rows)
    fixed = weights + adapter_bytes + compute + RUNTIME_OVERHEAD

    def drafted(kv_type: str, per_slot: int) -> int:
        return 0 if draft is None else draft_bytes(draft, kv_type, n_parallel, per_slot, n_ubatch)

    def build(kv_type: str, cells: int, per_slot: int) -> MemoryPlan:
        return MemoryPlan(
            model_path=info.path, budget=budget, budget_source=budget_source, n_parallel=n_parallel,
            n_ctx_per_slot=per_slot, n_ctx=cells, kv_type=kv_type, use_mmap=True,
            n_batch=n_batch, n_ubatch=n_ubatch, weights_bytes=weights,
            kv_bytes=int(share * (cells * kv_bytes_per_cell(info, kv_type)
                                  + swa_bytes(info, kv_type, n_parallel, per_slot, n_ubatch))),
            compute_bytes=compute, overhead_bytes=RUNTIME_OVERHEAD, notes=tuple(notes), split=rpc_split,
            adapters=adapters, adapter_bytes=adapter_bytes,
            draft_path=None if draft is None else draft.path, draft_bytes=drafted(kv_type, per_slot),
            draft_rows=draft_rows,
        )

    for kv_type in kv_types:
        if build(kv_type, pool, slot_ctx).total_bytes <= budget:
            if kv_type != kv_types[0]:
                notes.append(f"KV {kv_types[0]} would need {_mib(build(kv_types[0], pool, slot_ctx).kv_bytes)}; "
                             f"using {kv_type}")
            return build(kv_type, pool, slot_ctx)
    # Keep the slot count, use the most compact KV type, and shrink the context until it fits.
    kv_type = kv_types[-1]
    swa = share * swa_bytes(info, kv_type, n_parallel, slot_ctx, n_ubatch)
    # The draft model's cells shrink with the slots' context: its weights and compute are fixed, its KV per cell
    # adds to the model's (its sliding-window share is taken at the full context, an over-estimate).
    draft_fixed = drafted(kv_type, 0)
    draft_cell = 0.0 if draft is None else kv_bytes_per_cell(draft, kv_type)
    draft_swa = drafted(kv_type, slot_ctx) - draft_fixed - int(draft_cell * n_parallel * slot_ctx)
    cells = max(0, int((budget - fixed - swa - draft_fixed - draft_swa)
                       // max(share * kv_bytes_per_cell(info, kv_type) + draft_cell, 1.0)))
    floor = min(MIN_SLOT_CONTEXT, slot_ctx)
    per_slot = min(slot_ctx, cells // n_parallel)
    # llama.cpp pads KV sizes to 256 cells anyway, so a round size wastes nothing.
    per_slot -= per_slot % 256 if per_slot >= 256 else 0
    new_pool = per_slot * n_parallel
    if per_slot >= floor:
        notes.append(f"context shrunk from {n_ctx_per_slot} to {per_slot} per slot to fit the budget")
        return build(kv_type, new_pool, per_slot)
    smallest = build(kv_type, floor * n_parallel, floor)
    raise MemoryPlanError(
        f"{info.path.name} does not fit in the memory budget of {_mib(budget)} ({budget_source}): it needs at "
        f"least {_mib(smallest.total_bytes)} (weights {_mib(weights)} + "
        + (f"LoRA adapters {_mib(adapter_bytes)} + " if adapter_bytes else "")
        + (f"draft model {_mib(smallest.draft_bytes)} + " if draft is not None else "")
        + f"KV {_mib(smallest.kv_bytes)} for "
        f"{n_parallel} slot(s) x {floor} ctx {kv_type} + compute {_mib(compute)} + runtime "
        f"{_mib(RUNTIME_OVERHEAD)}); use a smaller model, fewer slots (parallel)"
        + (", no draft_model" if draft is not None else "") + " or a larger memory_budget"
    )


def plan_for(settings: Settings, model: ResolvedModel | Path | str) -> MemoryPlan:
    """The plan the engine would use for `settings` and `model`, without loading anything."""
    path = model if isinstance(model, (Path, str)) else model.path
    info = inspect(path)
    adapter_bytes = check_files(settings.adapters, info)  # a wrong adapter file fails before anything loads
    budget, source = sysinfo.memory_budget(settings.memory_budget)
    # Each RPC worker is asked for its memory now (and a dead one named), before anything is loaded.
    workers = [(w.endpoint, probe(w).free_bytes) for w in parse_workers(settings.rpc)]
    spec = SpecSettings.from_settings(settings)
    draft = None
    if spec.mode == "draft" and settings.draft_model is not None:
        from ..store import resolve_model

        draft = inspect(resolve_model(settings, settings.draft_model).path)
    return plan(info, budget=budget, budget_source=source, n_parallel=settings.parallel,
                n_ctx_per_slot=settings.max_sequence_length,
                total_context=settings.context, kv_cache_type=settings.kv_cache_type, n_batch=settings.batch_size,
                workers=workers, adapters=settings.adapters, adapter_bytes=adapter_bytes, draft=draft,
                draft_rows=spec.rows)
