"""A closed-loop streaming chat load (stdlib http.client) that records how each request ended and where."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

PROMPTS = ("Tell me about the sea.", "List three fruits.", "Why is the sky blue?", "Describe a cat.",
           "Write a short poem about rain.", "How do magnets work?")


@dataclass
class Outcome:
    """One request: when it ran, which board answered (X-Clawd-Board), what came back and how it ended."""

    started: float
    ended: float = 0.0
    board: str | None = None
    status: int | None = None
    chunks: int = 0
    first_chunk: float | None = None
    last_chunk: float | None = None
    done: bool = False
    error: str | None = None

    @property
    def kind(self) -> str:
        """ok; failed_before_stream (no 200 answer: nothing had been streamed); failed_mid_stream."""
        if self.done and self.error is None:
            return "ok"
        return "failed_mid_stream" if self.status == 200 else "failed_before_stream"


def stream_chat(base: str, *, api_key: str | None, max_tokens: int, seed: int, timeout: float = 60.0,
                path: str = "/v1/chat/completions", outcome: Outcome | None = None) -> Outcome:
    """POST one streaming chat completion and read it to [DONE] (or to the error that ended it), filling
    `outcome` (a new one by default) as it goes, so another thread can see the stream while it runs."""
    parts = urllib.parse.urlsplit(base)
    outcome = outcome or Outcome(started=time.monotonic())
    body = json.dumps({"model": "any", "messages": [{"role": "user", "content": PROMPTS[seed % len(PROMPTS)]}],
                       "max_tokens": max_tokens, "temperature": 0.7, "seed": seed, "stream": True}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        outcome.status = response.status
        outcome.board = response.getheader("X-Clawd-Board")
        if response.status != 200:
            outcome.error = f"{response.status} {response.read(300).decode(errors='replace')}"
            return outcome
        while True:
            line = response.readline()
            if not line:
                outcome.error = "stream ended without [DONE]"
                break
            text = line.decode(errors="replace").strip()
            if not text.startswith("data:"):
                continue
            data = text[5:].strip()
            if data == "[DONE]":
                outcome.done = True
                break
            now = time.monotonic()
            outcome.chunks += 1
            outcome.first_chunk = outcome.first_chunk or now
            outcome.last_chunk = now
    except (OSError, http.client.HTTPException) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        outcome.ended = time.monotonic()
    return outcome


@dataclass
class Load:
    """`clients` threads, each sending one streaming request after another until stop()."""

    base: str
    clients: int
    max_tokens: int
    api_key: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: dict[int, Outcome] = field(default_factory=dict)  # each client's current request

    def _client(self, index: int) -> None:
        seed = index * 100_000
        while not self._stop.is_set():
            outcome = Outcome(started=time.monotonic())
            with self._lock:
                self._live[index] = outcome
            stream_chat(self.base, api_key=self.api_key, max_tokens=self.max_tokens, seed=seed, outcome=outcome)
            seed += 1
            with self._lock:
                self.outcomes.append(outcome)

    def streaming_on(self, board: str) -> int:
        """Requests `board` is streaming right now (a chunk has arrived and the stream has not ended)."""
        with self._lock:
            return sum(1 for o in self._live.values()
                       if o.board == board and o.first_chunk is not None and not o.ended)

    def start(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 90.0) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            return list(self.outcomes)
