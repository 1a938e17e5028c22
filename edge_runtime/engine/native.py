"""The llama.cpp side of the engine: one model, one context and one batch via llama-cpp-python's low-level API."""
from __future__ import annotations

import ctypes
import enum
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cpu import guard
from ..cpu.build import installed as installed_build
from ..cpu.features import CpuInfo, read_cpu
from ..errors import EngineError, ModelError
from .adapters import LoadedAdapters
from .bufts import drop_extra_buffer_types
from .greedy import GreedyPicker
from .planner import MemoryPlan

if TYPE_CHECKING:
    from .rpc import Split
    from .rpcnative import AbortHandler, Offload

_PIECE_BUFFER = 256
# A sequence's KV state is copied through a host buffer this big at most (about 1400 tokens of SmolLM2's f16 cache);
# a longer donor is recomputed rather than doubling its cells in RAM for a moment on a 2 GB board.
MAX_STATE_COPY_BYTES = 32 * 1024 * 1024
# Runtime.decode's status for a batch that asks for more logits rows than the context holds (never sent to llama.cpp).
TOO_MANY_OUTPUTS = -100
log = logging.getLogger("edge_runtime.engine")


def import_llama() -> Any:
    """llama_cpp is heavy (numpy, the shared library): imported only when a model is really loaded.

    The CPU guard runs first: a build for instruction sets this CPU lacks is refused with one line before any of
    its code runs (it would die with SIGILL), and llama.cpp's AMX path, which crashes in this version, is taken
    out of use on CPUs that have AMX.
    """
    build, cpu = installed_build(), read_cpu()
    if build is not None:
        guard.check(build, cpu)
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the installation
        from ..errors import DependencyMissing

        raise DependencyMissing(f"llama-cpp-python ({exc})") from None
    route_llama_logs(llama_cpp)
    _guard_loaded(llama_cpp, build is not None and build.profile is not None, cpu)
    return llama_cpp


@functools.cache
def _guard_loaded(lib: Any, known_profile: bool, cpu: CpuInfo) -> None:
    """Once per process, with the library loaded but before any model: checks that need llama.cpp's own word."""
    info = lib.llama_print_system_info().decode(errors="replace")
    if not known_profile:
        guard.check_loaded(info, cpu)
    if guard.amx_is_broken(info, cpu):
        dropped = drop_extra_buffer_types(library_dir(lib), {"AMX"})
        log.warning("%s: llama.cpp's AMX weight buffers are turned off (they crash in this llama.cpp, issue "
                    "20824); x86 repacking stays on. A clawd-edge build profile never has AMX.",
                    f"dropped {', '.join(dropped)}" if dropped else "AMX not in use")


@functools.cache
def route_llama_logs(lib: Any) -> Any:
    """Send llama.cpp's log lines to the `llama.cpp` Python logger (installed once per process).

    llama-cpp-python 0.3.36 maps ggml's log levels with a stale enum (WARN becomes ERROR), so its own filter prints
    load chatter to stderr. llama.cpp warns about many benign things; real failures reach us as return codes and
    become ClawdErrors, so its warnings are logged at INFO. The cache keeps the C callback alive.
    """
    logger = logging.getLogger("llama.cpp")
    # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
    levels = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR, 5: logging.DEBUG}

    def route(level: int, text: bytes, user_data: Any) -> None:
        py_level = levels.get(level, logging.DEBUG)
        if logger.isEnabledFor(py_level):
            message = text.decode("utf-8", errors="replace").rstrip()
            if message:
                logger.log(py_level, "%s", message)

    callback = lib.llama_log_callback(route)
    lib.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


def library_dir(lib: Any) -> Path:
    """The folder of the libllama (and libggml) that llama-cpp-python loaded."""
    return Path(lib.llama_cpp._lib._name).parent


def raw_function(lib: Any, name: str, argtypes: list[Any], restype: Any) -> Any:
    """A private handle on a libllama function with our own signature (a bare address instead of a float *)."""
    fn = getattr(ctypes.CDLL(lib.llama_cpp._lib._name), name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _address(pointer: Any, what: str) -> int:
    value = ctypes.cast(pointer, ctypes.c_void_p).value
    if not value:
        raise EngineError(f"llama.cpp could not allocate {what}")
    return int(value)


def flash_attn_type(lib: Any, mode: str) -> Any:
    """llama.cpp's flash_attn_type for the `flash_attn` setting (auto, on, off)."""
    modes = {"auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
             "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED}
    return modes[mode]


class Handles:
    """A llama_model with the context and batch made for it, freed together: what the chat and the embeddings
    runtimes share. Every method runs on the worker thread that owns them."""

    def __init__(self, path: Path, *, mmap: bool, what: str, setup: Callable[[], None], split: Split | None = None,
                 on_abort: AbortHandler | None = None) -> None:
        """Load `what` from `path`, then `setup()` makes the context and batch; on any failure close() frees what
        was made. With a `split`, layers go to its RPC workers, and `on_abort` hears of a worker lost mid-run
        (llama.cpp aborts the process then)."""
        lib = self.lib = import_llama()  # the CPU guard first, and llama.cpp's log routed to Python
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.load_mode = lib.LLAMA_LOAD_MODE_MMAP if mmap and lib.llama_supports_mmap() \
            else lib.LLAMA_LOAD_MODE_NONE
        self.offload: Offload | None = None
        if split is not None and split.workers:
            from .rpcnative import Offload

            self.offload = Offload(library_dir(lib), split)
            if on_abort is not None:
                self.offload.on_abort(on_abort)
            self.offload.apply(lib, mparams)
        self.model = lib.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            if self.offload is not None:
                self.offload.close()
            raise ModelError(f"{path}: llama.cpp could not load {what} (unsupported architecture, corrupt tensor "
                             "data, or an RPC worker without the memory; run with -v for llama.cpp's log)")
        self.ctx: Any = None
        self.batch: Any = None
        try:
            setup()
        except BaseException:
            self.close()
            raise

    def _create_context(self, cparams: Any, what: str) -> None:
        """The context `cparams` describe, and the vocabulary and memory every runtime reads through."""
        lib = self.lib
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create {what}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self._eog: dict[int, bool] = {}
        self._logits_ith = raw_function(lib, "llama_get_logits_ith", [ctypes.c_void_p, ctypes.c_int32],
                                        ctypes.c_void_p)

    def is_eog(self, token: int) -> bool:
        """End of generation; cached because every ctypes call is a point where the GIL changes hands."""
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self.lib.llama_vocab_is_eog(self.vocab, token))
        return eog

    def logits_address(self, index: int) -> int:
        """Where batch row `index`'s logits are after a decode (n_vocab floats, valid until the next decode)."""
        address = self._logits_ith(self.ctx, index)
        if not address:
            raise EngineError(f"llama.cpp has no logits for batch row {index}")
        return int(address)

    def _init_batch(self, n: int, what: str) -> None:
        """A batch of n tokens of one sequence each, and the addresses its tokens are written through."""
        self.batch = self.lib.llama_batch_init(n, 0, 1)
        self._token_addr = _address(self.batch.token, what)
        self._pos_addr = _address(self.batch.pos, what)
        self._logits_addr = _address(self.batch.logits, what)
        self._seq_rows = [self.batch.seq_id[i] for i in range(n)]
        for i in range(n):
            self.batch.n_seq_id[i] = 1
        self.batch.n_tokens = 0

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True,
                 what: str = "the prompt") -> list[int]:
        """The model's tokens for `text` (`what` names it in the error should llama.cpp fail)."""
        raw = text.encode("utf-8")
        size = len(raw) + 8
        while True:
            buf = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            if -n <= size:  # pragma: no cover - llama.cpp only returns a negative count when it needs more room
                raise EngineError(f"llama.cpp failed to tokenize {what}")
            size = -n

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
        if self.offload is not None:
            self.offload.close()
            self.offload = None


class Copy(enum.Enum):
    """What Runtime.copy_prefix did to the destination sequence."""

    COPIED = "copied"
    UNTOUCHED = "untouched"
    EMPTIED = "emptied"


class Runtime(Handles):
    """A loaded model + context sized by a MemoryPlan; every method runs on the engine's worker thread."""

    def __init__(self, plan: MemoryPlan, *, threads: int, flash_attn: str = "auto",
                 on_abort: AbortHandler | None = None) -> None:
        self.plan = plan
        self.greedy: GreedyPicker | None = None
        super().__init__(plan.model_path, mmap=plan.use_mmap, what="the model",
                         setup=functools.partial(self._init_context, plan, threads, flash_attn), split=plan.split,
                         on_abort=on_abort)

    def _init_context(self, plan: MemoryPlan, threads: int, flash_attn: str) -> None:
        lib = self.lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = plan.n_ctx
        cparams.n_batch = plan.n_batch
        cparams.n_ubatch = plan.n_ubatch
        cparams.n_seq_max = plan.n_parallel
        # One logits row per slot per decode, plus the rows of speculative drafts being verified (the plan's
        # draft_rows): reserving n_batch rows (the default) would cost n_batch x n_vocab floats of compute buffer
        # (257 MiB for Gemma-3's 262k vocabulary).
        cparams.n_outputs_max = self.n_outputs_max = plan.n_parallel + plan.draft_rows
        self._outputs = 0  # logits rows asked for in the batch being built (checked by decode)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False  # one KV stream per slot; see planner.plan for why never a shared pool
        cparams.swa_full = False  # sliding-window layers keep only their window, as llama-server does
        cparams.no_perf = True
        kv_type = lib.GGML_TYPE_Q8_0 if plan.kv_type == "q8_0" else lib.GGML_TYPE_F16
        cparams.type_k = kv_type
        cparams.type_v = kv_type
        # A quantized V cache only works with flash attention.
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if plan.kv_type == "q8_0" \
            else flash_attn_type(lib, flash_attn)
        self._create_context(cparams, f"a context for {plan.describe()}")
        self.adapters = LoadedAdapters(lib, self.model, self.ctx, plan.adapters)
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(self.ctx))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.n_swa = int(lib.llama_model_n_swa(self.model))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self.eos = int(lib.llama_vocab_eos(self.vocab))
        self.bos_text = self._special_text(self.bos)
        self.eos_text = self._special_text(self.eos)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(_PIECE_BUFFER)
        self.greedy = GreedyPicker.create(library_dir(lib), self.n_vocab, threads)
        self._init_batch(self.n_batch, "a batch")
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny decode pages the mmapped weights in and builds the graph, so the first request is not slow."""
        token = self.bos if self.bos >= 0 else 0
        self.add_one(0, token, 0, 0)
        if self.decode() != 0:
            raise EngineError(f"llama.cpp failed its first decode of {self.plan.model_path}")
        self.lib.llama_memory_clear(self.memory, True)

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        n = self.lib.llama_token_to_piece(self.vocab, token, ctypes.create_string_buffer(64), 64, 0, True)
        buf = ctypes.create_string_buffer(-n if n < 0 else 64)  # a negative n is the size the piece needs
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def control_texts(self) -> list[str]:
        """The text of every token llama.cpp reads as a control token when parsing specials (0.2 s for 262k)."""
        lib, vocab = self.lib, self.vocab
        mask = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN
        return [lib.llama_vocab_get_text(vocab, t).decode("utf-8", errors="replace")
                for t in range(self.n_vocab) if lib.llama_vocab_get_attr(vocab, t) & mask]

    # -- text ---------------------------------------------------------------------------------------------
    def piece(self, token: int) -> bytes:
        """The bytes of a generated token (control tokens render as nothing), cached per token id."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        n = self.lib.llama_token_to_piece(self.vocab, token, self._piece_buf, _PIECE_BUFFER, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            data = buf.raw[:n]
        else:
            data = self._piece_buf.raw[:n]
        self._pieces[token] = data
        return data

    # -- KV cache -------------------------------------------------------------------------------------------
    def seq_rm(self, seq: int, start: int) -> bool:
        """Drop the cells of `seq` at positions >= start; False if the cache cannot cut there (recurrent/SWA)."""
        return bool(self.lib.llama_memory_seq_rm(self.memory, seq, start, -1))

    def seq_pos_min(self, seq: int) -> int:
        return int(self.lib.llama_memory_seq_pos_min(self.memory, seq))

    def copy_prefix(self, src: int, dst: int, n: int) -> Copy:
        """Make the first n cells of `src` the whole of `dst` (positions 0..n-1).

        COPIED: done. UNTOUCHED: refused before `dst` was touched (state too large to stage), so its own cells
        are still good. EMPTIED: failed part-way, and `dst` was cleared. The sequence's state goes through a host
        buffer (what llama-server does to restore a cached prompt into any slot) and is cut back to n: llama.cpp
        copies only whole streams between KV streams.
        """
        lib = self.lib
        size = int(lib.llama_state_seq_get_size(self.ctx, src))
        if size <= 0 or size > MAX_STATE_COPY_BYTES:
            return Copy.UNTOUCHED
        buf = (ctypes.c_uint8 * size)()
        if int(lib.llama_state_seq_get_data(self.ctx, buf, size, src)) != size:
            return Copy.UNTOUCHED
        if int(lib.llama_state_seq_set_data(self.ctx, buf, size, dst)) == 0 or not self.seq_rm(dst, n):
            self.seq_rm(dst, 0)
            return Copy.EMPTIED
        return Copy.COPIED

    # -- batch ----------------------------------------------------------------------------------------------
    def add(self, at: int, tokens: Sequence[int], start_pos: int, seq: int, *, logits: bool = False,
            all_logits: bool = False) -> int:
        """Write `tokens` into the batch at index `at` (positions from start_pos); returns the next free index.

        `logits` asks for the last token's logits row; `all_logits` for every token's (a draft being verified).
        """
        n = len(tokens)
        ctypes.memmove(self._token_addr + 4 * at, (ctypes.c_int32 * n)(*tokens), 4 * n)
        ctypes.memmove(self._pos_addr + 4 * at, (ctypes.c_int32 * n)(*range(start_pos, start_pos + n)), 4 * n)
        ctypes.memset(self._logits_addr + at, 1 if all_logits else 0, n)
        rows = self._seq_rows
        for i in range(at, at + n):
            rows[i][0] = seq
        if all_logits:
            self._outputs += n
        elif logits:
            self.batch.logits[at + n - 1] = 1
            self._outputs += 1
        self.batch.n_tokens = at + n
        return at + n

    def add_one(self, at: int, token: int, pos: int, seq: int) -> int:
        """The per-step hot path of a generating slot: one token that wants logits."""
        batch = self.batch
        batch.token[at] = token
        batch.pos[at] = pos
        self._seq_rows[at][0] = seq
        batch.logits[at] = 1
        batch.n_tokens = at + 1
        self._outputs += 1
        return at + 1

    def pick_greedy(self, index: int) -> int | None:
        """The argmax of batch row `index`'s logits without llama.cpp's candidate array; None: use a sampler."""
        if self.greedy is None:
            return None
        address = self._logits_ith(self.ctx, index)
        return self.greedy.pick(address) if address else None

    def decode(self) -> int:
        """0 ok, 1 no room in the KV cache, other values are llama.cpp errors."""
        outputs, self._outputs = self._outputs, 0
        if outputs > self.n_outputs_max:
            # llama.cpp aborts the whole process (GGML_ASSERT) on a batch with more logits rows than the context
            # was made for; its output buffer is allocated once for n_outputs_max rows, which is also why the
            # greedy graphs may keep row addresses for the context's life. The scheduler keeps speculative
            # drafts within the rows reserved for them (plan.draft_rows).
            return TOO_MANY_OUTPUTS
        return int(self.lib.llama_decode(self.ctx, self.batch))

    def close(self) -> None:
        if self.greedy is not None:
            self.greedy.close()
            self.greedy = None
        super().close()
