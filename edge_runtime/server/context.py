"""What every route of one app shares (settings, engine, metrics); passed in, never a module global."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.config import Settings
from edge_runtime.engine.types import Engine
from edge_runtime.errors import ClawdError, RegistryError

from .lora_api import SEPARATOR, AdapterTable
from .metrics import ServerMetrics

if TYPE_CHECKING:
    from edge_runtime.store import ModelStore, ResolvedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    engine: Engine
    metrics: ServerMetrics
    started: int = field(default_factory=lambda: int(time.time()))
    # The served model's file and registry entry (None in apps built without one, e.g. over a fake engine).
    served: ResolvedModel | None = None
    # The configured LoRA adapters and their default scales (create_app builds it from settings.adapters).
    adapters: AdapterTable = field(default_factory=AdapterTable)

    @property
    def model_id(self) -> str:
        """The OpenAI `model` id of the served model: the engine's name for it."""
        return self.engine.status().model or Path(self.settings.model_path).stem

    def store(self) -> ModelStore | None:
        """The model store of the settings, or None (logged) when its registry cannot be read: model listings then
        show the served model only."""
        from edge_runtime.store import ModelStore

        try:
            return ModelStore.from_settings(self.settings)
        except ClawdError as exc:
            log.warning("model registry unavailable: %s", exc)
            return None

    def _registry_entries(self) -> list[Any]:
        store = self.store()
        if store is None:
            return []
        return [(e, store.path_for(e)) for e in store.registry.entries if e.kind == "llm"]

    def resolve(self, requested: str | None) -> str:
        """The served model id: for any `requested` name by default; with server.strict_model only for one of the
        served model's names (id, alias, configured name or file), else RegistryError (404 model_not_found).

        `requested` is only ever compared with names, never made into a path, so it cannot reach the file system.
        """
        served = self.model_id
        if not requested or not self.settings.server.strict_model:
            # One model is served: a client's fixed name (gpt-4o-mini, "default") or another registry model gets
            # this one, as from llama-server; the response's `model` tells the client which it got.
            return served
        wanted = requested.casefold()
        configured = self.settings.model_path
        names = {served, configured, Path(configured).name, Path(configured).stem}
        if wanted in {n.casefold() for n in names}:
            return served
        for entry, _ in self._registry_entries():
            if entry.name == served and wanted in {entry.name.casefold(), *(a.casefold() for a in entry.aliases)}:
                return served
        raise RegistryError(f"model {requested!r} is not served here; this daemon serves {served!r} "
                            "(server.strict_model is true; start it with --model to serve another)")

    def models(self) -> list[dict[str, Any]]:
        """The loaded model first, then every LLM in the registry (pulled or not)."""
        served = self.model_id
        status = self.engine.status()
        data: list[dict[str, Any]] = [{
            "id": served, "object": "model", "created": self.started, "owned_by": "clawd-edge",
            "loaded": True, "state": status.state.value,
        }]
        # Each adapter as a model of its own, so a plain OpenAI client can pick it by name.
        data.extend({"id": served + SEPARATOR + spec.name, "object": "model", "created": self.started,
                     "owned_by": "clawd-edge", "loaded": True, "state": status.state.value, "parent": served,
                     "adapter": spec.name} for spec in self.adapters.specs)
        for entry, path in self._registry_entries():
            if entry.name == served:
                data[0]["aliases"] = list(entry.aliases)
                continue
            data.append({"id": entry.name, "object": "model", "created": 0, "owned_by": "clawd-edge-registry",
                         "loaded": False, "downloaded": path.exists(), "aliases": list(entry.aliases)})
        return data
