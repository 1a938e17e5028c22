"""The Ollama API's view of models: names with tags, the served model, local registry models, pull progress."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge_runtime.engine.types import EngineState
from edge_runtime.errors import ClawdError, InvalidRequest, RegistryError
from edge_runtime.registry import RegistryEntry
from edge_runtime.store import ModelStore

from .context import AppContext
from .ollama_shapes import DEFAULT_TAG, LocalModel, ndjson, pull_status

log = logging.getLogger(__name__)
# Pull progress lines at most this often: a 100 MB copy from an installed wheel reports every MiB.
PROGRESS_INTERVAL = 0.25


def split_tag(name: str) -> tuple[str, str]:
    """`name:tag` as (name, tag); no tag is "latest". A namespace (`library/x`) stays part of the name."""
    base, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, DEFAULT_TAG
    return base, tag or DEFAULT_TAG


def served_model(ctx: AppContext) -> LocalModel:
    """The loaded model under its registry name when it is a registry model (also when served by path: matched by
    file name and size), else under the engine's name for it. It reads the GGUF header (tens of ms): the router
    reads it once, since a daemon serves one model for its whole life."""
    served = ctx.served
    path = served.path if served is not None else Path(ctx.settings.model_path).expanduser()
    entry = served.entry if served is not None else None
    store = ctx.store()
    if entry is None and store is not None and path.is_file():
        size = path.stat().st_size
        entry = next((e for e in store.registry.by_filename(path.name) if e.kind == "llm" and e.size in (None, size)),
                     None)
    return LocalModel.read(entry.name if entry is not None else ctx.model_id, path, entry)


def resolve(ctx: AppContext, model: LocalModel, requested: str) -> str:
    """The name to answer under: `requested` when it names the served model (with or without `:latest`, by alias
    or file name), else (server.strict_model false) the served model's own name; strict: RegistryError (404)."""
    base, tag = split_tag(requested)
    own, _ = split_tag(model.name)
    names = {own, *(model.entry.aliases if model.entry is not None else ())}
    if tag == DEFAULT_TAG and base.casefold() in {n.casefold() for n in names}:
        return requested
    if tag == DEFAULT_TAG and ctx.settings.server.strict_model:
        ctx.resolve(base)  # the engine's own names (file name, configured path); raises for any other
        return requested
    ctx.resolve(requested)
    return model.name


def slot_context(ctx: AppContext) -> int:
    status = ctx.engine.status()
    return max(1, status.kv_cells_total // max(1, status.slots_total))


def tags(ctx: AppContext, served: LocalModel) -> list[dict[str, Any]]:
    """The served model first, then every other registry LLM already in the models dir (Ollama's "local")."""
    out = [served.tag()]
    store = ctx.store()
    if store is None:
        return out
    for entry in store.registry.entries:
        path = store.path_for(entry)
        if entry.kind != "llm" or not path.is_file() or entry.name == split_tag(served.name)[0]:
            continue
        try:
            out.append(LocalModel.read(entry.name, path, entry).tag())
        except (ClawdError, OSError) as exc:
            log.warning("not listing %s: %s", entry.name, exc)
    return out


def running(ctx: AppContext, served: LocalModel) -> list[dict[str, Any]]:
    """/api/ps: the served model while it is loaded, with when keep_alive will unload it."""
    status = ctx.engine.status()
    if status.state is not EngineState.READY:
        return []
    return [served.process(status.expires_at, slot_context(ctx))]


def registry_entry(ctx: AppContext, requested: str) -> tuple[ModelStore, RegistryEntry]:
    """The registry LLM that /api/pull fetches for `requested` (`name` or `name:latest`)."""
    store = ctx.store()
    if store is None:
        raise RegistryError("the model registry is unavailable on this server (see its log)")
    base, tag = split_tag(requested)
    if tag != DEFAULT_TAG:
        raise RegistryError(f"model {requested!r} not found: registry models have only the tag {DEFAULT_TAG!r}")
    entry = store.registry.get(base)
    if entry.kind != "llm":
        raise InvalidRequest(f"{entry.name} is a {entry.kind} model, not a language model; fetch it with "
                             f"`clawd-edge models pull {entry.name}`", param="model")
    return store, entry


async def pull_lines(store: ModelStore, entry: RegistryEntry) -> AsyncIterator[bytes]:
    """Ollama's pull progress as NDJSON lines while the store fetches and verifies `entry` on a worker thread.

    A client that goes away does not stop the pull (it finishes in the background, like Ollama's).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    digest = f"sha256:{entry.sha256}" if entry.sha256 else None
    label = f"pulling {(entry.sha256 or entry.name)[:12]}"
    sent = [0.0]  # per pull, not module state: the last progress line's time

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - sent[0] >= PROGRESS_INTERVAL or (total is not None and done >= total):
            sent[0] = now
            line = pull_status(label, digest=digest, total=total or entry.size, completed=done)
            loop.call_soon_threadsafe(queue.put_nowait, line)

    def work() -> Path:
        return store.pull(entry, progress=progress)

    task = asyncio.ensure_future(asyncio.to_thread(work))
    # Retrieved here so a pull whose client left never logs "exception was never retrieved".
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    yield ndjson(pull_status("pulling manifest"))
    while not task.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if not getter.cancelled():
            yield ndjson(getter.result())
    try:
        path = task.result()
    except ClawdError as exc:
        log.warning("pull of %s failed: %s", entry.name, exc)
        yield ndjson({"error": str(exc)})
        return
    size = path.stat().st_size if path.is_file() else entry.size
    # Already present and verified: no progress was reported, so say it is complete.
    yield ndjson(pull_status(label, digest=digest, total=size, completed=size))
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield ndjson(pull_status(status))
