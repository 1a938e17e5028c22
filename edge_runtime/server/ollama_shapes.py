"""Ollama's response bodies: model descriptions (tags, ps, show), generation chunks with timings, pull progress."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.engine.toolparse import ParsedCall
from edge_runtime.engine.types import SamplingParams, TokenLogprob
from edge_runtime.errors import ToolCallError
from edge_runtime.gguf_file import GgufInfo, inspect
from edge_runtime.registry import RegistryEntry

# Ollama's "never unloads" (keep_alive < 0) is a session of Go's largest duration: expires_at ~292 years on.
FOREVER_SECONDS = (2**63 - 1) / 1e9
DEFAULT_TAG = "latest"


def timestamp(at: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes created_at / modified_at / expires_at."""
    when = dt.datetime.fromtimestamp(time.time() if at is None else at, tz=dt.timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def far_future() -> str:
    return timestamp(time.time() + FOREVER_SECONDS)


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass(frozen=True)
class Timings:
    """Wall-clock phases of one generation (perf_counter seconds): the first chunk marks the end of prompt
    evaluation (queueing and loading included, minus the measured load), the last one the end of generation."""

    start: float
    first: float
    load_seconds: float

    def body(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        end = time.perf_counter()
        return {"total_duration": ns(end - self.start), "load_duration": ns(self.load_seconds),
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": ns(self.first - self.start - self.load_seconds),
                "eval_count": completion_tokens, "eval_duration": ns(end - self.first)}


def tool_calls(calls: tuple[ParsedCall, ...]) -> list[dict[str, Any]]:
    """Ollama's tool calls: `arguments` is an object (Home Assistant calls .items() on it), not JSON text."""
    out = []
    for i, call in enumerate(calls):
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            arguments = None
        if call.error is not None or not isinstance(arguments, dict):
            why = call.error or "its arguments are not a JSON object"
            raise ToolCallError(f"the model wrote an invalid call to {call.name!r}: {why}")
        out.append({"id": call.id, "function": {"index": i, "name": call.name, "arguments": arguments}})
    return out


def logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[dict[str, Any]]:
    def text(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace")
    return [{"token": text(e.token), "logprob": e.logprob, "bytes": list(e.token),
             "top_logprobs": [{"token": text(t), "logprob": lp, "bytes": list(t)} for t, lp in e.top]}
            for e in entries]


def ndjson(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n"


# -- models -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalModel:
    """One model file as Ollama describes it: `name:tag`, file, registry entry (if any) and GGUF header."""

    name: str
    path: Path
    entry: RegistryEntry | None
    info: GgufInfo

    @classmethod
    def read(cls, name: str, path: Path, entry: RegistryEntry | None) -> LocalModel:
        return cls(name if ":" in name else f"{name}:{DEFAULT_TAG}", path, entry, inspect(path))

    @property
    def modified(self) -> float:
        return self.path.stat().st_mtime

    @property
    def digest(self) -> str:
        """The registry's sha256 of the file; else a fingerprint of path, size and mtime (hashing the whole file on
        every /api/tags would cost seconds on a board)."""
        if self.entry is not None and self.entry.sha256:
            return self.entry.sha256
        st = self.path.stat()
        return hashlib.sha256(f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()

    def quantization(self) -> str:
        if self.entry is not None and self.entry.quant:
            return self.entry.quant
        file_type = self.info.file_type
        if file_type is None:
            return "unknown"
        try:
            import gguf

            return str(gguf.LlamaFileType(file_type).name).removeprefix("MOSTLY_")
        except (ImportError, ValueError):
            return f"file_type_{file_type}"

    def parameter_size(self) -> str:
        meta = self.info.metadata
        label = meta.get("general.size_label")
        if isinstance(label, str) and label:
            return label
        count = meta.get("general.parameter_count")
        if isinstance(count, int) and count > 0:
            for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
                if count >= scale:
                    return f"{count / scale:.1f}{unit}".replace(".0", "")
            return str(count)
        return ""

    def details(self) -> dict[str, Any]:
        arch = self.info.architecture
        return {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                "parameter_size": self.parameter_size(), "quantization_level": self.quantization()}

    def tag(self) -> dict[str, Any]:
        """One /api/tags entry."""
        return {"name": self.name, "model": self.name, "modified_at": timestamp(self.modified),
                "size": self.path.stat().st_size, "digest": self.digest, "details": self.details()}

    def process(self, expires_at: float | None, context_length: int) -> dict[str, Any]:
        """One /api/ps entry (the CPU build: nothing is in VRAM)."""
        return {"name": self.name, "model": self.name, "size": self.path.stat().st_size, "digest": self.digest,
                "details": self.details(), "expires_at": far_future() if expires_at is None
                or expires_at - time.time() > FOREVER_SECONDS else timestamp(expires_at),
                "size_vram": 0, "context_length": context_length}

    def model_info(self) -> dict[str, Any]:
        """The GGUF metadata, Ollama-style: the tokenizer's big arrays are listed empty (they are not decoded)."""
        info: dict[str, Any] = {}
        for key, value in self.info.metadata.items():
            if key == "tokenizer.chat_template":
                continue  # it is `template`
            if key.endswith(".count") and key.removesuffix(".count").startswith("tokenizer.ggml."):
                info[key.removesuffix(".count")] = []
            else:
                info[key] = value
        return info

    def show(self, slot_context: int, defaults: SamplingParams, capabilities: list[str]) -> dict[str, Any]:
        """The /api/show body; `template` is the GGUF's Jinja chat template (Ollama's are Go templates)."""
        parameters = {"num_ctx": slot_context, "temperature": defaults.temperature, "top_k": defaults.top_k,
                      "top_p": defaults.top_p, "min_p": defaults.min_p, "repeat_penalty": defaults.repeat_penalty,
                      "repeat_last_n": defaults.penalty_last_n}
        lines = "\n".join(f"{k:<30} {v}" for k, v in parameters.items())
        modelfile = (f"# Modelfile of {self.name}, as served by clawd-edge\nFROM {self.path}\n"
                     + "".join(f"PARAMETER {k} {v}\n" for k, v in parameters.items()))
        body: dict[str, Any] = {
            "modelfile": modelfile, "parameters": lines, "template": self.info.chat_template or "",
            "details": self.details(), "model_info": self.model_info(), "capabilities": capabilities,
            "modified_at": timestamp(self.modified),
        }
        if self.entry is not None and self.entry.license:
            body["license"] = self.entry.license
        return body


def pull_status(status: str, **fields: Any) -> dict[str, Any]:
    return {"status": status, **{k: v for k, v in fields.items() if v is not None}}
