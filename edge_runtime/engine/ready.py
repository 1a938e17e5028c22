"""Waiting for an engine's model to finish loading, for the commands that preload before they start."""
from __future__ import annotations

import asyncio

from ..errors import EngineError
from .types import Engine, EngineState

LOAD_POLL_SECONDS = 0.05


async def wait_ready(engine: Engine) -> None:
    """Return once the model is READY; raise EngineError with llama.cpp's reason if loading failed.

    UNLOADED also returns: a preloading engine reports LOADING from the start, so UNLOADED means the model loads
    on the first request (keep_alive 0) or was unloaded after being ready; waiting would never end.
    """
    while True:
        status = engine.status()
        if status.state in (EngineState.READY, EngineState.UNLOADED):
            return
        if status.state == EngineState.FAILED:
            raise EngineError(f"the model did not load: {status.reason}")
        await asyncio.sleep(LOAD_POLL_SECONDS)
