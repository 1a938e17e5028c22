"""WyomingServer: the listener, its bounds (connections, shutdown) and what its sessions share."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..config import Settings
from ..engine.types import Engine
from ..errors import ConfigError
from .announce import Announcement
from .conversation import Conversations
from .info import Catalog, build_catalog, build_info
from .options import PREFIX, WyomingOptions
from .protocol import MAX_HEADER_BYTES, encode, error_event

if TYPE_CHECKING:
    from wyoming.event import Event

    from ..voice.module import VoiceModule

log = logging.getLogger(__name__)


class WyomingServer:
    """Serves Wyoming on `options.uri` with the engine and voice module it is given (the daemon's own: one LLM
    and one speech model in memory). `owns_voice`: start and stop the voice module with the server."""

    def __init__(self, settings: Settings, options: WyomingOptions, engine: Engine, voice: VoiceModule | None, *,
                 owns_voice: bool = False) -> None:
        self.settings = settings
        self.options = options
        self.engine = engine
        self.voice = voice
        self.owns_voice = owns_voice
        self.conversations = Conversations(settings, options)
        self.catalog = Catalog((), (), "")
        self.info: Event = build_info(self.catalog).event()
        self.tts_slot = asyncio.Semaphore(1)  # synthesis is CPU-bound and shares the cores with the LLM
        self.address: tuple[str, int] | str | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._announcement: Announcement | None = None
        self._voice_start: asyncio.Task[None] | None = None
        self._stopping = False
        self.sessions_total = 0  # connections served to their end (refused ones not counted)

    @property
    def connections(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        """Gather what describe reports (no model is loaded for it), then listen. Call before waiting for the LLM
        to load: describe is answered at once whatever the engine is doing."""
        self.catalog = await asyncio.to_thread(build_catalog, self.voice, self.engine.status().model)
        self.info = build_info(self.catalog).event()
        uri = urlparse(self.options.uri)
        try:
            if uri.scheme == "unix":
                Path(uri.path).unlink(missing_ok=True)
                self._listener = await asyncio.start_unix_server(self._accept, uri.path, limit=MAX_HEADER_BYTES)
                self.address = uri.path
            else:
                self._listener = await asyncio.start_server(self._accept, uri.hostname, uri.port,
                                                            limit=MAX_HEADER_BYTES, reuse_address=True)
                sock = self._listener.sockets[0]
                self.address = (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.options.uri}: {exc.strerror or exc}", key=PREFIX + "uri") \
                from None
        if self.owns_voice and self.voice is not None:
            self._voice_start = asyncio.ensure_future(self._start_voice(self.voice))
        if self.options.zeroconf:
            await self._announce()
        log.info("wyoming: serving on %s (%d speech model(s), %d voice(s), agent %s)", self.options.uri,
                 len(self.catalog.models), len(self.catalog.voices), self.catalog.agent)

    async def _start_voice(self, voice: VoiceModule) -> None:
        # In the background: a speech model preload takes seconds and must not delay describe.
        try:
            await voice.start()
        except Exception as exc:  # noqa: BLE001 - reported; describe and the LLM agent keep working
            log.error("wyoming: the voice module failed to start: %s", exc)

    async def _announce(self) -> None:
        from .announce import announce

        assert isinstance(self.address, tuple)  # parse_options allows zeroconf with a tcp:// uri only
        host = urlparse(self.options.uri).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            log.warning("wyoming: announcing a server that listens on %s only; other hosts cannot reach it", host)
        self._announcement = await announce(self.address[1], host, self.options.zeroconf_name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from .session import Session

        if len(self._sessions) >= self.options.max_connections:
            with contextlib.suppress(Exception):
                writer.write(encode(error_event(
                    f"too many connections ({self.options.max_connections}, wyoming.max_connections); retry",
                    "too-many-connections")))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)  # type: ignore[arg-type]
        try:
            await Session(self, reader, writer).run()
        finally:
            self._sessions.discard(task)  # type: ignore[arg-type]
            self.sessions_total += 1

    def halt(self) -> None:
        """Stop accepting and end every session now (their engine streams close, freeing the slots)."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self._sessions):
            task.cancel()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; give running requests up to `grace` seconds, then end them; withdraw the mDNS record.
        Idempotent; a second call ends what is still running at once."""
        grace, self._stopping = (0.0 if self._stopping else grace), True
        if self._listener is not None:
            self._listener.close()
        if self._sessions and grace > 0:
            await asyncio.wait(set(self._sessions), timeout=grace)
        self.halt()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
            if isinstance(self.address, str):
                with contextlib.suppress(OSError):
                    os.unlink(self.address)
        if self._announcement is not None:
            announcement, self._announcement = self._announcement, None
            with contextlib.suppress(Exception):
                await announcement.close()
        if self._voice_start is not None:
            self._voice_start.cancel()
            with contextlib.suppress(BaseException):
                await self._voice_start
            self._voice_start = None
            if self.voice is not None:
                await self.voice.stop()


def shared_voice(settings: Settings, running: Sequence[Any]) -> tuple[VoiceModule, bool]:
    """The voice module the daemon already runs (its /v1/audio routes, the kiosk's), so one speech model serves
    everyone; else one of its own built from `modules.voice` (validated now, loaded by start()). The flag says
    whether the server owns it."""
    for module in running:
        if module is not None and getattr(module, "name", None) == "voice":
            return module, False  # type: ignore[no-any-return]
    from ..voice.module import STT, TTS_ONLY, create

    configured = settings.modules.get("voice")
    # No microphone and no speaker: audio comes and goes over the network.
    return create(dict(configured.options) if configured else {}, settings, uses=frozenset({STT, TTS_ONLY})), True


def tcp_port(server: WyomingServer) -> int:
    """The bound TCP port (useful with port 0)."""
    assert isinstance(server.address, tuple)
    return server.address[1]

