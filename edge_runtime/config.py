"""Frozen settings loaded from config.yaml, validated field by field with errors that name the key."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .adapter_config import AdapterSpec, adapters_to_list, parse_adapters
from .errors import ConfigError

ENV_CONFIG = "CLAWD_EDGE_CONFIG"
DEFAULT_MODEL = "smollm2-135m-instruct-q4_1"
KV_CACHE_TYPES = ("auto", "f16", "q8_0")
# auto: the GGUF's own `<arch>.pooling_type` (an embedding model), else a causal LM's last token (README, Embeddings).
EMBEDDING_POOLINGS = ("auto", "mean", "last")
SPECULATIVE_MODES = ("auto", "ngram", "draft", "off")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, key: str, source: str | None = None) -> int:
    """Accept 2147483648, "2GiB", "1.5 GB", "512MiB"; bytes come back as an int."""
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a size; use bytes or a string such as '2GiB'", key=key,
                          source=source)
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"{value!r} must be a positive size", key=key, source=source)
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if number > 0:
                return int(number)
    raise ConfigError(
        f"{value!r} is not a size; use bytes or a number with a unit (KiB, MiB, GiB, KB, MB, GB)", key=key,
        source=source,
    )


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clawd-edge"


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP daemon (`clawd-edge serve`)."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 32
    max_tokens: int = 2048
    max_request_bytes: int = 1024 * 1024
    # Multipart uploads of module routes (/v1/ocr, /v1/audio/transcriptions): a camera photo or a minute of WAV
    # does not fit in max_request_bytes; 25 MiB is OpenAI's own audio upload limit.
    max_upload_bytes: int = 25 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 10.0
    # Slow or idle clients must not hold a file descriptor for ever (a few hundred half-open connections once
    # exhausted the process's descriptors): a request's headers must arrive within read_timeout, its body may
    # pause no longer than that, an idle keep-alive connection closes after keep_alive_timeout, and connections
    # beyond max_connections are closed as soon as they are accepted.
    read_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 256
    # The daemon serves one model. llama-server and llama-cpp-python's server answer any `model` with it, and
    # many OpenAI apps send a fixed name (gpt-4o-mini) they cannot change, so an unknown name gets the loaded
    # model (the response's `model` says which); true answers 404 model_not_found to any other name instead.
    strict_model: bool = False


@dataclass(frozen=True)
class ModuleSettings:
    """One kiosk module: whether it runs and its own options (the module validates them)."""

    enabled: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Settings:
    """Everything configurable; a field's name is its key in config.yaml."""

    model_path: str = DEFAULT_MODEL
    models_dir: Path = field(default_factory=lambda: default_data_dir() / "models")
    registry: Path | None = None
    threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    batch_size: int = 256
    max_sequence_length: int = 2048
    parallel: int = 4
    context: int | None = None
    memory_budget: int | None = None
    kv_cache_type: str = "auto"
    keep_alive: float = 300.0
    # Slots' KV cells are saved when the model unloads (and once after the first request of a load) and read back
    # at the next load, so the first request after a reboot or an idle unload finds its system prompt evaluated.
    slot_cache: bool = True
    slot_cache_dir: Path | None = None  # None: models_dir/.slot-cache
    chat_template: str | None = None
    system_prompt: str | None = None
    # Control-token text (`<|im_end|>`) inside chat messages is plain text by default, so a user cannot forge a
    # turn of the conversation; true parses it as the model's control tokens (for callers that build turns).
    parse_special_in_messages: bool = False
    # /v1/embeddings: a registry name or GGUF path (null: the chat model's own GGUF), the longest input in tokens
    # (its own small context, loaded on the first request) and the pooling (auto: from the GGUF).
    embedding_model: str | None = None
    embedding_ctx: int = 512
    embedding_pooling: str = "auto"
    # llama.cpp RPC workers (`clawd-edge rpc-worker`, host:port) that hold an even share of the model's layers.
    rpc: tuple[str, ...] = ()
    # LoRA adapters loaded with the model; a request picks them by `lora` or by `model: base+name`.
    adapters: tuple[AdapterSpec, ...] = ()
    # Speculative decoding of greedy requests: guessed tokens are verified in the same decode as the other
    # slots' work, so the answer is exactly the model's own. ngram: guesses from what the prompt and answer
    # already hold; draft: from `draft_model` (a registry name or GGUF path with the same vocabulary); auto: draft
    # when a draft_model is set, else ngram; off.
    speculative: str = "auto"
    draft_model: str | None = None
    draft_max: int = 16  # the most tokens guessed for one slot in one step
    server: ServerSettings = field(default_factory=ServerSettings)
    modules: Mapping[str, ModuleSettings] = field(default_factory=lambda: MappingProxyType({}))
    # The dialogue loop is not a plugin: its options live here and edge_runtime.kiosk validates them.
    kiosk: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The Wyoming server (Home Assistant) likewise: edge_runtime.wyoming validates its options.
    wyoming: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_context(self) -> int:
        """KV cells for all slots together: `context` if set, else one max_sequence_length per slot."""
        return self.context if self.context is not None else self.parallel * self.max_sequence_length

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (command-line flags), validated like the file."""
        values = {k: v for k, v in changes.items() if v is not None}
        if not values:
            return self
        merged = to_dict(self)
        for key, value in values.items():
            if key.startswith("server."):
                merged["server"][key.split(".", 1)[1]] = value
            else:
                merged[key] = value
        return from_mapping(merged, source="command line")


# Declarative validation table: key -> (checker, allowed-description).
def _int(minimum: int, maximum: int | None = None) -> tuple[Any, str]:
    allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def check(value: object) -> bool:
        return (
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            and (maximum is None or value <= maximum)
        )
    return check, allowed


def _float(minimum: float) -> tuple[Any, str]:
    def check(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    return check, f"a number >= {minimum}"


def _str() -> tuple[Any, str]:
    return (lambda v: isinstance(v, str) and v != ""), "a non-empty string"


def _bool() -> tuple[Any, str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _choice(*options: str) -> tuple[Any, str]:
    return (lambda v: v in options), "one of " + ", ".join(options)


_TOP_LEVEL: dict[str, tuple[Any, str]] = {
    "model_path": _str(),
    "models_dir": _str(),
    "registry": _str(),
    "threads": _int(1, 256),
    "batch_size": _int(1, 65536),
    "max_sequence_length": _int(16, 1 << 20),
    "parallel": _int(1, 64),
    "context": _int(16, 1 << 22),
    "kv_cache_type": _choice(*KV_CACHE_TYPES),
    "keep_alive": _float(0),
    "slot_cache": _bool(),
    "slot_cache_dir": _str(),
    "chat_template": _str(),
    "system_prompt": _str(),
    "parse_special_in_messages": _bool(),
    "embedding_model": _str(),
    "embedding_ctx": _int(16, 32768),
    "embedding_pooling": _choice(*EMBEDDING_POOLINGS),
    "speculative": _choice(*SPECULATIVE_MODES),
    "draft_model": _str(),
    "draft_max": _int(1, 64),
}
_SERVER: dict[str, tuple[Any, str]] = {
    "host": _str(),
    "port": _int(0, 65535),
    "api_key": _str(),
    "max_queue": _int(0, 100000),
    "max_tokens": _int(1, 1 << 20),
    "shutdown_timeout": _float(0),
    "read_timeout": _float(0.1),
    "keep_alive_timeout": _float(0.1),
    "max_connections": _int(1, 1 << 20),
    "strict_model": _bool(),
}
_SERVER_SECONDS = {"shutdown_timeout", "read_timeout", "keep_alive_timeout"}
_NULLABLE = {"registry", "slot_cache_dir", "context", "memory_budget", "chat_template", "system_prompt", "api_key",
             "embedding_model", "draft_model"}
_ALIASES = {"model": "model_path", "ctx": "context", "n_parallel": "parallel"}


def _check(table: Mapping[str, tuple[Any, str]], key: str, value: object, prefix: str, source: str) -> None:
    check, allowed = table[key]
    if value is None and key in _NULLABLE:
        return
    if not check(value):
        raise ConfigError(f"{value!r} is not allowed; expected {allowed}", key=prefix + key, source=source)


def _unknown(key: str, known: Mapping[str, Any] | set[str], prefix: str, source: str) -> ConfigError:
    return ConfigError(
        f"unknown key; allowed keys are: {', '.join(sorted(known))}", key=prefix + key, source=source
    )


def _server(raw: object, source: str) -> ServerSettings:
    if raw is None:
        return ServerSettings()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{raw!r} is not allowed; expected a mapping", key="server", source=source)
    allowed = {f.name for f in dataclasses.fields(ServerSettings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise _unknown(str(key), allowed, "server.", source)
        if key in ("max_request_bytes", "max_upload_bytes"):
            values[key] = parse_size(value, f"server.{key}", source)
        elif key == "cors_origins":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{value!r} is not allowed; expected a list of origins",
                                  key="server.cors_origins", source=source)
            values[key] = tuple(value)
        else:
            _check(_SERVER, key, value, "server.", source)
            values[key] = float(value) if key in _SERVER_SECONDS else value
    return ServerSettings(**values)


def _modules(raw: object, source: str) -> Mapping[str, ModuleSettings]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{raw!r} is not allowed; expected a mapping of module name to its settings",
                          key="modules", source=source)
    result: dict[str, ModuleSettings] = {}
    for name, raw_body in raw.items():
        key = f"modules.{name}"
        # `voice: true` and a bare `voice:` are shorthands for enabling a module with default options.
        body = {"enabled": raw_body} if isinstance(raw_body, bool) else ({} if raw_body is None else raw_body)
        if not isinstance(body, Mapping):
            raise ConfigError(f"{body!r} is not allowed; expected a mapping with 'enabled' and options",
                              key=key, source=source)
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{enabled!r} is not allowed; expected true or false",
                              key=key + ".enabled", source=source)
        options = {k: v for k, v in body.items() if k != "enabled"}
        result[str(name)] = ModuleSettings(enabled=enabled, options=MappingProxyType(options))
    return MappingProxyType(result)


def from_mapping(raw: Mapping[str, Any], *, source: str = "config") -> Settings:
    """Validate a parsed YAML mapping; unknown keys are errors, never silently ignored."""
    allowed = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for raw_key, value in raw.items():
        key = _ALIASES.get(str(raw_key), str(raw_key))
        if key not in allowed:
            raise _unknown(str(raw_key), allowed, "", source)
        if key == "server":
            values[key] = value if isinstance(value, ServerSettings) else _server(value, source)
        elif key == "modules":
            values[key] = _modules(value, source)
        elif key in ("kiosk", "wyoming"):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{value!r} is not allowed; expected a mapping of {key} options",
                                  key=key, source=source)
            values[key] = MappingProxyType(dict(value or {}))
        elif key == "rpc":
            # A list, or one comma-separated string (what --rpc and an environment variable give).
            items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if items is None:
                items = []
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
                raise ConfigError(f"{value!r} is not allowed; expected a list of host:port", key=key, source=source)
            values[key] = tuple(v.strip() for v in items)
        elif key == "adapters":
            values[key] = parse_adapters(value, source)
        elif key == "speculative" and isinstance(value, bool):
            values[key] = "auto" if value else "off"  # YAML 1.1 reads a bare `off` (and `on`) as a boolean
        elif key == "memory_budget":
            values[key] = None if value is None else parse_size(value, "memory_budget", source)
        elif key in ("models_dir", "registry", "slot_cache_dir"):
            _check(_TOP_LEVEL, key, value if not isinstance(value, Path) else str(value), "", source)
            values[key] = None if value is None else Path(str(value)).expanduser()
        else:
            _check(_TOP_LEVEL, key, value, "", source)
            values[key] = float(value) if key == "keep_alive" else value
    if values.get("speculative") == "draft" and values.get("draft_model") is None:
        raise ConfigError("'draft' needs a draft_model (a registry name or GGUF path)", key="speculative",
                          source=source)
    return Settings(**values)


def to_dict(settings: Settings) -> dict[str, Any]:
    """Plain data for `config show` and for re-validation; the inverse of from_mapping."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif f.name == "server":
            value = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(value).items()}
        elif f.name == "modules":
            value = {n: {"enabled": m.enabled, **dict(m.options)} for n, m in value.items()}
        elif f.name in ("kiosk", "wyoming"):
            value = dict(value)
        elif f.name == "rpc":
            value = list(value)
        elif f.name == "adapters":
            value = adapters_to_list(value)
        out[f.name] = value
    return out


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings from `path`, else $CLAWD_EDGE_CONFIG, else built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return Settings()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", source=source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML{where}: {problem}", source=source) from None
    if raw is None:
        return Settings()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of keys at the top level, got {type(raw).__name__}",
                          source=source)
    return from_mapping(raw, source=source)
