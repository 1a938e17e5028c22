"""`modules.voice` options from config.yaml: a frozen dataclass, every key validated with an error naming it."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..options import Check, bad, choice, flag, integer, number, parse_section, replaced, size, text
from .sphinx_stt import DEFAULT_ENDPOINT_WINDOW
from .stt_models import ENGINES
from .tts import DEFAULT_PITCH, DEFAULT_RATE, TTS_ENGINES
from .wakeword import BUILTIN_WAKE_WORDS

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
    wake_phrase: str | None = None  # said first, recognised by the recogniser (any words it knows)
    # A wake word model (okay_nabu, hey_jarvis, hey_mycroft, alexa, or a microWakeWord JSON config): nothing is
    # recognised until it is heard. Cheaper and sharper than a wake phrase; not with one.
    wake_word: str | None = None
    tts: str = "espeak"
    voice: str | None = None
    rate: int = DEFAULT_RATE
    pitch: int = DEFAULT_PITCH
    chunk_ms: int = 100
    queue_size: int = 50
    # Live input (the kiosk's microphone): utterances end after `endpoint_window` s of silence as the Silero VAD
    # hears it (`vad: recognizer`: the recogniser's own rule, which ends speech ~0.6 s later; see README).
    endpoint_window: float = DEFAULT_ENDPOINT_WINDOW
    vad: str = "silero"
    vad_threshold: float = 0.5  # speech probability above which a 32 ms frame is speech
    tentative_window: float | None = 0.1  # silence after which the kiosk starts its answer (None: at the final)
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
        return replaced(self, parse_options, changes)


def _device(key: str, value: object) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return text(key, value)


def _input(key: str, value: object) -> str:
    spec = text(key, value)
    if spec.startswith("mic:") and not spec[4:]:
        raise bad(key, value, "mic, mic:DEVICE (name or index), file:PATH or - (stdin)")
    return spec


def _wake_word(key: str, value: object) -> str:
    word = text(key, value)
    if word not in BUILTIN_WAKE_WORDS and not word.endswith(".json"):
        raise bad(key, value, f"one of {', '.join(BUILTIN_WAKE_WORDS)} or a microWakeWord .json config")
    return word


def _grammar(key: str, value: object) -> tuple[str, ...] | str:
    if isinstance(value, str):
        return text(key, value)  # a file, one phrase per line; read when the recogniser is built
    if isinstance(value, list) and value and all(isinstance(p, str) and p.strip() for p in value):
        return tuple(p.strip() for p in value)
    raise bad(key, value, "a non-empty list of phrases or the path of a text file with one phrase per line")


_CHECKS: Mapping[str, Check] = {
    "input": _input,
    "output": _device,
    "language": text,
    "stt": choice("auto", *ENGINES),
    "stt_model": text,
    "grammar": _grammar,
    "wake_phrase": text,
    "wake_word": _wake_word,
    "tts": choice(*TTS_ENGINES),
    "voice": text,
    "rate": integer(40, 500),
    "pitch": integer(0, 99),
    "chunk_ms": integer(10, 1000),
    "queue_size": integer(1, 100000),
    "endpoint_window": number(0.1, 5.0),
    "vad": choice("silero", "recognizer"),
    "vad_threshold": number(0.05, 0.95),
    "tentative_window": number(0.03, 5.0),
    "barge_in": flag,
    "preload": flag,
    "max_upload_bytes": size(),
    "max_audio_seconds": number(1.0, 3600.0),
    "max_concurrent_transcriptions": integer(1, 16),
}
_NULLABLE = frozenset({"output", "stt_model", "grammar", "wake_phrase", "wake_word", "voice", "tentative_window"})


def parse_options(options: Mapping[str, Any]) -> VoiceOptions:
    """Validate `modules.voice` (minus `enabled`); unknown keys are errors, never ignored."""
    parsed = parse_section(VoiceOptions, PREFIX, options, _CHECKS, _NULLABLE)
    if parsed.wake_word is not None and parsed.wake_phrase is not None:
        raise bad(PREFIX + "wake_word", parsed.wake_word, "not both a wake word and a wake_phrase")
    return parsed
