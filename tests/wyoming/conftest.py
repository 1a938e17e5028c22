"""Wyoming fixtures: the real server (SmolLM2, Vosk Korean, pocketsphinx, espeak-ng, Piper) on a loop of its own,
driven by the `wyoming` client library the way Home Assistant's integration drives it."""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

from edge_runtime.config import Settings
from edge_runtime.engine.types import EngineState
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options as voice_options
from edge_runtime.voice.vosk_stt import VoskEngine
from edge_runtime.wyoming.options import parse_options
from edge_runtime.wyoming.server import WyomingServer, tcp_port

from ..speech import KO_GRAMMAR, KO_PITCH, KO_RATE

T = TypeVar("T")
READ_TIMEOUT = 60.0
# Home Assistant's own timeout for describe (homeassistant/components/wyoming/data.py: _INFO_TIMEOUT).
HA_INFO_TIMEOUT = 1.0


@dataclass
class Running:
    """A WyomingServer on an event loop in a thread of its own (as Home Assistant is another process)."""

    server: WyomingServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    engine: Any
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return tcp_port(self.server)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coro` on the server's loop (to look at its state from the test)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient("127.0.0.1", self.port, connect_timeout=5.0, read_timeout=READ_TIMEOUT)


def start_server(settings: Settings, engine: Any, voice: VoiceModule | None, **options: Any) -> Running:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="wyoming-test-server", daemon=True)
    thread.start()
    wyoming_options = parse_options({"uri": "tcp://127.0.0.1:0", **options})

    async def build() -> WyomingServer:
        server = WyomingServer(settings, wyoming_options, engine, voice)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
    return Running(server, loop, thread, engine)


def stop_server(running: Running) -> None:
    running.call(running.server.stop())
    running.loop.call_soon_threadsafe(running.loop.stop)
    running.thread.join(10)


def wait_loaded(engine: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.status().state != EngineState.READY:
        assert engine.status().state != EngineState.FAILED, engine.status().reason
        assert time.monotonic() < deadline, "model did not load"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def wyoming_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(models_dir=tmp_path_factory.mktemp("models"), parallel=2, max_sequence_length=1024,
                    threads=2, keep_alive=math.inf)


@pytest.fixture(scope="module")
def engine(wyoming_settings: Settings, smollm2_path: Path) -> Iterator[Any]:
    """The real SmolLM2-135M Q4_1 on llama.cpp, two slots, loaded once per module."""
    from edge_runtime.engine import create_engine

    llama = create_engine(wyoming_settings, smollm2_path)
    wait_loaded(llama)
    yield llama
    asyncio.run(llama.close())


@pytest.fixture(scope="module")
def voice(wyoming_settings: Settings, ko_engine: VoskEngine) -> VoiceModule:
    """Korean Vosk with the kiosk grammar (configured), espeak-ng Korean voice at the measured rate and pitch."""
    options = voice_options({"language": "ko", "grammar": list(KO_GRAMMAR), "voice": "ko", "rate": KO_RATE,
                             "pitch": KO_PITCH, "input": "-"})
    return VoiceModule(options, wyoming_settings, stt=ko_engine)


@pytest.fixture(scope="module")
def running(wyoming_settings: Settings, engine: Any, voice: VoiceModule) -> Iterator[Running]:
    server = start_server(wyoming_settings, engine, voice, max_connections=16, max_audio_seconds=20,
                          max_text_chars=2000, max_event_bytes=256 * 1024, max_conversations=3,
                          max_tokens=24)
    yield server
    stop_server(server)


async def exchange(client: AsyncTcpClient, *events: Event, until: tuple[str, ...]) -> list[Event]:
    """Write `events`, then read until an event of a type in `until` (included) or the connection closes."""
    for event in events:
        await client.write_event(event)
    return await read_until(client, until)


async def read_until(client: AsyncTcpClient, until: tuple[str, ...]) -> list[Event]:
    received: list[Event] = []
    while True:
        event = await client.read_event()
        if event is None:
            return received
        received.append(event)
        if event.type in until:
            return received


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]
