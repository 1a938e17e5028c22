"""Declarative checks for a section's options (kiosk, voice, wyoming): one checker per key, errors naming the key."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .config import parse_size
from .errors import ConfigError

T = TypeVar("T")
# (the option's full key, e.g. "modules.voice.rate"; its raw value) -> the validated value, or ConfigError.
Check = Callable[[str, Any], Any]


def bad(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{value!r} is not allowed; expected {allowed}", key=key)


def text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(key, value, "a non-empty string")
    return value


def flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise bad(key, value, "true or false")
    return value


def integer(low: int, high: int) -> Check:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(key, value, f"an integer from {low} to {high}")
        return value
    return check


def number(low: float, high: float) -> Check:
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise bad(key, value, f"a number from {low:g} to {high:g}")
        return float(value)
    return check


def choice(*allowed: str) -> Check:
    def check(key: str, value: object) -> str:
        if value not in allowed:
            raise bad(key, value, "one of " + ", ".join(allowed))
        return str(value)
    return check


def size(minimum: int = 1) -> Check:
    """Bytes or a size with a unit ("512MiB"), at least `minimum` bytes."""
    def check(key: str, value: object) -> int:
        n = parse_size(value, key)
        if n < minimum:
            raise bad(key, value, f"a size of at least {minimum} bytes")
        return n
    return check


def parse_section(cls: Callable[..., T], prefix: str, options: Mapping[str, Any], checks: Mapping[str, Check],
                  nullable: frozenset[str] = frozenset()) -> T:
    """`cls(**options)` with every option checked by its entry in `checks`; an unknown key is an error listing the
    allowed ones, and a key in `nullable` may be null."""
    values: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = str(raw_key)
        if key not in checks:
            raise ConfigError(f"unknown option; allowed options are: {', '.join(sorted(checks))}", key=prefix + key)
        values[key] = None if value is None and key in nullable else checks[key](prefix + key, value)
    return cls(**values)


def replaced(current: T, parse: Callable[[Mapping[str, Any]], T], changes: Mapping[str, Any]) -> T:
    """The options dataclass `current` with the non-None `changes` (command-line flags), validated again by `parse`
    like the file (tuples go back as the lists a file gives)."""
    values = {k: v for k, v in changes.items() if v is not None}
    if not values:
        return current
    merged = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}  # type: ignore[arg-type]
    merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
    merged.update(values)
    return parse(merged)
