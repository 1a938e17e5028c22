"""LoRA adapters over HTTP: llama-server's /lora-adapters routes, and which adapters a request asks for."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from edge_runtime.adapter_config import AdapterSpec, check_scale
from edge_runtime.engine.types import GenerationRequest
from edge_runtime.errors import InvalidRequest

from .schemas import LoraEntry

if TYPE_CHECKING:
    from .context import AppContext

# `model: base+adapter` picks an adapter by name (adapter names cannot hold it; see adapter_config.NAME_RE).
SEPARATOR = "+"


@dataclass(frozen=True)
class Selection:
    """What a request's `model` and `lora` fields ask for: the base model name to resolve, the suffix to answer
    under (`+name` when the model name picked the adapter) and the (index, scale) pairs for the engine."""

    base: str | None
    suffix: str
    adapters: tuple[tuple[int, float], ...]

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        return dataclasses.replace(request, adapters=self.adapters) if self.adapters else request


class AdapterTable:
    """The configured adapters (same order, so same ids, as the engine loaded them) and their default scales.

    The defaults start at each adapter's configured `scale`; POST /lora-adapters changes them. Unlike
    llama-server they do not apply to every request: a request gets an adapter only by asking for it (`lora`, or
    `model: base+name`), and an adapter it names without a scale runs at the default. Used on the event loop only.
    """

    def __init__(self, specs: Sequence[AdapterSpec] = ()) -> None:
        self.specs = tuple(specs)
        self.scales = [s.scale for s in self.specs]

    def entries(self) -> list[dict[str, Any]]:
        """GET /lora-adapters: llama-server's fields (id, path, scale) and the name requests use."""
        return [{"id": i, "name": s.name, "path": str(s.path), "scale": self.scales[i]}
                for i, s in enumerate(self.specs)]

    def _named(self, name: str | None) -> int | None:
        return next((i for i, s in enumerate(self.specs) if s.name == name), None)

    def _known(self) -> str:
        return ", ".join(s.name for s in self.specs) or "none are configured (config.yaml `adapters:`)"

    def _index(self, entry: LoraEntry, where: str) -> int:
        if (entry.id is None) == (entry.name is None):
            raise InvalidRequest(f"{where}: give exactly one of id or name", param=where)
        if entry.id is not None:
            if entry.id >= len(self.specs):
                raise InvalidRequest(f"{where}.id: no LoRA adapter with id {entry.id}; adapters: {self._known()}",
                                     param=f"{where}.id")
            return entry.id
        found = self._named(entry.name)
        if found is None:
            raise InvalidRequest(f"{where}.name: no LoRA adapter named {entry.name!r}; adapters: {self._known()}",
                                 param=f"{where}.name")
        return found

    def _scale(self, value: float | None, index: int, where: str) -> float:
        if value is None:
            return self.scales[index]
        try:
            return check_scale(value, f"{where}.scale")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=f"{where}.scale") from None

    def select(self, model: str | None, lora: Sequence[LoraEntry] | None) -> Selection:
        """The adapters `model` (`base+name`) and `lora` ask for; a `lora` entry overrides the model name's scale
        for the same adapter. InvalidRequest (400) names an unknown adapter."""
        pairs: list[tuple[int, float]] = []
        base, suffix = model, ""
        if model is not None and SEPARATOR in model:
            base, _, name = model.rpartition(SEPARATOR)
            found = self._named(name)
            if found is None:
                raise InvalidRequest(f"model {model[:100]!r}: no LoRA adapter named {name[:64]!r}; adapters: "
                                     f"{self._known()}", param="model")
            pairs.append((found, self.scales[found]))
            base, suffix = base or None, SEPARATOR + name
        for i, entry in enumerate(lora or ()):
            index = self._index(entry, f"lora[{i}]")
            pairs.append((index, self._scale(entry.scale, index, f"lora[{i}]")))
        return Selection(base, suffix, tuple(pairs))

    def set_scales(self, body: Sequence[LoraEntry]) -> None:
        """POST /lora-adapters: new default scales for the listed adapters (all checked before any changes)."""
        changes = []
        for i, entry in enumerate(body):
            index = self._index(entry, f"[{i}]")
            if entry.scale is None:
                raise InvalidRequest(f"[{i}].scale: missing; give the adapter's new default scale",
                                     param=f"[{i}].scale")
            changes.append((index, self._scale(entry.scale, index, f"[{i}]")))
        for index, scale in changes:
            self.scales[index] = scale

    def modelfile_lines(self) -> str:
        """Ollama's modelfile ADAPTER lines (what `ollama show --modelfile` prints for a model with adapters)."""
        return "".join(f"ADAPTER {s.path}\n" for s in self.specs)


def lora_router(ctx: AppContext) -> APIRouter:
    """GET and POST /lora-adapters, in llama-server's shapes (behind the API key like every non-public route)."""
    router = APIRouter()
    table = ctx.adapters
    # async handlers: they run on the event loop, like every reader of the table (no thread touches it).

    @router.get("/lora-adapters", operation_id="list_lora_adapters")
    async def list_adapters() -> list[dict[str, Any]]:
        """The configured LoRA adapters: id (for `lora: [{"id": ...}]`), name, path and default scale."""
        return table.entries()

    @router.post("/lora-adapters", operation_id="set_lora_adapters",
                 responses={400: {"description": "Unknown adapter or bad scale (OpenAI error body)"}})
    async def set_adapters(body: list[LoraEntry]) -> dict[str, Any]:
        """Set default scales: `[{"id": 0, "scale": 0.5}]` (or `"name"` instead of `"id"`)."""
        table.set_scales(body)
        return {"success": True}

    return router
