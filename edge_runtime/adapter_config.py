"""The `adapters:` list of config.yaml: LoRA adapters served with the model, checked entry by entry."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# A name ends up in `model: base+name` and in URLs: no "+" (the separator), no spaces or slashes.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# llama.cpp takes any float; beyond this a LoRA only produces noise, and a typo (50 for 0.5) is caught.
MAX_SCALE = 16.0
_KEYS = ("name", "path", "scale")


@dataclass(frozen=True)
class AdapterSpec:
    """One configured adapter: the name requests pick it by, its GGUF LoRA file and its default scale."""

    name: str
    path: Path
    scale: float = 1.0


def check_scale(value: object, where: str) -> float:
    """A finite number within +-MAX_SCALE (a bool is not a number); ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or abs(value) > MAX_SCALE:
        raise ValueError(f"{where}: {value!r} is not allowed; expected a number between -{MAX_SCALE:g} and "
                         f"{MAX_SCALE:g}")
    return float(value)


def parse_adapters(raw: object, source: str) -> tuple[AdapterSpec, ...]:
    """Validate the list's shape here; whether each file is a LoRA for the served model is checked when the
    model is planned (engine.adapters.check_files), which knows the model."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{raw!r} is not allowed; expected a list of {{name, path, scale}}", key="adapters",
                          source=source)
    specs: list[AdapterSpec] = []
    for i, entry in enumerate(raw):
        key = f"adapters[{i}]"
        # Settings built in code may hold AdapterSpecs already; they are checked like the file's mappings.
        item = adapters_to_list((entry,))[0] if isinstance(entry, AdapterSpec) else entry
        if not isinstance(item, dict):
            raise ConfigError(f"{item!r} is not allowed; expected a mapping with name, path and scale", key=key,
                              source=source)
        unknown = sorted(str(k) for k in item if k not in _KEYS)
        if unknown:
            raise ConfigError(f"unknown key; allowed keys are: {', '.join(_KEYS)}", key=f"{key}.{unknown[0]}",
                              source=source)
        name, path = item.get("name"), item.get("path")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{name!r} is not allowed; expected a name of letters, digits, '.', '_' or '-' "
                              "(at most 64, no '+')", key=f"{key}.name", source=source)
        if any(s.name == name for s in specs):
            raise ConfigError(f"{name!r} is already the name of another adapter", key=f"{key}.name", source=source)
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{path!r} is not allowed; expected the path of a GGUF LoRA file",
                              key=f"{key}.path", source=source)
        try:
            scale = check_scale(item.get("scale", 1.0), f"{key}.scale")
        except ValueError as exc:
            raise ConfigError(str(exc).split(": ", 1)[1], key=f"{key}.scale", source=source) from None
        specs.append(AdapterSpec(name, Path(path).expanduser(), scale))
    return tuple(specs)


def adapters_to_list(specs: tuple[AdapterSpec, ...]) -> list[dict[str, object]]:
    """Plain data for `config show` and re-validation; the inverse of parse_adapters."""
    return [{"name": s.name, "path": str(s.path), "scale": s.scale} for s in specs]
