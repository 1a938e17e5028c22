"""Engine test helpers: engines on the real SmolLM2 model, closed at teardown; a stream collector."""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import Settings
from edge_runtime.engine import LlamaEngine, create_engine
from edge_runtime.engine.types import ChatMessage, Chunk, GenerationRequest, SamplingParams

QUESTION = "What is the capital of France? Answer in one sentence."


def chat(text: str, *, system: str | None = None, **sampling: Any) -> GenerationRequest:
    messages = ((ChatMessage("system", system),) if system else ()) + (ChatMessage("user", text),)
    return GenerationRequest(messages=messages, sampling=SamplingParams(**{"temperature": 0.0, **sampling}))


def completion(prompt: str, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, sampling=SamplingParams(**{"temperature": 0.0, **sampling}))


async def collect(engine: LlamaEngine, request: GenerationRequest) -> tuple[str, Chunk]:
    """The whole text of a stream and its last chunk (finish_reason, usage)."""
    parts: list[str] = []
    last: Chunk | None = None
    async for chunk in engine.generate(request):
        parts.append(chunk.text)
        last = chunk
    assert last is not None and last.finish_reason is not None
    return "".join(parts), last


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def make_engine(smollm2_path: Path, tmp_path: Path) -> Iterator[Callable[..., LlamaEngine]]:
    """Build engines on SmolLM2 with 2 threads and small contexts; every one is closed after the test.

    models_dir is the test's own, so the slot cache (models_dir/.slot-cache) never brings another test's cells."""
    engines: list[LlamaEngine] = []

    def factory(model: Path | None = None, *, preload: bool = True, flash_attn: str = "auto",
                stream_interval: float = 0.05, **overrides: Any) -> LlamaEngine:
        values: dict[str, Any] = {"threads": 2, "parallel": 2, "max_sequence_length": 512, "batch_size": 256,
                                  "keep_alive": float("inf"), "models_dir": tmp_path / "models", **overrides}
        engine = create_engine(Settings(**values), model or smollm2_path, preload=preload, flash_attn=flash_attn,
                               stream_interval=stream_interval)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.close_sync()
