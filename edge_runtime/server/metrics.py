"""Prometheus metrics on a per-app CollectorRegistry: HTTP, tokens, latency, and engine state read at scrape time."""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edge_runtime.engine.types import EngineState, EngineStatus

PREFIX = "clawd_edge"
TOKEN_RATE_WINDOW = 30.0
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
EMBEDDING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _llama_cpp_version() -> str:
    try:
        import llama_cpp
    except ImportError:
        return "none"
    return str(getattr(llama_cpp, "__version__", "unknown"))


def _gguf_quant(model_file: Path) -> str | None:
    """The GGUF's general.file_type as llama.cpp names it (Q4_1, Q4_K_M, F16), or None when unreadable."""
    from edge_runtime.errors import ClawdError
    from edge_runtime.gguf_file import inspect

    try:
        file_type = inspect(model_file).file_type
    except (ClawdError, OSError):
        return None
    if file_type is None:
        return None
    try:
        import gguf

        return str(gguf.LlamaFileType(file_type).name).removeprefix("MOSTLY_")
    except (ImportError, ValueError):
        return f"file_type_{file_type}"


def build_labels(model: str, model_file: Path | None = None, quant: str | None = None) -> dict[str, str]:
    """clawd_edge_build_info's labels for fleet views: package version, llama.cpp (llama-cpp-python) version, the
    CPU build profile, the served model and its quantization (the GGUF's file type, else the registry's `quant`)."""
    import importlib.metadata

    from edge_runtime import __version__
    from edge_runtime.cpu.build import runtime_labels

    try:
        version = importlib.metadata.version("clawd-edge")
    except importlib.metadata.PackageNotFoundError:
        version = __version__
    file_quant = _gguf_quant(model_file) if model_file is not None else None
    return {**runtime_labels(), "version": version, "llama_cpp": _llama_cpp_version(), "model": model or "unknown",
            "quant": file_quant or quant or "unknown"}


def _status_file_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class _TokenRate:
    """Completion tokens per second over a sliding window (thread-safe: scrapes run in a worker thread)."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, tokens: int) -> None:
        with self._lock:
            self._events.append((self._clock(), tokens))

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            while self._events and self._events[0][0] < now - self._window:
                self._events.popleft()
            return sum(n for _, n in self._events) / self._window


# The engine's own monotonic counters (all callers: HTTP and kiosk), exported as they are.
_ENGINE_COUNTERS = (
    ("prompt_tokens_evaluated", "prompt_tokens_evaluated_total", "Prompt tokens run through llama_decode"),
    ("prompt_tokens_cached", "cached_prompt_tokens_total", "Prompt tokens reused from the prefix cache"),
    ("completion_tokens", "completion_tokens_total", "Tokens generated"),
    ("requests_finished", "requests_finished_total", "Generations that ended normally"),
    ("requests_cancelled", "requests_cancelled_total", "Generations cancelled by their caller (disconnects)"),
    ("model_loads", "loads_total", "Times the model was loaded (keep_alive unloads and reloads)"),
    ("prompt_prefix_copies", "prefix_copies_total", "Prompt prefixes copied from another slot's cache"),
    ("draft_tokens", "draft_tokens_total", "Speculative tokens guessed and verified"),
    ("draft_tokens_accepted", "draft_accepted_total", "Speculative tokens the model agreed with (delivered)"),
)


class _EngineCollector:
    """Gauges that are the engine's own numbers, read when Prometheus scrapes (never stale)."""

    def __init__(self, status: Callable[[], EngineStatus], rate: _TokenRate) -> None:
        self._status = status
        self._rate = rate

    def describe(self) -> list[Any]:
        return []  # collected lazily; describing would call status() at registration time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self._status()
        yield InfoMetricFamily(f"{PREFIX}_model", "The model this daemon serves", value={"model": s.model})
        state = GaugeMetricFamily(f"{PREFIX}_engine_state", "1 for the engine's current state", labels=["state"])
        for option in EngineState:
            state.add_metric([option.value], 1.0 if s.state == option else 0.0)
        yield state
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting for a slot", value=s.queue_depth)
        yield GaugeMetricFamily(f"{PREFIX}_slots_active", "Slots generating right now", value=s.slots_busy)
        # Not _slots_total: promtool reserves the _total suffix for counters.
        yield GaugeMetricFamily(f"{PREFIX}_slots_capacity", "Parallel slots", value=s.slots_total)
        yield GaugeMetricFamily(f"{PREFIX}_kv_cache_used_cells", "KV cache cells in use", value=s.kv_cells_used)
        yield GaugeMetricFamily(f"{PREFIX}_kv_cache_total_cells", "KV cache cells", value=s.kv_cells_total)
        yield GaugeMetricFamily(f"{PREFIX}_kv_cache_cached_cells",
                                "KV cells idle slots keep as prompt-prefix cache (reclaimable)",
                                value=getattr(s, "kv_cells_cached", 0))
        ratio = s.kv_cells_used / s.kv_cells_total if s.kv_cells_total else 0.0
        yield GaugeMetricFamily(f"{PREFIX}_kv_cache_usage_ratio", "Fraction of KV cells in use", value=ratio)
        if s.load_seconds is not None:
            yield GaugeMetricFamily(f"{PREFIX}_model_load_seconds", "Seconds the last model load took",
                                    value=s.load_seconds)
        yield GaugeMetricFamily(f"{PREFIX}_completion_tokens_per_second",
                                f"Completion tokens per second over the last {TOKEN_RATE_WINDOW:g} s",
                                value=self._rate.rate())
        for name, attr, doc in _ENGINE_COUNTERS:
            value = getattr(s, attr, None)
            if value is not None:
                yield CounterMetricFamily(f"{PREFIX}_engine_{name}", doc, value=value)
        rss = _status_file_kib("VmRSS")
        if rss is not None:
            yield GaugeMetricFamily(f"{PREFIX}_rss_bytes", "Resident memory of the daemon", value=rss * 1024)
        hwm = _status_file_kib("VmHWM")
        if hwm is not None:
            yield GaugeMetricFamily(f"{PREFIX}_peak_rss_bytes", "Peak resident memory of the daemon",
                                    value=hwm * 1024)


class _KioskCollector:
    """The in-daemon kiosk's status (KioskService.snapshot), read at scrape time."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from edge_runtime.kiosk.service import STATUSES

        k = self._snapshot()
        yield GaugeMetricFamily(f"{PREFIX}_kiosk_up", "1 while the kiosk loop runs (listening or answering)",
                                value=1.0 if k["status"] == "running" else 0.0)
        status = GaugeMetricFamily(f"{PREFIX}_kiosk_status", "1 for the kiosk's current status", labels=["status"])
        for option in STATUSES:
            status.add_metric([option], 1.0 if k["status"] == option else 0.0)
        yield status
        yield CounterMetricFamily(f"{PREFIX}_kiosk_turns", "Kiosk turns (spoken or read questions) handled",
                                  value=k["turns"])
        yield CounterMetricFamily(f"{PREFIX}_kiosk_failures", "Times the kiosk loop failed (then retried)",
                                  value=k["failures"])


class ServerMetrics:
    """All metrics of one app; nothing global, so two apps in one process (tests) do not collide."""

    def __init__(self, status: Callable[[], EngineStatus],
                 kiosk: Callable[[], dict[str, Any]] | None = None, *, build: Mapping[str, str] | None = None,
                 memory_budget: int | None = None, layers: Mapping[str, int] | None = None) -> None:
        """`build`: clawd_edge_build_info's labels (build_labels(); default: the runtime's only, model unknown);
        `memory_budget`: the memory plan's budget in bytes, exported for the memory alert; `layers`: the model's
        layers per board when they are split over RPC workers ("local" and each worker's host:port)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.in_flight = Gauge(f"{PREFIX}_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.latency = Histogram(f"{PREFIX}_http_request_duration_seconds",
                                 "Time from request to the last byte of the response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from request to the first generated text", buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed", registry=r)
        self.cached_prompt_tokens = Counter(f"{PREFIX}_prompt_tokens_cached",
                                            "Prompt tokens reused from the KV cache", registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Completion tokens generated",
                                         registry=r)
        self.generations = Counter(f"{PREFIX}_generations", "Finished generations by finish reason",
                                   ["finish_reason"], registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected_requests", "Requests refused because the queue was full",
                                registry=r)
        self.embedding_requests = Counter(f"{PREFIX}_embedding_requests", "Embedding requests answered", registry=r)
        self.embedding_inputs = Counter(f"{PREFIX}_embedding_inputs", "Inputs embedded", registry=r)
        self.embedding_tokens = Counter(f"{PREFIX}_embedding_tokens", "Input tokens embedded", registry=r)
        self.embedding_seconds = Histogram(f"{PREFIX}_embedding_seconds",
                                           "Time the embedding worker spent on a request (queueing and loading "
                                           "excluded)", buckets=EMBEDDING_BUCKETS, registry=r)
        self.rate = _TokenRate(TOKEN_RATE_WINDOW)
        Info(f"{PREFIX}_build", "Version, llama.cpp build profile, CPU, served model and quantization",
             registry=r).info(dict(build) if build is not None else build_labels(""))
        if memory_budget is not None:
            Gauge(f"{PREFIX}_memory_budget_bytes", "The memory plan's budget: memory_budget in the config, else "
                  "the cgroup limit, else MemAvailable at start", registry=r).set(memory_budget)
        if layers:
            by_board = Gauge(f"{PREFIX}_model_layers", "Model layers held by each board (local, or an RPC worker's "
                             "host:port)", ["board"], registry=r)
            for board, count in layers.items():
                by_board.labels(board).set(count)
        ProcessCollector(registry=r)
        r.register(_EngineCollector(status, self.rate))  # type: ignore[arg-type]
        if kiosk is not None:
            r.register(_KioskCollector(kiosk))  # type: ignore[arg-type]

    def observe_generation(self, prompt: int, cached: int, completion: int, finish_reason: str) -> None:
        self.prompt_tokens.inc(prompt)
        self.cached_prompt_tokens.inc(cached)
        self.completion_tokens.inc(completion)
        self.generations.labels(finish_reason).inc()
        self.rate.add(completion)

    def observe_embedding(self, inputs: int, tokens: int, seconds: float) -> None:
        self.embedding_requests.inc()
        self.embedding_inputs.inc(inputs)
        self.embedding_tokens.inc(tokens)
        self.embedding_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
