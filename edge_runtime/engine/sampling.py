"""Per-request samplers built from llama.cpp's native sampler chain, and the range checks on their parameters."""
from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest
from .logprobs import MAX_TOP_LOGPROBS
from .types import SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
# llama.cpp takes top_k and penalty_last_n as C int32: ctypes would wrap a larger value to a wrong, maybe negative, one.
MAX_INT32 = 2**31 - 1
# OpenAI allows 300 biased tokens per request.
MAX_LOGIT_BIAS = 300
# When the model's own pick breaks the grammar, one of its next best few usually fits: checking these against the
# grammar costs tens of microseconds, the whole vocabulary ~7 ms on SmolLM2's 49k (measured in a tool call, where
# 13% of the tokens needed it). Only if none of them fits is the whole vocabulary filtered.
GRAMMAR_SHORTLIST = 32


def validate(p: SamplingParams) -> None:
    """Reject out-of-range parameters up front, naming the parameter (the HTTP layer maps it to `param`)."""
    checks: list[tuple[bool, str, str]] = [
        (p.max_tokens >= 1, "max_tokens", "must be >= 1"),
        (math.isfinite(p.temperature), "temperature", "must be a finite number"),
        (0 <= p.top_k <= MAX_INT32, "top_k", "must be between 0 (0 disables it) and 2147483647"),
        (0.0 < p.top_p <= 1.0, "top_p", "must be > 0 and <= 1"),
        (0.0 <= p.min_p <= 1.0, "min_p", "must be between 0 and 1"),
        (0.0 < p.repeat_penalty <= 10.0, "repeat_penalty", "must be > 0 and <= 10"),
        (-2.0 <= p.frequency_penalty <= 2.0, "frequency_penalty", "must be between -2 and 2"),
        (-2.0 <= p.presence_penalty <= 2.0, "presence_penalty", "must be between -2 and 2"),
        (-1 <= p.penalty_last_n <= MAX_INT32, "penalty_last_n",
         "must be between -1 (-1 = the whole context) and 2147483647"),
        (p.seed is None or 0 <= p.seed < 2**32, "seed", "must be between 0 and 4294967295"),
        (len(p.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed"),
        (all(isinstance(s, str) and len(s) <= MAX_STOP_LENGTH for s in p.stop), "stop",
         f"stop strings must be strings of at most {MAX_STOP_LENGTH} characters"),
        (not (p.grammar and p.json_schema is not None), "grammar", "give either grammar or json_schema, not both"),
        (len(p.logit_bias) <= MAX_LOGIT_BIAS, "logit_bias", f"at most {MAX_LOGIT_BIAS} tokens may be biased"),
        (all(math.isfinite(b) and -100 <= b <= 100 for _, b in p.logit_bias), "logit_bias",
         "biases must be between -100 and 100"),
        (p.logprobs is None or 0 <= p.logprobs <= MAX_TOP_LOGPROBS, "top_logprobs",
         f"must be between 0 and {MAX_TOP_LOGPROBS}"),
    ]
    for ok, param, message in checks:
        if not ok:
            raise InvalidRequest(f"{param} {message}", param=param)


def penalties_active(p: SamplingParams) -> bool:
    return p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


class Sampler:
    """One request's native samplers.

    `chain` picks a token from the logits without the grammar. With a grammar, `full` is grammar + the same
    steps: a token from `chain` is checked against the grammar alone (one candidate, cheap) and only when it is
    rejected is the full vocabulary filtered through the grammar -- llama.cpp's own common_sampler trick, since a
    grammar pass over a 49k-262k vocabulary costs milliseconds. Penalties are stateful, so with penalties and a
    grammar every token takes the full path (the cheap check would see different logits).
    """

    def __init__(self, lib: Any, vocab: Any, params: SamplingParams, grammar: str | None, *, n_vocab: int,
                 n_ctx: int, lazy: tuple[str, str] | None = None) -> None:
        """`lazy` (trigger, grammar): sample freely until the text has the trigger, then follow the grammar."""
        self._lib = lib
        self._n_vocab = n_vocab
        self._n_ctx = n_ctx
        self._params = params
        self._vocab = vocab
        self._lazy = lazy
        self._seen = ""  # the generated text's tail, where the trigger is looked for
        for token, _ in params.logit_bias:
            if not 0 <= token < n_vocab:
                raise InvalidRequest(f"logit_bias: token {token} is not in this model's vocabulary (0..{n_vocab - 1})",
                                     param="logit_bias")
        self.chain: Any = None
        self.full: Any = None
        self.grammar: Any = None
        self.penalties: Any = None
        self._single: Any = None
        self._single_data: Any = None
        self._short: Any = None
        self._short_data: Any = None
        # The plain argmax (no penalties, no grammar): the caller may pick it without the chain (greedy.py).
        self.greedy = params.temperature <= 0 and grammar is None and not penalties_active(params) \
            and not params.logit_bias
        try:
            if lazy is not None:
                self._build(vocab, params, lazy[1])  # parsed once now, so a bad grammar is this request's 400
                self.free()
            self._build(vocab, params, grammar)
        except BaseException:
            self.free()
            raise

    def watch(self, text: str, tokenize: Callable[[str], list[int]]) -> bool:
        """Follow the generated `text`: once the lazy trigger (a tool call's marker) is written, the grammar governs
        every later token. False if what came after the trigger in the same token does not fit the grammar.

        This is llama.cpp's lazy grammar done here: llama.cpp feeds the text after its trigger to the grammar
        unchecked and aborts the process if it does not fit. Penalties start over (their state lives in the chain
        being replaced; a call's arguments are better without them anyway).
        """
        if self._lazy is None:
            return True
        trigger, grammar = self._lazy
        seen = self._seen + text
        at = seen.find(trigger)
        if at < 0:
            # The longest tail that may still be the trigger's start (the trigger spans tokens: "<", "tool", ...).
            self._seen = seen[-(len(trigger) - 1):] if len(trigger) > 1 else ""
            return True
        self._lazy, self._seen = None, ""
        self.free()
        self.greedy = False
        try:
            self._build(self._vocab, self._params, grammar)
        except InvalidRequest:  # checked at admission; never an exception on the engine thread mid-answer
            return False
        return all(self.accepts(token) for token in tokenize(seen[at + len(trigger):]))

    def accepts(self, token: int) -> bool:
        """Whether the grammar allows `token` next; if so it is accepted (the grammar advances past it).

        llama.cpp throws a C++ exception (which aborts the process through ctypes) when a grammar is made to
        accept a token it does not allow, so every token fed from outside the sampler is checked here first.
        """
        if self.grammar is None:
            return True
        cell = self._single_data[0]
        cell.id, cell.logit, cell.p = token, 1.0, 0.0
        self._single.size, self._single.selected = 1, -1
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(self._single))
        if not math.isfinite(cell.logit):
            return False
        self._lib.llama_sampler_accept(self.grammar, token)
        return True

    def _steps(self, chain: Any, p: SamplingParams) -> Any:
        """Add logit biases, penalties and the picking steps to `chain`; returns the penalties sampler (or None)."""
        lib = self._lib
        if p.logit_bias:
            biases = (lib.llama_logit_bias * len(p.logit_bias))()
            for cell, (token, bias) in zip(biases, p.logit_bias, strict=True):
                cell.token, cell.bias = token, bias
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(self._n_vocab, len(p.logit_bias),
                                                                                  biases))
        penalties = None
        if penalties_active(p):
            last_n = self._n_ctx if p.penalty_last_n == -1 else p.penalty_last_n
            penalties = lib.llama_sampler_init_penalties(self._n_vocab, last_n, p.repeat_penalty,
                                                         p.frequency_penalty, p.presence_penalty)
            lib.llama_sampler_chain_add(chain, penalties)
        if p.temperature <= 0:
            # top-k 1 before greedy: same argmax, ~25% cheaper on a 49k-262k vocabulary (measured).
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return penalties
        if p.top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
        seed = lib.LLAMA_DEFAULT_SEED if p.seed is None else p.seed
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return penalties

    def _build(self, vocab: Any, p: SamplingParams, grammar: str | None) -> None:
        lib = self._lib
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        if grammar is not None:
            self.grammar = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not self.grammar:
                self.grammar = None
                raise InvalidRequest("grammar is not valid GBNF or has no 'root' rule (llama.cpp's parser "
                                     "rejected it)", param="grammar")
            self.full = lib.llama_sampler_chain_init(params)
            lib.llama_sampler_chain_add(self.full, self.grammar)  # the chain owns it from here on
            self.penalties = self._steps(self.full, p)
            # One candidate, reused for every check of a single token against the grammar (accepts()).
            self._single_data = (lib.llama_token_data * 1)()
            self._single = lib.llama_token_data_array(data=self._single_data, size=1, selected=-1, sorted=False)
            if self.penalties is None:
                self.chain = lib.llama_sampler_chain_init(params)
                self._steps(self.chain, p)
                if not p.logit_bias:  # a biased token may rank anywhere: the shortlist is of raw logits
                    self._short_data = (lib.llama_token_data * GRAMMAR_SHORTLIST)()
                    self._short = lib.llama_token_data_array(data=self._short_data, size=GRAMMAR_SHORTLIST,
                                                              selected=-1, sorted=False)
        else:
            self.chain = lib.llama_sampler_chain_init(params)
            self.penalties = self._steps(self.chain, p)

    def accept_prompt(self, tokens: list[int]) -> None:
        """Penalties count the prompt's recent tokens too (as llama-server does); grammars never see the prompt."""
        if self.penalties is not None:
            for token in tokens:
                self._lib.llama_sampler_accept(self.penalties, token)

    def sample(self, ctx: Any, index: int) -> int:
        lib = self._lib
        if self.grammar is None:
            return int(lib.llama_sampler_sample(self.chain, ctx, index))
        if self.chain is not None:
            token = int(lib.llama_sampler_sample(self.chain, ctx, index))
            if self.accepts(token):
                return token
            picked = self._from_shortlist(ctx, index) if self._short is not None else None
            if picked is not None:
                return picked
        # The full chain applies and accepts the grammar itself.
        return int(lib.llama_sampler_sample(self.full, ctx, index))

    def _from_shortlist(self, ctx: Any, index: int) -> int | None:
        """The pick among the GRAMMAR_SHORTLIST highest logits that the grammar allows, or None if none is.

        Greedy picks exactly what the full pass would (the best allowed token is among them). Sampling draws from
        the allowed ones of these instead of from the allowed ones of the whole vocabulary: the same tokens
        whenever top-k/top-p/min-p would have cut below them anyway, which is the usual case.
        """
        import numpy as np

        lib = self._lib
        row = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(self._n_vocab,))
        best = np.argpartition(row, -GRAMMAR_SHORTLIST)[-GRAMMAR_SHORTLIST:]
        data, short = self._short_data, self._short
        for cell, token in zip(data, best.tolist(), strict=True):
            cell.id, cell.logit, cell.p = token, float(row[token]), 0.0
        short.size, short.selected, short.sorted = GRAMMAR_SHORTLIST, -1, False
        lib.llama_sampler_apply(self.grammar, ctypes.byref(short))
        if not any(math.isfinite(cell.logit) for cell in data):
            return None
        lib.llama_sampler_apply(self.chain, ctypes.byref(short))
        token = int(data[short.selected].id)
        lib.llama_sampler_accept(self.grammar, token)
        return token

    def free(self) -> None:
        lib = self._lib
        for name in ("chain", "full"):
            chain = getattr(self, name)
            if chain is not None:
                lib.llama_sampler_free(chain)
                setattr(self, name, None)
        self.grammar = None  # owned (and freed) by the full chain
        self.penalties = None
