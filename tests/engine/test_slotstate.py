"""The slot cache: KV cells written at unload come back at the next load (a restart, an idle unload), give the
same answers as a cold start, and a file that does not fit is refused and deleted, never trusted."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.engine import LlamaEngine
from edge_runtime.engine.types import EngineState

from .conftest import chat, collect, wait_for

# A long system prompt, as Home Assistant sends (its entity list): ~300 tokens evaluated on every cold start.
SYSTEM = "You are a voice assistant for a house. " + " ".join(
    f"The {room} light is {'on' if i % 2 else 'off'} and its brightness is {10 * i} percent." for i, room in
    enumerate(["kitchen", "hall", "bedroom", "office", "garage", "porch", "attic", "cellar", "bath", "den"] * 2))


def _files(models: Path) -> list[Path]:
    return sorted((models / ".slot-cache").glob("*/slot-*.state"))


def test_a_restarted_engine_finds_the_system_prompt_evaluated(make_engine: Callable[..., LlamaEngine],
                                                              tmp_path: Path) -> None:
    models = tmp_path / "models"

    async def main() -> None:
        first = make_engine(parallel=1)
        text_cold, last = await collect(first, chat("Is the porch light on?", system=SYSTEM, max_tokens=12))
        assert last.usage is not None and last.usage.cached_prompt_tokens == 0
        prompt_tokens = last.usage.prompt_tokens
        await first.close()  # shutdown writes the slot
        assert len(_files(models)) == 1

        second = make_engine(parallel=1)
        text, last = await collect(second, chat("Is the porch light on?", system=SYSTEM, max_tokens=12))
        assert text == text_cold  # the restored cells are the same computation
        assert last.usage is not None and last.usage.cached_prompt_tokens >= prompt_tokens - 1
        other, last = await collect(second, chat("Which lights are off?", system=SYSTEM, max_tokens=12))
        assert last.usage is not None and last.usage.cached_prompt_tokens > 250  # the system prompt part
        await second.close()

        cold = make_engine(parallel=1, slot_cache=False)
        assert (await collect(cold, chat("Which lights are off?", system=SYSTEM, max_tokens=12)))[0] == other

    asyncio.run(main())


def test_an_idle_unload_keeps_the_cells_for_the_reload(make_engine: Callable[..., LlamaEngine],
                                                       tmp_path: Path) -> None:
    async def main() -> None:
        engine = make_engine(parallel=1, keep_alive=0.3)
        await collect(engine, chat("Is the hall light on?", system=SYSTEM, max_tokens=8))
        await wait_for(lambda: engine.status().state is EngineState.UNLOADED)
        _, last = await collect(engine, chat("Is the den light on?", system=SYSTEM, max_tokens=8))
        assert last.usage is not None and last.usage.cached_prompt_tokens > 250

    asyncio.run(main())


def test_a_file_that_does_not_fit_is_deleted_and_the_engine_works(make_engine: Callable[..., LlamaEngine],
                                                                   tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"

    async def main() -> None:
        first = make_engine(parallel=1)
        expected, _ = await collect(first, chat("Is the attic light on?", system=SYSTEM, max_tokens=8))
        await first.close()
        (state,) = _files(models)
        size = state.stat().st_size
        state.write_bytes(state.read_bytes()[:1000])  # a torn file (a write cut short)
        second = make_engine(parallel=1)
        text, last = await collect(second, chat("Is the attic light on?", system=SYSTEM, max_tokens=8))
        assert text == expected and last.usage is not None and last.usage.cached_prompt_tokens == 0
        assert "does not fit this context; deleted" in caplog.text
        await second.close()
        assert state.stat().st_size >= size  # written whole again, from the cells evaluated since

    asyncio.run(main())


def test_another_context_layout_or_no_cache_reads_nothing(make_engine: Callable[..., LlamaEngine],
                                                          tmp_path: Path) -> None:
    models = tmp_path / "models"

    async def main() -> None:
        first = make_engine(parallel=1)
        await collect(first, chat("Is the bath light on?", system=SYSTEM, max_tokens=4))
        await first.close()
        bigger = make_engine(parallel=1, max_sequence_length=1024)  # another key: its own directory
        _, last = await collect(bigger, chat("Is the bath light on?", system=SYSTEM, max_tokens=4))
        assert last.usage is not None and last.usage.cached_prompt_tokens == 0
        await bigger.close()
        assert len({p.parent for p in _files(models)}) == 2
        off = make_engine(parallel=1, slot_cache=False, models_dir=tmp_path / "other")
        await collect(off, chat("Is the bath light on?", system=SYSTEM, max_tokens=4))
        await off.close()
        assert not (tmp_path / "other" / ".slot-cache").exists()

    asyncio.run(main())
