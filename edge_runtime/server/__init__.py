"""The OpenAI-compatible HTTP daemon (`clawd-edge serve`): FastAPI app, metrics, and the uvicorn runner."""
from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
