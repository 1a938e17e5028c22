"""CORS: off unless server.cors_origins lists origins; then only those origins get CORS headers."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from edge_runtime.config import Settings
from edge_runtime.engine import create_engine
from edge_runtime.server import create_app

from .conftest import Daemon

PREFLIGHT = {"Origin": "http://kiosk.local", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_is_off_by_default(daemon: Daemon) -> None:
    preflight = httpx.options(daemon.url + "/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in preflight.headers
    health = httpx.get(daemon.url + "/health", headers={"Origin": "http://kiosk.local"})
    assert "access-control-allow-origin" not in health.headers


def test_configured_origins_get_cors_headers(smollm2_path: Path, tmp_path: Path) -> None:
    settings = Settings().replace(model_path=str(smollm2_path), threads=1, parallel=1, max_sequence_length=256,
                                  keep_alive=0, models_dir=str(tmp_path),
                                  **{"server.cors_origins": ["http://kiosk.local"], "server.api_key": "k"})
    engine = create_engine(settings, smollm2_path)  # keep_alive 0: nothing is loaded for this test

    async def run() -> None:
        app = create_app(settings, engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            ok = await client.options("/v1/chat/completions", headers=PREFLIGHT)
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "http://kiosk.local"
            assert "POST" in ok.headers["access-control-allow-methods"]
            other = await client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "http://evil"})
            assert "access-control-allow-origin" not in other.headers
            models = await client.get("/v1/models", headers={"Origin": "http://kiosk.local",
                                                              "Authorization": "Bearer k"})
            assert models.status_code == 200
            assert models.headers["access-control-allow-origin"] == "http://kiosk.local"
        await engine.close()

    asyncio.run(run())
