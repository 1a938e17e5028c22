"""Wyoming options (`wyoming:` in config.yaml, or command-line flags), validated into a frozen dataclass."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ..config import Settings
from ..errors import ConfigError
from ..options import Check, flag, integer, number, parse_section, replaced, size, text

PREFIX = "wyoming."
DEFAULT_URI = "tcp://127.0.0.1:10300"


@dataclass(frozen=True)
class WyomingOptions:
    """Each field is a key under `wyoming:`."""

    enabled: bool = False  # run the server inside `clawd-edge serve` (`clawd-edge wyoming` always runs it)
    uri: str = DEFAULT_URI  # tcp://HOST:PORT or unix:///path/to/socket
    zeroconf: bool = False  # announce `_wyoming._tcp` over mDNS so Home Assistant discovers the server
    zeroconf_name: str | None = None  # None: the machine's MAC address, as the Rhasspy servers do
    system_prompt: str | None = None  # None: kiosk.system_prompt, else the kiosk's default
    max_tokens: int = 128
    temperature: float = 0.0  # greedy: the same question gets the same answer
    history_turns: int = 6
    # Conversations remembered at once (least recently used dropped first): each holds up to history_turns turns.
    max_conversations: int = 64
    # Home Assistant opens one connection per request; more than this at once are refused with an error event.
    max_connections: int = 32
    # One utterance: Home Assistant's VAD ends a command after a few seconds of speech; a stream longer than this
    # is refused rather than recognised for minutes.
    max_audio_seconds: float = 60.0
    max_text_chars: int = 4096  # synthesize text (a whole stream) and a transcript to answer
    # One event's JSON data and binary payload; 1 MiB is over 5 s of 48 kHz stereo 32-bit audio in one chunk.
    max_event_bytes: int = 1024 * 1024
    idle_timeout: float = 60.0  # seconds a connection may send nothing before it is closed

    def replace(self, **changes: Any) -> WyomingOptions:
        """A copy with the non-None `changes` applied, validated like config (command-line flags)."""
        return replaced(self, parse_options, changes)


def check_uri(value: object, key: str = PREFIX + "uri") -> str:
    """tcp://HOST:PORT (a port is required) or unix://PATH; the two transports Home Assistant can reach."""
    allowed = "tcp://HOST:PORT or unix:///PATH"
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not allowed; expected {allowed}", key=key)
    parsed = urlparse(value)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme == "tcp" and parsed.hostname and port is not None:
        return value
    if parsed.scheme == "unix" and parsed.path:
        return value
    raise ConfigError(f"{value!r} is not allowed; expected {allowed}", key=key)


_CHECKS: Mapping[str, Check] = {
    "enabled": flag, "uri": lambda key, value: check_uri(value, key), "zeroconf": flag, "zeroconf_name": text,
    "system_prompt": text, "max_tokens": integer(1, 4096), "temperature": number(0.0, 2.0),
    "history_turns": integer(0, 100), "max_conversations": integer(1, 100000), "max_connections": integer(1, 10000),
    "max_audio_seconds": number(1.0, 3600.0), "max_text_chars": integer(1, 1 << 20),
    "max_event_bytes": size(4096), "idle_timeout": number(1.0, 86400.0),
}


def parse_options(options: Mapping[str, Any]) -> WyomingOptions:
    """Validate the `wyoming:` section; unknown keys are errors listing the allowed ones."""
    parsed = parse_section(WyomingOptions, PREFIX, options, _CHECKS, frozenset({"zeroconf_name", "system_prompt"}))
    if parsed.zeroconf and not parsed.uri.startswith("tcp://"):
        raise ConfigError("zeroconf announces a TCP address; set wyoming.uri to tcp://HOST:PORT",
                          key=PREFIX + "zeroconf")
    return parsed


def daemon_wyoming_options(settings: Settings, uri: str | None = None) -> WyomingOptions:
    """The `wyoming:` section for `serve` (validated even when off); `--wyoming URI` turns it on at that URI."""
    options = parse_options(dict(settings.wyoming))
    if uri is None:
        return options
    return options.replace(enabled=True, uri=check_uri(uri, "--wyoming"))


def system_prompt(settings: Settings, options: WyomingOptions) -> str:
    """wyoming.system_prompt, else kiosk.system_prompt, else the kiosk's default (one voice for the house)."""
    if options.system_prompt is not None:
        return options.system_prompt
    from ..kiosk.options import DEFAULT_SYSTEM_PROMPT

    kiosk_prompt = settings.kiosk.get("system_prompt")
    return kiosk_prompt if isinstance(kiosk_prompt, str) and kiosk_prompt.strip() else DEFAULT_SYSTEM_PROMPT
