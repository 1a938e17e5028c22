"""Kiosk options (`kiosk:` in config.yaml, or command-line flags), validated into a frozen dataclass."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..options import Check, bad, flag, integer, number, parse_section, replaced, text

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
    # Start the answer at a short pause (modules.voice.tentative_window) on what was heard so far, and keep it
    # when the final transcript agrees: the reply is ready when the utterance is over.
    speculate: bool = True
    vad_threshold: int = 400  # RMS (16-bit) above which a 100 ms chunk counts as speech
    realtime_input: bool = False  # pace file input like a live microphone (benchmarks)
    # /kiosk (page, event stream, buttons) without the API key, for browsers on this machine only (the board's
    # own touch screen); viewers elsewhere always need the key.
    screen_public: bool = False

    def replace(self, **changes: Any) -> KioskOptions:
        """A copy with the non-None `changes` applied, validated like config (command-line flags)."""
        return replaced(self, parse_options, changes)


def _triggers(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in value):
        raise bad(key, value, "a list of phrases")
    return tuple(p.strip().lower() for p in value)


_CHECKS: Mapping[str, Check] = {
    "enabled": flag, "system_prompt": text, "max_tokens": integer(1, 4096), "temperature": number(0.0, 2.0),
    "seed": integer(0, 2**32 - 1), "history_turns": integer(0, 100), "context_tokens": integer(64, 1 << 20),
    "read_triggers": _triggers, "read_prompt": text, "camera": text, "log": text, "speak": flag, "speculate": flag,
    "vad_threshold": integer(1, 32767), "realtime_input": flag, "screen_public": flag,
}


def parse_options(options: Mapping[str, Any]) -> KioskOptions:
    """Validate kiosk options; unknown keys are errors listing the allowed ones."""
    return parse_section(KioskOptions, PREFIX, options, _CHECKS, frozenset({"seed", "context_tokens", "camera", "log"}))
