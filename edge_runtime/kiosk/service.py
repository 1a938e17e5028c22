"""The kiosk's wiring (options + voice/OCR modules) and KioskService: the dialogue loop inside `clawd-edge serve`."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..engine.types import Engine
from ..errors import ClawdError, EngineBusy
from ..modules import stop_modules
from .options import KioskOptions, parse_options
from .screen import Screen
from .turnlog import TurnLog

if TYPE_CHECKING:
    from ..modules import Module
    from ..ocr.module import OcrModule
    from ..voice.module import VoiceModule
    from .loop import Kiosk, KioskInput

log = logging.getLogger(__name__)
RETRY_FIRST = 5.0
RETRY_MAX = 60.0
# KioskService.status values (/health's kiosk.status, the clawd_edge_kiosk_status metric's label).
STATUSES = ("starting", "running", "failed", "finished", "stopped")


def module_options(settings: Settings, name: str, **changes: Any) -> dict[str, Any]:
    """A module's (or, for "kiosk", the loop's) configured options with command-line overrides applied."""
    if name == "kiosk":
        options: dict[str, Any] = dict(settings.kiosk)
    else:
        configured = settings.modules.get(name)
        options = dict(configured.options) if configured is not None else {}
    options.update({k: v for k, v in changes.items() if v is not None})
    return options


@dataclass(frozen=True)
class KioskParts:
    """What a Kiosk runs on besides the engine. `owned`: modules built for the kiosk alone (the caller starts and
    stops them); modules the daemon already runs (its /v1/audio or /v1/ocr routes) are shared, not owned."""

    options: KioskOptions
    voice: VoiceModule | None
    ocr: OcrModule | None
    owned: tuple[Module, ...] = ()


def build_parts(settings: Settings, options: KioskOptions, *, need_voice: bool = True,
                voice_changes: Mapping[str, Any] | None = None, running: Sequence[Module] = ()) -> KioskParts:
    """Voice and OCR modules for a kiosk, validated now (ConfigError names the key) and loaded by start().

    A module in `running` (the daemon's enabled modules) is reused, so the daemon and its kiosk share one speech
    model and one camera; command-line `voice_changes` always build a module of their own.
    """
    from ..ocr.module import create as create_ocr
    from ..voice.module import create as create_voice

    shared = {module.name: module for module in running}
    owned: list[Module] = []
    voice: Any = None
    if need_voice:
        changes = {k: v for k, v in (voice_changes or {}).items() if v is not None}
        voice = None if changes else shared.get("voice")
        if voice is None:
            voice = create_voice(module_options(settings, "voice", **changes), settings)
            owned.append(voice)
    ocr: Any = shared.get("ocr")
    ocr_options = module_options(settings, "ocr")
    if ocr is None and (options.camera or ocr_options.get("camera")):
        ocr = create_ocr(ocr_options, settings)
        owned.append(ocr)
    return KioskParts(options, voice, ocr, tuple(owned))


def daemon_kiosk_options(settings: Settings, enabled: bool | None = None) -> KioskOptions:
    """The `kiosk:` section for `serve` (validated even when the kiosk is off); `enabled` is the --kiosk flag."""
    options = parse_options(module_options(settings, "kiosk"))
    return options if enabled is None else options.replace(enabled=enabled)


class KioskService:
    """The dialogue loop as a background task of the daemon, on the daemon's engine (one model, shared slots).

    A failure (no microphone, the speech model missing) never stops the HTTP API: it is logged as an error,
    reported by `snapshot()` (/health's `kiosk` field and the clawd_edge_kiosk_* metrics) and retried with
    backoff, since a USB microphone may be plugged in later. An input that ends (a `file:` input) is not
    restarted.
    """

    def __init__(self, settings: Settings, engine: Engine, parts: KioskParts, *,
                 notify: Callable[[str], object] | None = None, retry_first: float = RETRY_FIRST,
                 retry_max: float = RETRY_MAX) -> None:
        self.settings = settings
        self.engine = engine
        self.parts = parts
        self.notify = notify
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.status = "stopped"  # one of STATUSES
        self.reason: str | None = None
        self.failures = 0
        self._turns_before = 0  # turns of kiosk loops that already ended (restarts)
        self._kiosk: Kiosk | None = None
        self._task: asyncio.Task[None] | None = None
        self._started: list[Module] = []
        self._turn_log: TurnLog | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.screen = Screen()  # what /kiosk shows; it outlives restarts of the loop

    def snapshot(self) -> dict[str, Any]:
        """For /health and /metrics: status, the loop's state, turns answered, failures, the last error."""
        kiosk = self._kiosk
        return {"status": self.status, "state": kiosk.state.value if kiosk is not None else None,
                "turns": self._turns_before + (kiosk.turns if kiosk is not None else 0),
                "failures": self.failures, "reason": self.reason}

    def running_kiosk(self) -> Kiosk:
        """The loop now answering, for the screen's buttons; EngineBusy (503) while it is starting or failed."""
        kiosk = self._kiosk
        if kiosk is None or self.status != "running":
            why = f": {self.reason}" if self.reason else ""
            raise EngineBusy(f"the kiosk is not running (status {self.status}{why})")
        return kiosk

    def start(self) -> None:
        """Run the loop in the background (call once the engine is loaded and the daemon's modules started)."""
        if self._task is None:
            self.status = "starting"
            self._task = asyncio.ensure_future(self._supervise())

    async def stop(self) -> None:
        """Cancel the current turn, close the microphone, stop the kiosk's own modules; idempotent (the runner
        calls it at the signal, the app's lifespan again before the modules stop: the second waits for the first)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self.screen.close()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stop_modules(self._started, log)
        self._started = []
        if self._turn_log is not None:
            self._turn_log.close()
            self._turn_log = None
        if self.status != "stopped":
            log.info("kiosk stopped after %d turn(s)", self.snapshot()["turns"])
        self.status = "stopped"

    def _set(self, status: str, reason: str | None = None) -> None:
        self.status, self.reason = status, reason
        self.screen.status(status, reason)
        if self.notify is not None:
            self.notify(f"kiosk {status}" + (f": {reason}" if reason else ""))

    async def _supervise(self) -> None:
        delay = self.retry_first
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the loop is reported, never fatal to the HTTP API
                self.failures += 1
                reason = str(exc) or type(exc).__name__
                if loop.time() - began > self.retry_max:
                    delay = self.retry_first  # it ran fine for a while: a new problem, not the same one again
                self._set("failed", reason)
                # A ClawdError (no microphone, missing model) is the operator's to fix: one clear line.
                # Anything else is a bug: with its traceback.
                log.error("kiosk failed: %s (%s); the HTTP API keeps serving; retrying in %.0f s",
                          reason, type(exc).__name__, delay, exc_info=not isinstance(exc, ClawdError))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self._set("finished", "the speech input ended")
            log.warning("kiosk: the speech input ended (%s); the kiosk is not restarted",
                        self.parts.voice.options.input if self.parts.voice is not None else "no voice")
            return

    async def _run_once(self) -> None:
        from .loop import Kiosk

        self._set("starting")
        for module in self.parts.owned:
            if module not in self._started:
                await module.start()  # loads the speech model / checks Tesseract, in a worker thread
                self._started.append(module)
        if self._turn_log is None:
            self._turn_log = TurnLog(self.parts.options.log)

        def heard(item: KioskInput) -> None:
            log.info("kiosk turn: heard %r (%s)", item.text, item.source)

        if self._kiosk is not None:
            self._turns_before += self._kiosk.turns
        kiosk = Kiosk(self.settings, self.engine, self.parts.voice, self.parts.ocr, self.parts.options,
                      log_to=self._turn_log, on_input=heard, screen=self.screen)
        self._kiosk = kiosk
        kiosk.listen()
        self._set("running")
        log.info("kiosk listening on %s (model %s)", self.parts.voice.options.input if self.parts.voice else "-",
                 self.engine.status().model)
        await kiosk.run()
