"""`create_app(settings, engine, modules)`: the daemon's FastAPI app, all state on the app, none in modules."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.responses import Response

from edge_runtime import __version__
from edge_runtime.config import Settings
from edge_runtime.engine.types import Engine, EngineState
from edge_runtime.modules import Module, stop_modules

from .context import AppContext
from .embeddings_api import embeddings_router
from .errors import install_handlers
from .lora_api import AdapterTable, lora_router
from .metrics import ServerMetrics, build_labels
from .middleware import AccessLog, ApiKeyAuth, BodyLimit
from .ollama_api import ollama_router
from .openai_api import openai_router

if TYPE_CHECKING:
    from edge_runtime.engine.embeddings import EmbeddingEngine
    from edge_runtime.kiosk.service import KioskService
    from edge_runtime.store import ResolvedModel

log = logging.getLogger(__name__)


def _lifespan(modules: Sequence[Module], kiosk: KioskService | None) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[Module] = []
        try:
            for module in modules:
                await module.start()
                started.append(module)
                log.info("module %s started", module.name)
            if kiosk is not None:
                kiosk.start()  # in the background: its failures are reported, never fatal to the HTTP API
            yield
        finally:
            if kiosk is not None:
                await kiosk.stop()  # before the modules it shares (and, in the runner, the engine) go away
            await stop_modules(started, log)
    return lifespan


def upload_paths(routers: Iterable[Any]) -> frozenset[str]:
    """Paths of the routes that take a multipart file (UploadFile = File(...)): they get server.max_upload_bytes."""
    from fastapi import params
    from fastapi.routing import APIRoute

    return frozenset(
        route.path for router in routers for route in router.routes
        if isinstance(route, APIRoute)
        and any(isinstance(f.field_info, params.File) for f in route.dependant.body_params)
    )


def create_app(settings: Settings, engine: Engine, modules: Sequence[Module] = (),
               kiosk: KioskService | None = None, embeddings: EmbeddingEngine | str | None = None, *,
               served: ResolvedModel | None = None, memory_budget: int | None = None,
               layers: Mapping[str, int] | None = None) -> FastAPI:
    """The HTTP API over `engine`; enabled kiosk `modules` get their routers mounted and run with the app, and
    `kiosk` (the dialogue loop on the same engine) starts after them and stops before them. `embeddings` serves
    /v1/embeddings (or says why it is off); its owner closes it. `served` (the model file and registry entry),
    `memory_budget` (the plan's) and `layers` (per board, with RPC workers) label /metrics, and `served` also
    describes the model on the Ollama API."""
    quant = served.entry.quant if served is not None and served.entry is not None else None
    build = build_labels(engine.status().model, served.path if served is not None else None, quant)
    metrics = ServerMetrics(engine.status, kiosk.snapshot if kiosk is not None else None, build=build,
                            memory_budget=memory_budget, layers=layers)
    ctx = AppContext(settings=settings, engine=engine, metrics=metrics, served=served,
                     adapters=AdapterTable(settings.adapters))
    app = FastAPI(title="clawd-edge", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=_lifespan(tuple(modules), kiosk))
    app.state.clawd = ctx
    install_handlers(app)
    app.include_router(openai_router(ctx))
    app.include_router(lora_router(ctx))
    app.include_router(embeddings_router(ctx, embeddings))
    app.include_router(ollama_router(ctx, embeddings))
    module_routers = [router for module in modules for router in module.routers()]
    for router in module_routers:
        app.include_router(router)
    screen_access = None
    if kiosk is not None:
        from edge_runtime.kiosk.http import build_router as kiosk_router
        from edge_runtime.kiosk.http import screen_access as kiosk_screen_access

        app.include_router(kiosk_router(kiosk, settings.server.api_key))
        if settings.server.api_key:
            screen_access = kiosk_screen_access(settings.server.api_key, kiosk.parts.options.screen_public)

    @app.get("/health", responses={503: {"description": "Model loading or failed"}})
    def health() -> JSONResponse:
        """200 when the model is ready or idle-unloaded; 503 with the engine's reason while loading or failed (no
        API key needed)."""
        s = engine.status()
        # Unloaded is healthy: the next request reloads the model in well under a second (mmap), so a load
        # balancer must not drop the board for having been idle for keep_alive seconds.
        healthy = s.state in (EngineState.READY, EngineState.UNLOADED)
        body: dict[str, Any] = {
            "status": "ok" if healthy else "unavailable", "state": s.state.value, "reason": s.reason,
            "model": s.model, "slots_total": s.slots_total, "slots_busy": s.slots_busy,
            "queue_depth": s.queue_depth,
        }
        if kiosk is not None:
            # Reported, not part of the status: a kiosk without a microphone must not make load balancers or
            # Home Assistant drop a working LLM API (and a restart would not bring the microphone back).
            body["kiosk"] = kiosk.snapshot()
        if not healthy:
            body["error"] = {"message": f"model {s.state.value}: {s.reason}", "type": "server_error",
                             "param": None, "code": f"model_{s.state.value}"}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text exposition (this app's own registry)."""
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    # Added innermost first: BodyLimit sees the request last, AccessLog first (and so times everything).
    app.add_middleware(BodyLimit, limit=settings.server.max_request_bytes,
                       upload_limit=settings.server.max_upload_bytes, upload_paths=upload_paths(module_routers),
                       read_timeout=settings.server.read_timeout)
    if settings.server.api_key:
        app.add_middleware(ApiKeyAuth, api_key=settings.server.api_key, allow=screen_access)
    if settings.server.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.server.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(AccessLog, metrics=metrics)
    return app
