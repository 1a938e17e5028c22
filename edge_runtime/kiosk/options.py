"""Kiosk options (`kiosk:` in config.yaml, or command-line flags), validated into a frozen dataclass."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

PREFIX = "kiosk."
# Short and plain: SmolLM2-135M answers "What is the capital of France?" correctly under this prompt but
# role-plays (and gets it wrong) under a longer persona description (measured with `clawd-edge kiosk --text`).
DEFAULT_SYSTEM_PROMPT = "You are a helpful kiosk assistant. Answer briefly."
DEFAULT_TRIGGERS = ("read this", "read the sign", "what does this say", "what does it say")


@dataclass(frozen=True)
class KioskOptions:
    """Each field is a key under `kiosk:`."""

    enabled: bool = False  # run the loop inside `clawd-edge serve` (`clawd-edge kiosk` always runs it)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 96
    temperature: float = 0.0  # greedy: a kiosk should give the same answer to the same question
    seed: int | None = None
    history_turns: int = 6
    context_tokens: int | None = None  # None: the engine's per-slot context (max_sequence_length)
    read_triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    read_prompt: str = "Read it out and say briefly what it means."
    camera: str | None = None  # None: modules.ocr.camera
    log: str | None = None
    speak: bool = True
    vad_threshold: int = 400  # RMS (16-bit) above which a 100 ms chunk counts as speech
    realtime_input: bool = False  # pace file input like a live microphone (benchmarks)

    def replace(self, **changes: Any) -> KioskOptions:
        values = {k: v for k, v in changes.items() if v is not None}
        if not values:
            return self
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        merged.update(values)
        merged["read_triggers"] = list(merged["read_triggers"])
        return parse_options(merged)


def _bad(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{value!r} is not allowed; expected {allowed}", key=PREFIX + key)


def _number(key: str, value: object, low: float, high: float, integer: bool) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:  # type: ignore[operator]
        raise _bad(key, value, f"{'an integer' if integer else 'a number'} from {low:g} to {high:g}")
    return value if integer else float(value)  # type: ignore[arg-type]


_NUMBERS: Mapping[str, tuple[float, float, bool]] = {
    "max_tokens": (1, 4096, True), "temperature": (0.0, 2.0, False), "seed": (0, 2**32 - 1, True),
    "history_turns": (0, 100, True), "context_tokens": (64, 1 << 20, True), "vad_threshold": (1, 32767, True),
}


def parse_options(options: Mapping[str, Any]) -> KioskOptions:
    """Validate kiosk options; unknown keys are errors listing the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(KioskOptions)}
    values: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = str(raw_key)
        if key not in allowed:
            raise ConfigError(f"unknown option; allowed options are: {', '.join(sorted(allowed))}",
                              key=PREFIX + key)
        if value is None and key in ("seed", "context_tokens", "camera", "log"):
            values[key] = None
        elif key in _NUMBERS:
            values[key] = _number(key, value, *_NUMBERS[key])
        elif key in ("enabled", "speak", "realtime_input"):
            if not isinstance(value, bool):
                raise _bad(key, value, "true or false")
            values[key] = value
        elif key == "read_triggers":
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in value):
                raise _bad(key, value, "a list of phrases")
            values[key] = tuple(p.strip().lower() for p in value)
        else:
            if not isinstance(value, str) or not value.strip():
                raise _bad(key, value, "a non-empty string")
            values[key] = value
    return KioskOptions(**values)
