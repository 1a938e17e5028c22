"""The embedding context's memory plan and pooling, decided from the GGUF before anything loads."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, MemoryPlanError, ModelError
from ..gguf_file import GgufInfo, inspect
from .planner import MIB, compute_bytes, kv_bytes_per_cell, swa_bytes

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import ResolvedModel
    from .planner import MemoryPlan

# Inputs evaluated together (sequence ids of one context); also the most outputs of a last-token batch.
MAX_GROUP_INPUTS = 32
# Causal LMs: logits rows per chunk are bounded by this many bytes of logits (compute buffer + output buffer).
LOGITS_BUDGET = 64 * MIB
MIN_CHUNK = 32
# The worker thread's own malloc arena, numpy's arrays and the output rows copied out: measured 15-20 MiB above
# llama.cpp's buffers in the daemon's RSS (beside the second mapping of shared weights, which RSS counts twice).
RUNTIME_OVERHEAD = 24 * MIB
# llama.cpp's pooling_type values (llama.h).
NATIVE_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
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
        name = NATIVE_POOLING.get(int(declared), str(declared))
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
    """The embedding context for `model`, checked against what `chat` leaves of its budget, before anything loads.

    Two ways to pool, chosen from the GGUF:

    - An embedding model (its GGUF has `<arch>.pooling_type`: BERT, nomic, bge, EmbeddingGemma, ...) is pooled by
      llama.cpp itself (its pooling and any dense or classifier layers after it). Such a model may attend both
      ways, so every input is evaluated in one ubatch: n_ctx = n_batch = n_ubatch = embedding_ctx, and several
      inputs share one batch as different sequence ids.
    - A causal LM (no pooling metadata, e.g. the chat model) is run with llama.cpp's pooling NONE and pooled by
      the runtime (its last token by default, or the mean over its tokens). Its attention is causal, so a long
      input may be evaluated in chunks that build on the KV cache, which matters because llama.cpp computes the
      output head for every token of an embeddings batch: in one 512-token ubatch that is 512 rows of logits,
      512 MiB of compute buffer plus a 512 MiB output buffer for Gemma-3's 262k vocabulary (measured: 1.4 GiB
      RSS). Chunks are sized so those logits stay within LOGITS_BUDGET; last-token pooling evaluates all but each
      input's last token without any outputs (no output head at all).

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
