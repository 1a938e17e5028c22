"""`modules.voice` options from config.yaml: a frozen dataclass, every key validated with an error naming it."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import parse_size
from ..errors import ConfigError
from .sphinx_stt import DEFAULT_ENDPOINT_WINDOW
from .stt_models import ENGINES
from .tts import DEFAULT_PITCH, DEFAULT_RATE, TTS_ENGINES

PREFIX = "modules.voice."


@dataclass(frozen=True)
class VoiceOptions:
    """Each field is a key under `modules.voice` in config.yaml."""

    input: str = "mic"
    output: str | int | None = None
    language: str = "en"
    stt: str = "auto"
    stt_model: str | None = None
    grammar: tuple[str, ...] | str | None = None
    wake_phrase: str | None = None
    tts: str = "espeak"
    voice: str | None = None
    rate: int = DEFAULT_RATE
    pitch: int = DEFAULT_PITCH
    chunk_ms: int = 100
    queue_size: int = 50
    endpoint_window: float = DEFAULT_ENDPOINT_WINDOW
    barge_in: bool = True
    preload: bool = True
    max_upload_bytes: int = 25 * 1024 * 1024
    # Refused from the WAV header, before decoding: 120 s covers any spoken request or voice memo, and costs at
    # most ~1 min of one core (pocketsphinx, continuous speech, measured here); longer recordings are split.
    max_audio_seconds: float = 120.0
    # Recognisers working at once (uploads and the kiosk's microphone): one core of a 2-core board; the LLM keeps
    # the other.
    max_concurrent_transcriptions: int = 1

    def replace(self, **changes: Any) -> VoiceOptions:
        """A copy with the non-None `changes` applied, validated like config (command-line flags)."""
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        merged.update({k: v for k, v in changes.items() if v is not None})
        if isinstance(merged["grammar"], tuple):
            merged["grammar"] = list(merged["grammar"])
        return parse_options(merged)


def _bad(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{value!r} is not allowed; expected {allowed}", key=PREFIX + key)


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(key, value, "a non-empty string")
    return value


def _choice(*allowed: str) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if value not in allowed:
            raise _bad(key, value, "one of " + ", ".join(allowed))
        return str(value)
    return check


def _int(low: int, high: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(key, value, f"an integer from {low} to {high}")
        return value
    return check


def _float(low: float, high: float) -> Callable[[str, object], float]:
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _bad(key, value, f"a number from {low} to {high}")
        return float(value)
    return check


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def _device(key: str, value: object) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return _text(key, value)


def _input(key: str, value: object) -> str:
    text = _text(key, value)
    if text.startswith("mic:") and not text[4:]:
        raise _bad(key, value, "mic, mic:DEVICE (name or index), file:PATH or - (stdin)")
    return text


def _grammar(key: str, value: object) -> tuple[str, ...] | str:
    if isinstance(value, str):
        return _text(key, value)  # a file, one phrase per line; read when the recogniser is built
    if isinstance(value, list) and value and all(isinstance(p, str) and p.strip() for p in value):
        return tuple(p.strip() for p in value)
    raise _bad(key, value, "a non-empty list of phrases or the path of a text file with one phrase per line")


def _size(key: str, value: object) -> int:
    return parse_size(value, PREFIX + key)


_CHECKS: Mapping[str, Callable[[str, Any], Any]] = {
    "input": _input,
    "output": _device,
    "language": _text,
    "stt": _choice("auto", *ENGINES),
    "stt_model": _text,
    "grammar": _grammar,
    "wake_phrase": _text,
    "tts": _choice(*TTS_ENGINES),
    "voice": _text,
    "rate": _int(40, 500),
    "pitch": _int(0, 99),
    "chunk_ms": _int(10, 1000),
    "queue_size": _int(1, 100000),
    "endpoint_window": _float(0.1, 5.0),
    "barge_in": _bool,
    "preload": _bool,
    "max_upload_bytes": _size,
    "max_audio_seconds": _float(1.0, 3600.0),
    "max_concurrent_transcriptions": _int(1, 16),
}
_NULLABLE = frozenset({"output", "stt_model", "grammar", "wake_phrase", "voice"})


def parse_options(options: Mapping[str, Any]) -> VoiceOptions:
    """Validate `modules.voice` (minus `enabled`); unknown keys are errors, never ignored."""
    values: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = str(raw_key)
        if key not in _CHECKS:
            raise ConfigError(f"unknown option; allowed options are: {', '.join(sorted(_CHECKS))}",
                              key=PREFIX + key)
        values[key] = None if value is None and key in _NULLABLE else _CHECKS[key](key, value)
    return VoiceOptions(**values)
