"""Closing `VoiceModule.transcripts()`: the recognition thread stops even while it waits behind an upload."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

from edge_runtime.config import Settings
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options
from edge_runtime.voice.sphinx_stt import SphinxEngine


def _listeners(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_closing_transcripts_stops_a_recogniser_waiting_for_its_turn(tmp_path: Path,
                                                                      sphinx_engine: SphinxEngine) -> None:
    """An upload holds the one recognition turn (a long native decode); the kiosk's listener waits behind it.

    Closing the stream must end the listener then, not leave it waiting for the turn once the join gives up.
    """
    silence = tmp_path / "room.raw"
    silence.write_bytes(b"\0\0" * 16000 * 3)
    options = parse_options({"input": str(silence), "max_concurrent_transcriptions": 1})
    module = VoiceModule(options, Settings(), stt=sphinx_engine)

    async def listen_then_leave() -> float:
        async def consume() -> None:
            async for _ in module.transcripts():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)  # the listener has read its first chunk and waits for the turn
        assert _listeners("voice-listen")
        began = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    with module.limiter.turn():  # the upload's turn, held throughout
        took = asyncio.run(asyncio.wait_for(listen_then_leave(), 30))
        left = _listeners("voice-listen")
    for thread in left:  # once the turn is free, a listener left behind by the old code finishes
        thread.join(10)
    assert not left, f"recognition thread still running {took:.1f} s after the stream was closed"
    assert took < 2.0
