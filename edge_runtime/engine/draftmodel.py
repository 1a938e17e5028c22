"""A small GGUF model with the target's vocabulary that drafts tokens for speculative decoding."""
from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EngineError, ModelError
from .native import Handles, flash_attn_type
from .sharing import common_prefix

if TYPE_CHECKING:
    from .native import Runtime
    from .speculative import DraftWant

log = logging.getLogger("edge_runtime.engine")

# A seq stops drafting once the draft model's top probability falls below this (llama.cpp's --draft-p-min, 0 by
# default in the vendored version). SmolLM2-135M Q4_1 reading README.md token by token (1500 tokens) is well
# calibrated: its greedy pick was the real next token 55% of the time at p 0.6-0.7, 78% at 0.7-0.8, 98% above 0.9,
# 44-46% at 0.4-0.6 and 8% below 0.2. A drafted token costs a verification row in the target's step (~0.4 of a
# one-token decode, PRIOR_SLOPE in speculative.py) plus one decode of the draft model, so it pays from p ~0.5;
# 0.6 keeps a margin for the draft's own decode on 2 cores.
P_MIN = 0.6
# The vocabulary check compares the texts of the first and last VOCAB_EDGE tokens (special and byte tokens, where
# tokenizer versions differ) and VOCAB_STRIDE_SAMPLES spread evenly between them; a vocabulary smaller than that is
# compared whole. Each text is a ctypes call: all of Gemma-3's 262k take 0.2 s per model (measured), the sample
# 12 ms for both; two different tokenizers of the same size differ almost everywhere, so the stride finds them.
VOCAB_EDGE = 512
VOCAB_STRIDE_SAMPLES = 8192
# llama.cpp's enum llama_vocab_type, for the refusal's message.
VOCAB_TYPES = ("none", "SPM", "BPE", "WPM", "UGM", "RWKV", "PLaMo-2")


@dataclass(eq=False)
class _Seq:
    """One draft KV sequence: the tokens whose cells it holds, and this call's drafting state."""

    index: int
    cells: list[int] = field(default_factory=list)
    draft: list[int] = field(default_factory=list)
    pick: int = -1  # the draft model's next token after `cells` (valid while drafting)
    room: int = 0  # the most tokens this call drafts for it


class DraftModel(Handles):
    """A draft model with one KV sequence per target slot; drafts greedily, every drafting slot in one decode.

    Every method runs on the engine worker thread (the target's), which is also what makes its state safe.
    """

    cheap = False

    def __init__(self, path: Path, target: Runtime, *, n_seq: int, n_ctx_seq: int, threads: int,
                 kv_type: str) -> None:
        """Load `path` next to the loaded `target`: n_seq sequences of n_ctx_seq cells each, KV `kv_type`.

        Raises ModelError when llama.cpp cannot load the file or its vocabulary is not the target's."""
        self.path = path
        self._seqs = [_Seq(i) for i in range(n_seq)]
        super().__init__(path, mmap=True, what="the draft model",
                         setup=functools.partial(self._init_context, target, n_seq, n_ctx_seq, threads, kv_type))

    def _init_context(self, target: Runtime, n_seq: int, n_ctx_seq: int, threads: int, kv_type: str) -> None:
        lib = self.lib
        # Before the context: a refused model then never allocates its KV cache.
        _check_vocab(lib, self.model, self.path, target)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_seq * n_ctx_seq
        # The target's batch sizes, which the planner sized this context's compute buffer for: a prompt catches up
        # in chunks of n_batch tokens shared by every sequence that needs one.
        cparams.n_batch = target.plan.n_batch
        cparams.n_ubatch = target.plan.n_ubatch
        cparams.n_seq_max = n_seq
        cparams.n_outputs_max = n_seq  # one logits row per sequence per decode, never one per batch token
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = False  # a stream per sequence, as the target (planner.plan says why)
        cparams.swa_full = False
        cparams.no_perf = True
        ggml_type = lib.GGML_TYPE_Q8_0 if kv_type == "q8_0" else lib.GGML_TYPE_F16
        cparams.type_k = cparams.type_v = ggml_type
        # A quantized V cache only works with flash attention.
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if kv_type == "q8_0" \
            else flash_attn_type(lib, "auto")
        self._create_context(cparams, f"a draft context of {n_seq} x {n_ctx_seq} cells for {self.path.name}")
        self.n_ctx_seq = min(n_ctx_seq, int(lib.llama_n_ctx_seq(self.ctx)))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.n_swa = int(lib.llama_model_n_swa(self.model))
        self._init_batch(self.n_batch, "a draft batch")
        self._warm_up()

    def _warm_up(self) -> None:
        """One decode pages the mmapped weights in and builds the graph, so the first draft is not slow."""
        bos = int(self.lib.llama_vocab_bos(self.vocab))
        if not self._decode([(max(bos, 0), 0, 0, True)]):
            raise EngineError(f"llama.cpp failed the first decode of the draft model {self.path}")
        self.lib.llama_memory_clear(self.memory, True)

    # -- drafting -------------------------------------------------------------------------------------------
    def draft(self, wants: Sequence[DraftWant]) -> list[list[int]]:
        """Up to want.n greedy tokens after each want's `last` (one want per seq); a seq stops early below P_MIN,
        before an end-of-generation token, or where its cells would pass n_ctx_seq."""
        drafting: list[_Seq] = []
        catch_up: list[tuple[int, int, int, bool]] = []  # (token, position, seq, logits) to evaluate first
        for want in wants:
            seq = self._seqs[want.seq]
            seq.draft, seq.pick = [], -1
            # Cells hold tokens + [last] + every draft token but the last, so k tokens need len(tokens) + k cells.
            seq.room = min(want.n, self.n_ctx_seq - len(want.tokens))
            if seq.room <= 0:
                continue
            catch_up.extend(self._sync(seq, want.tokens, want.last))
            drafting.append(seq)
        if not drafting:
            return [[] for _ in wants]
        try:
            self._evaluate(catch_up)
            self._extend(drafting)
        except EngineError as exc:
            # Drafts only make answers faster: a failed draft decode costs this step's drafts, never a request.
            log.warning("draft model: %s; its sequences start over", exc)
            for seq in drafting:
                seq.draft = []
            for seq in self._seqs:
                self.lib.llama_memory_seq_rm(self.memory, seq.index, 0, -1)
                seq.cells = []
        return [self._seqs[want.seq].draft for want in wants]

    def _sync(self, seq: _Seq, tokens: list[int], last: int) -> list[tuple[int, int, int, bool]]:
        """Cut the seq's cells back to their common prefix with tokens + [last]; the entries still to evaluate.

        The last token is always evaluated again, even when its cell is there: its logits are the first pick.
        """
        wanted, cells, index = [*tokens, last], seq.cells, seq.index
        keep = min(common_prefix(cells, wanted), len(wanted) - 1)
        if keep < len(cells):
            lib, memory = self.lib, self.memory
            # With a sliding window, cells before the window are gone: cutting back behind them would leave the
            # re-evaluated tokens attending to a hole, so the seq starts over (as the scheduler does for slots).
            if self.n_swa > 0 and keep > 0 and int(lib.llama_memory_seq_pos_min(memory, index)) > max(
                    0, keep - self.n_swa):
                keep = 0
            if not lib.llama_memory_seq_rm(memory, index, keep, -1):
                keep = 0
                lib.llama_memory_seq_rm(memory, index, 0, -1)
            del cells[keep:]
        cells.extend(wanted[keep:])
        end = len(wanted) - 1
        return [(wanted[pos], pos, index, pos == end) for pos in range(keep, len(wanted))]

    def _evaluate(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode the catch-up entries in n_batch chunks; each seq's first pick comes from its last entry."""
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start:start + self.n_batch]
            if not self._decode(chunk):
                raise EngineError(f"llama.cpp failed to evaluate {len(chunk)} tokens of a prompt")
            for row, (_, _, index, logits) in enumerate(chunk):
                if logits:
                    self._pick(self._seqs[index], row)

    def _extend(self, drafting: list[_Seq]) -> None:
        """Append each seq's pick to its draft, then decode the picks of the seqs still drafting, together."""
        active = [seq for seq in drafting if seq.pick >= 0]
        while active:
            step: list[tuple[int, int, int, bool]] = []
            for seq in active:
                seq.draft.append(seq.pick)
                if len(seq.draft) < seq.room:
                    step.append((seq.pick, len(seq.cells), seq.index, True))
                    seq.cells.append(seq.pick)
            if not step:
                return
            if not self._decode(step):
                raise EngineError(f"llama.cpp failed to decode {len(step)} draft tokens")
            active = []
            for row, (_, _, index, _) in enumerate(step):
                seq = self._seqs[index]
                self._pick(seq, row)
                if seq.pick >= 0:
                    active.append(seq)

    def _pick(self, seq: _Seq, row: int) -> None:
        """The greedy token of batch row `row` as the seq's next pick, or -1 when unsure or end of generation."""
        address = self.logits_address(row)
        logits = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,))
        token = int(np.argmax(logits))
        # The softmax's largest value: 1 / sum(exp(l - max)).
        p_top = 1.0 / float(np.exp(logits - logits[token]).sum())
        # An end-of-generation token is never drafted: the target's own pick after the last accepted draft token
        # finds it at no extra cost, and a row after it would be wasted.
        seq.pick = token if p_top >= P_MIN and not self.is_eog(token) else -1

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> bool:
        """One batch of (token, position, seq, logits) entries; False when llama.cpp fails it."""
        n = len(entries)
        tokens, positions, seqs, logits = zip(*entries, strict=True)
        ctypes.memmove(self._token_addr, (ctypes.c_int32 * n)(*tokens), 4 * n)
        ctypes.memmove(self._pos_addr, (ctypes.c_int32 * n)(*positions), 4 * n)
        ctypes.memmove(self._logits_addr, bytes(logits), n)
        rows = self._seq_rows
        for i, seq in enumerate(seqs):
            rows[i][0] = seq
        self.batch.n_tokens = n
        return int(self.lib.llama_decode(self.ctx, self.batch)) == 0

    def close(self) -> None:
        self._seqs = []
        super().close()


def _check_vocab(lib: Any, model: Any, path: Path, target: Runtime) -> None:
    """Refuse a draft model whose tokens would mean other things to the target (one line naming both files)."""
    vocab, other = lib.llama_model_get_vocab(model), target.vocab
    n = int(lib.llama_vocab_n_tokens(vocab))
    checks: list[tuple[str, object, object]] = [
        ("vocabulary type", _vocab_type(lib, vocab), _vocab_type(lib, other)),
        ("vocabulary size", n, target.n_vocab),
        ("BOS token", int(lib.llama_vocab_bos(vocab)), int(lib.llama_vocab_bos(other))),
        ("EOS token", int(lib.llama_vocab_eos(vocab)), int(lib.llama_vocab_eos(other)))]
    problem = next((f"its {what} is {mine}, the model's {theirs}" for what, mine, theirs in checks
                    if mine != theirs), None)
    if problem is None:
        for token in _sample_tokens(n):
            mine_text, their_text = lib.llama_vocab_get_text(vocab, token), lib.llama_vocab_get_text(other, token)
            if mine_text != their_text:
                problem = (f"token {token} is {mine_text.decode(errors='replace')!r} in it, "
                           f"{their_text.decode(errors='replace')!r} in the model")
                break
    if problem is not None:
        raise ModelError(f"draft model {path} does not share the vocabulary of {target.plan.model_path}: "
                         f"{problem}")


def _vocab_type(lib: Any, vocab: Any) -> str:
    kind = int(lib.llama_vocab_type(vocab))
    return VOCAB_TYPES[kind] if 0 <= kind < len(VOCAB_TYPES) else str(kind)


def _sample_tokens(n: int) -> range | list[int]:
    """Every token of a small vocabulary; of a large one, both edges and an even stride through the middle."""
    if n <= 2 * VOCAB_EDGE + VOCAB_STRIDE_SAMPLES:
        return range(n)
    stride = (n - 2 * VOCAB_EDGE) // VOCAB_STRIDE_SAMPLES + 1
    return [*range(VOCAB_EDGE), *range(VOCAB_EDGE, n - VOCAB_EDGE, stride), *range(n - VOCAB_EDGE, n)]
