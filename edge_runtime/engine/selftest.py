"""`python -m edge_runtime.engine.selftest MODEL.gguf`: load, decode, pick one token (the doctor's crash probe)."""
from __future__ import annotations

import ctypes
import sys
import time

from ..errors import ClawdError, EngineError
from .native import import_llama

PROMPT = b"The capital of France is"


def one_token(model_path: str, threads: int = 2) -> str:
    """The greedy next token after PROMPT, through the same import (and CPU guard) as the engine."""
    lib = import_llama()
    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        raise EngineError(f"{model_path}: llama.cpp could not load the model")
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 64, 64, threads, threads
    ctx = lib.llama_init_from_model(model, cparams)
    sampler = lib.llama_sampler_init_greedy()
    try:
        if not ctx:
            raise EngineError("llama.cpp could not create a context")
        vocab = lib.llama_model_get_vocab(model)
        tokens = (lib.llama_token * 32)()
        n = lib.llama_tokenize(vocab, PROMPT, len(PROMPT), tokens, 32, True, False)
        if n <= 0 or lib.llama_decode(ctx, lib.llama_batch_get_one(tokens, n)) != 0:
            raise EngineError("llama_decode failed on the self-test prompt")
        token = lib.llama_sampler_sample(sampler, ctx, -1)
        piece = ctypes.create_string_buffer(64)
        size = lib.llama_token_to_piece(vocab, token, piece, 64, 0, False)
        return piece.raw[: max(size, 0)].decode(errors="replace")
    finally:
        lib.llama_sampler_free(sampler)
        if ctx:
            lib.llama_free(ctx)
        lib.llama_model_free(model)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edge_runtime.engine.selftest MODEL.gguf", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        token = one_token(argv[0])
    except ClawdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{token!r} in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
