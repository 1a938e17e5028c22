#!/usr/bin/env python3
"""Portable build profiles against a native (-march=native) build of the same llama.cpp, in one run.

Builds llama-bench from the llama-cpp-python sdist (the llama.cpp the runtime vendors) once per variant under
--work (default /tmp/clawd-bench-build): `native` with GGML_NATIVE=ON, as pip builds it by default, and each
given profile with exactly its CMake flags from edge_runtime.cpu.profiles. Then runs llama-bench prompt
processing (pp) and decode (tg) on each model, rounds interleaved over the variants, and reports best / median
tok/s and the paired ratio (the median of each round's ratio to native). Also times the CPU guard.
Example:
  nice python scripts/bench_build.py --profiles x86-64-v4 x86-64-v3 --rounds 5 \
      --model SmolLM2.gguf --model gemma-3-270m-q4_k_m.gguf
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VERSION = "0.3.36"


def source(work: Path) -> Path:
    tree = work / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if not tree.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                        str(work), f"llama-cpp-python=={VERSION}"], check=True)
        with tarfile.open(work / f"llama_cpp_python-{VERSION}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    return tree


def build(work: Path, variant: str) -> Path:
    from edge_runtime.cpu import profiles

    out = work / f"build-{variant}"
    binary = out / "bin" / "llama-bench"
    if binary.is_file():
        return binary
    flags = ["-DGGML_NATIVE=ON", "-DGGML_RPC=ON", "-DLLAMA_CURL=OFF"] if variant == "native" \
        else list(profiles.by_name(variant).cmake_args)
    print(f"building llama-bench ({variant})", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(source(work)), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", *flags],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(out), "--target", "llama-bench", "-j", str(os.cpu_count() or 2)],
                   check=True, stdout=subprocess.DEVNULL)
    return binary


def bench(binary: Path, model: Path, threads: int, pp: int, tg: int) -> tuple[float, float]:
    """(pp tok/s, tg tok/s) from one llama-bench call, 3 repetitions each (its own average)."""
    out = subprocess.run([str(binary), "-m", str(model), "-t", str(threads), "-p", str(pp), "-n", str(tg),
                          "-r", "3", "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    rate = {("pp" if r["n_gen"] == 0 else "tg"): float(r["avg_ts"]) for r in rows}
    return rate["pp"], rate["tg"]


def guard_cost(rounds: int = 200) -> tuple[float, float]:
    """Seconds of the pre-load guard (read the CPU and the build, check) and of the post-load system-info check."""
    from edge_runtime.cpu import guard
    from edge_runtime.cpu.build import installed
    from edge_runtime.cpu.features import read_cpu

    started = time.perf_counter()
    for _ in range(rounds):
        build, cpu = installed(), read_cpu()
        if build is not None:
            guard.check(build, cpu)
    pre = (time.perf_counter() - started) / rounds
    import llama_cpp

    cpu = read_cpu()
    started = time.perf_counter()
    for _ in range(rounds):
        info = llama_cpp.llama_print_system_info().decode()
        guard.check_loaded(info, cpu)
        guard.amx_is_broken(info, cpu)
    return pre, (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=["x86-64-v4", "x86-64-v3"])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pp", type=int, default=128)
    parser.add_argument("--tg", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clawd-bench-build"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    variants = ["native", *args.profiles]
    binaries = {v: build(args.work, v) for v in variants}
    pre, post = guard_cost()
    print(f"CPU guard: {pre * 1e3:.2f} ms before loading llama.cpp, {post * 1e3:.3f} ms after (per process, once)")
    for model in args.model:
        runs: dict[str, dict[str, list[float]]] = {v: {"pp": [], "tg": []} for v in variants}
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]  # alternate who goes first
            for v in order:
                pp, tg = bench(binaries[v], model, args.threads, args.pp, args.tg)
                runs[v]["pp"].append(pp)
                runs[v]["tg"].append(tg)
        print(f"\n{model.name}: llama-bench pp{args.pp} / tg{args.tg}, {args.threads} threads, {args.rounds} rounds")
        print("| build | pp best | pp median | tg best | tg median | pp paired vs native | tg paired vs native |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for v in variants:
            cells = []
            for kind in ("pp", "tg"):
                cells += [f"{max(runs[v][kind]):.1f}", f"{statistics.median(runs[v][kind]):.1f}"]
            paired = [statistics.median([a / b for a, b in zip(runs[v][k], runs["native"][k], strict=True)])
                      for k in ("pp", "tg")]
            print(f"| {v} | {' | '.join(cells)} | {paired[0]:.3f} | {paired[1]:.3f} |")


if __name__ == "__main__":
    main()
