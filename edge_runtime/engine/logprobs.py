"""Log-probabilities of generated tokens, read from the logits row the token was sampled from."""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from .types import TokenLogprob

# OpenAI's bound for top_logprobs; also what keeps the per-token cost small (a partial sort of k values).
MAX_TOP_LOGPROBS = 20


class LogprobReader:
    """Computes one token's log-probability under the model's own distribution.

    That is the softmax of the raw logits at temperature 1: before penalties, logit_bias, temperature, top-k/p,
    min-p and grammar, as OpenAI reports them, so the numbers describe the model rather than this request's
    sampling settings. With greedy sampling the chosen token is the top-1 entry (unless a grammar or bias forced
    another). llama.cpp's logits buffer is read in place, never copied: sampling does not modify it.
    """

    def __init__(self, n_vocab: int, piece: Callable[[int], bytes]) -> None:
        import numpy

        self._np = numpy
        self._n_vocab = n_vocab
        self._piece = piece

    def read(self, address: int, token: int, top: int) -> TokenLogprob:
        np = self._np
        row: Any = np.ctypeslib.as_array((ctypes.c_float * self._n_vocab).from_address(address))
        peak = float(row.max())
        log_total = peak + float(np.log(np.exp(row - peak, dtype=np.float64).sum()))
        alternatives: tuple[tuple[bytes, float], ...] = ()
        if top > 0:
            k = min(top, MAX_TOP_LOGPROBS, self._n_vocab)
            best = np.argpartition(row, -k)[-k:]
            # Highest first; equal logits in token-id order, like llama.cpp's greedy pick.
            ordered = sorted(best.tolist(), key=lambda t: (-float(row[t]), t))
            alternatives = tuple((self._piece(t), min(0.0, float(row[t]) - log_total)) for t in ordered)
        return TokenLogprob(self._piece(token), min(0.0, float(row[token]) - log_total), alternatives)
