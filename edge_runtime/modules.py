"""Kiosk module plugins: built-ins by default, third-party ones via the `clawd_edge.modules` entry-point group."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from .config import Settings
from .errors import ConfigError

ENTRY_POINT_GROUP = "clawd_edge.modules"

# Built-ins, as "module:factory" so nothing heavy is imported until a module is enabled.
BUILTIN_MODULES: Mapping[str, str] = {
    "voice": "edge_runtime.voice.module:create",
    "ocr": "edge_runtime.ocr.module:create",
}


class Module(Protocol):
    """A running kiosk module. `routers()` returns FastAPI routers the daemon mounts when it is enabled.

    A module may also have a synchronous `halt()`: the daemon calls it just before its shutdown bound, so work still
    running for a request ends with an answer (a 503) instead of being cut off (the voice module has one).
    """

    name: str

    def routers(self) -> Sequence[Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# A factory validates its own options (raising ConfigError naming `modules.<name>.<key>`) and builds the module
# without loading anything: `serve` calls it before taking the port and loading the LLM, so a typo fails in a
# fraction of a second; models, devices and programs are loaded or checked by start().
ModuleFactory = Callable[[Mapping[str, Any], Settings], Module]


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    target: str
    builtin: bool

    def load(self) -> ModuleFactory:
        module_name, _, attr = self.target.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory  # type: ignore[no-any-return]


def available_modules() -> dict[str, ModuleSpec]:
    """Every known module by name; an installed plugin may not shadow a built-in."""
    specs = {name: ModuleSpec(name, target, True) for name, target in BUILTIN_MODULES.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        specs.setdefault(ep.name, ModuleSpec(ep.name, ep.value, False))
    return specs


async def stop_modules(modules: Sequence[Module], log: logging.Logger) -> None:
    """Stop `modules` in reverse start order; one that fails to stop is logged and the others still stop."""
    for module in reversed(modules):
        try:
            await module.stop()
        except Exception:
            log.exception("module %s failed to stop", module.name)


def enabled_modules(settings: Settings) -> list[Module]:
    """Build (validate, not start) each module enabled in `settings.modules`; unknown names are config errors."""
    specs = available_modules()
    built: list[Module] = []
    for name, module_settings in settings.modules.items():
        if name not in specs:
            raise ConfigError(f"unknown module; available modules are: {', '.join(sorted(specs))}",
                              key=f"modules.{name}")
        if module_settings.enabled:
            built.append(specs[name].load()(module_settings.options, settings))
    return built
