"""`clawd-edge serve`: load the model, then run the OpenAI-compatible daemon until SIGTERM."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

import click

from edge_runtime.cli import state
from edge_runtime.config import SPECULATIVE_MODES
from edge_runtime.engine.ready import wait_ready
from edge_runtime.errors import ClawdError, MemoryPlanError

if TYPE_CHECKING:
    from edge_runtime.config import Settings
    from edge_runtime.engine.embeddings import EmbeddingEngine
    from edge_runtime.engine.planner import MemoryPlan
    from edge_runtime.engine.types import Engine
    from edge_runtime.sdnotify import Notifier
    from edge_runtime.store import ResolvedModel
    from edge_runtime.wyoming.server import WyomingServer

log = logging.getLogger("edge_runtime.serve")


def _embeddings(settings: Settings, chat_model: ResolvedModel, chat_name: str,
                chat_plan: MemoryPlan) -> EmbeddingEngine | str:
    """The /v1/embeddings engine (nothing loads until its first request), or why there is none.

    A configured `embedding_model` that cannot fit next to the chat model is an error at startup; the default (the
    chat model's own GGUF) only turns the route off, so a board that served chat before still starts.
    """
    from edge_runtime.engine.embeddings import create_embeddings
    from edge_runtime.store import resolve_model

    if settings.embedding_model is not None:
        resolved = resolve_model(settings, settings.embedding_model)
        name = resolved.name if resolved.entry is not None else resolved.path.stem
        engine = create_embeddings(settings, resolved.path, chat=chat_plan, name=name)
    else:
        try:
            engine = create_embeddings(settings, chat_model.path, chat=chat_plan, name=chat_name)
        except MemoryPlanError as exc:
            log.warning("/v1/embeddings is off: %s", exc)
            return str(exc)
    log.info("embeddings: %s", engine.plan.describe())
    return engine


async def _run(settings: Settings, notifier: Notifier, kiosk_flag: bool | None, wyoming_uri: str | None) -> None:
    from edge_runtime.kiosk.service import KioskService, build_parts, daemon_kiosk_options
    from edge_runtime.modules import enabled_modules
    from edge_runtime.wyoming.options import daemon_wyoming_options

    # Configuration errors (the kiosk section, modules) fail before the port is taken or the model loaded: a typo
    # in modules.voice.* is one line in a fraction of a second, not after a model load. Building a module only
    # validates its options (its start() loads models), so nothing here needs closing if a later step fails.
    kiosk_options = daemon_kiosk_options(settings, kiosk_flag)
    modules = enabled_modules(settings)
    # An enabled voice/ocr module is shared with the kiosk (one speech model); otherwise it builds its own.
    parts = build_parts(settings, kiosk_options, running=modules) if kiosk_options.enabled else None
    wyoming_options = daemon_wyoming_options(settings, wyoming_uri)
    wyoming: WyomingServer | None = None
    if wyoming_options.enabled:
        from edge_runtime.wyoming.server import WyomingServer, shared_voice

        # The same voice module as the HTTP routes and the kiosk: one speech model in memory.
        voice, owns_voice = shared_voice(settings, [*modules, parts.voice if parts is not None else None])
    # The web stack (FastAPI, uvicorn: a third of a second to import) only once the configuration is known good.
    from edge_runtime.engine import create_engine
    from edge_runtime.server import create_app
    from edge_runtime.server.runner import bind, serve
    from edge_runtime.store import resolve_model

    # Bind next: a taken port fails in milliseconds, not after loading the model.
    sock = bind(settings.server.host, settings.server.port)
    engine: Engine | None = None
    embeddings: EmbeddingEngine | str | None = None
    try:
        from edge_runtime.cpu.build import runtime_labels

        build = runtime_labels()
        log.info("llama.cpp build profile %s (llama-cpp-python %s) on %s, %s", build["profile"],
                 build["llama_cpp_python"], build["arch"], build["cpu"])
        notifier.status("resolving the model")
        resolved = resolve_model(settings)
        notifier.status(f"loading {resolved.name}")
        started = time.monotonic()
        # A registry model is served under its registry name; a bare GGUF under its file stem (an OpenAI model
        # id without the spaces of the GGUF's general.name). create_engine plans memory before any load.
        llama = create_engine(settings, resolved if resolved.entry is not None else resolved.path)
        engine = llama
        name = engine.status().model
        log.info("memory plan for %s: %s", name, llama.plan.describe())
        embeddings = _embeddings(settings, resolved, name, llama.plan)
        if wyoming_options.enabled:
            # Listening before the model is ready: Home Assistant's describe has a 1 s timeout.
            wyoming = WyomingServer(settings, wyoming_options, engine, voice, owns_voice=owns_voice)
            await wyoming.start()
        if settings.keep_alive != 0:  # keep_alive 0 means "load on demand": nothing to wait for
            await wait_ready(engine)
        log.info("model %s ready in %.2f s (%s)", name, time.monotonic() - started, resolved.path)
        # Same process, same engine: one model in RAM, the kiosk's turns take slots like HTTP requests do.
        kiosk = KioskService(settings, engine, parts, notify=notifier.status) if parts is not None else None
        app = create_app(settings, engine, modules, kiosk, embeddings, served=resolved,
                         memory_budget=llama.plan.budget,
                         layers=llama.plan.split.layers() if llama.plan.split is not None else None)
    except BaseException:
        sock.close()
        if wyoming is not None:
            await wyoming.stop()
        if engine is not None:
            await engine.close()
        if embeddings is not None and not isinstance(embeddings, str):
            await embeddings.close()
        raise
    # The embedding engine is halted with the modules just before the drain bound (running and queued requests
    # get a proper 503 rather than being cut off), and closed once the server and the chat engine are done.
    halted = (*modules, embeddings) if not isinstance(embeddings, str) else tuple(modules)
    # Wyoming requests get the HTTP drain's time, less the margin the engine's halt keeps for final answers.
    grace = max(0.0, settings.server.shutdown_timeout - 2.0)
    stops = [functools.partial(wyoming.stop, grace)] if wyoming is not None else []
    try:
        await serve(settings, engine, app, sock, notifier, kiosk, halted, stops)
    finally:
        if not isinstance(embeddings, str):
            await embeddings.close()


@click.command()
@click.option("--model", "-m", default=None, help="Registry name or GGUF path (default: config model_path).")
@click.option("--host", default=None, help="Address to bind (default: server.host, 127.0.0.1).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default: server.port, 8080).")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=None,
              help="Parallel slots: requests decoded together (default: parallel, 4).")
@click.option("--ctx", "-c", "context", type=click.IntRange(16), default=None,
              help="Total KV cells, split evenly between the slots (default: context, else parallel x "
                   "max_sequence_length); "
                   "the memory planner shrinks it to fit the memory budget.")
@click.option("--threads", "-t", type=click.IntRange(1, 256), default=None,
              help="CPU threads for llama.cpp (default: threads, all cores).")
@click.option("--api-key", default=None, envvar="CLAWD_EDGE_API_KEY", show_envvar=True,
              help="Require 'Authorization: Bearer KEY' on every route but /health (default: server.api_key).")
@click.option("--kiosk/--no-kiosk", "kiosk", default=None,
              help="Also run the voice/OCR kiosk loop on the same engine (default: kiosk.enabled).")
@click.option("--wyoming", "wyoming", metavar="URI", default=None,
              help="Also serve Home Assistant's Wyoming protocol here, e.g. tcp://0.0.0.0:10300 (default: "
                   "wyoming.uri when wyoming.enabled).")
@click.option("--rpc", "rpc", metavar="HOST:PORT,...", default=None,
              help="Put an even share of the model's layers on these `clawd-edge rpc-worker`s (trusted links only); "
                   "'' for none (default: rpc).")
@click.option("--speculative", type=click.Choice(SPECULATIVE_MODES), default=None,
              help="Guess tokens and verify them in the same decode: ngram (from the prompt and answer), draft "
                   "(with --draft-model), auto, off (default: speculative, auto).")
@click.option("--draft-model", "-md", "draft_model", default=None,
              help="Registry name or GGUF path of a small model with the same vocabulary that guesses tokens "
                   "(default: draft_model).")
@click.pass_context
def serve(ctx: click.Context, model: str | None, host: str | None, port: int | None, parallel: int | None,
          context: int | None, threads: int | None, api_key: str | None, kiosk: bool | None,
          wyoming: str | None, rpc: str | None, speculative: str | None, draft_model: str | None) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions, /health, /metrics)."""
    from edge_runtime.sdnotify import Notifier

    settings = state(ctx).settings.replace(
        model_path=model, threads=threads, parallel=parallel, context=context, rpc=rpc, speculative=speculative,
        draft_model=draft_model, **{"server.host": host, "server.port": port, "server.api_key": api_key},
    )
    # A daemon logs its requests by default (journald-friendly); -v still adds uvicorn's own messages.
    runtime_log = logging.getLogger("edge_runtime")
    if runtime_log.getEffectiveLevel() > logging.INFO:
        runtime_log.setLevel(logging.INFO)
    notifier = Notifier()
    try:
        asyncio.run(_run(settings, notifier, kiosk, wyoming))
    except ClawdError as exc:
        notifier.status(f"failed: {exc}")
        raise
