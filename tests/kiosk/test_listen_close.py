"""When the kiosk stops, its listener thread stops; one that cannot (a read that never returns) is reported."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import Settings
from edge_runtime.kiosk.loop import Kiosk
from edge_runtime.kiosk.options import KioskOptions
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.module import create as create_voice


def _listeners() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "kiosk-listen"]


def _voice(settings: Settings, audio_input: Path) -> VoiceModule:
    voice = create_voice({"input": f"file:{audio_input}", "language": "en", "stt": "pocketsphinx",
                          "max_concurrent_transcriptions": 1}, settings)
    voice.stt().load()  # as start() does: the listener reaches its audio at once, not after a model load
    return voice


async def _listen_then_stop(kiosk: Kiosk) -> float:
    """Listen, run, then stop the kiosk as the daemon does at shutdown (cancel run()); how long stopping took."""
    kiosk.listen()
    run = asyncio.ensure_future(kiosk.run())
    await asyncio.sleep(0.5)
    assert _listeners()
    began = time.monotonic()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    return time.monotonic() - began


def test_stopping_ends_a_listener_waiting_for_a_recognition_turn(tmp_path: Path, kiosk_settings: Settings,
                                                                  engine: Any) -> None:
    silence = tmp_path / "room.raw"
    silence.write_bytes(b"\0\0" * 16000 * 3)
    voice = _voice(kiosk_settings, silence)
    kiosk = Kiosk(kiosk_settings, engine, voice, None, KioskOptions(speak=False))
    with voice.limiter.turn():  # an upload's transcription holds the one turn
        took = asyncio.run(asyncio.wait_for(_listen_then_stop(kiosk), 30))
        left = _listeners()
    for thread in left:  # once the turn is free, a listener left behind by the old code finishes
        thread.join(10)
    assert not left, f"kiosk listener still running {took:.1f} s after the kiosk stopped"
    assert took < 2.0


@pytest.mark.slow  # the kiosk waits out the whole join bound (5 s) before it reports the thread
def test_a_listener_stuck_in_a_read_is_reported_when_the_kiosk_stops(tmp_path: Path, kiosk_settings: Settings,
                                                                     engine: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A named pipe as the microphone (`arecord > fifo`) whose writer stalls: the read under the listener never
    returns, so nothing can stop that thread; stopping the kiosk must say so instead of leaving it silently."""
    fifo = tmp_path / "mic.raw"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # the stalled writer: the pipe stays open and empty
    kiosk = Kiosk(kiosk_settings, engine, _voice(kiosk_settings, fifo), None, KioskOptions(speak=False))
    try:
        with caplog.at_level(logging.WARNING):
            took = asyncio.run(asyncio.wait_for(_listen_then_stop(kiosk), 30))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("kiosk-listen" in m and f"recognising speech from file:{fifo}" in m and "did not stop" in m
                   and "sources.py" in m for m in warnings), warnings
        assert took < 10.0  # the daemon still gets on with its shutdown
    finally:
        os.close(writer)  # end of input: the read returns and the thread ends
        for thread in _listeners():
            thread.join(10)
    assert not _listeners()
