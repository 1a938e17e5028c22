"""Run the app under uvicorn in-process: bind, sd_notify READY/STOPPING, watchdog pings, graceful SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from edge_runtime.config import Settings
from edge_runtime.engine.types import Engine, EngineState
from edge_runtime.errors import ClawdError, ConfigError, EngineError
from edge_runtime.sdnotify import Notifier
from edge_runtime.server.connections import RateLimitedFilter, uvicorn_options

if TYPE_CHECKING:
    from edge_runtime.kiosk.service import KioskService

log = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STALL_AFTER = 60.0
CRASH_POLL = 0.5


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; a clear error (not uvicorn's sys.exit) when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc.strerror}", key="server.host") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", key="server.port") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Liveness:
    """Whether the engine still makes progress, from its public status alone.

    Dead: the worker crashed (`crashed()`, else state FAILED). Hung: slots are busy but none of the engine's
    progress counters moved for `stall_after` seconds (one decode step takes well under a second for our models).
    An engine may offer its own `alive()`; then that answers.
    """

    def __init__(self, engine: Engine, stall_after: float = STALL_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.stall_after = stall_after
        self.clock = clock
        self._progress: tuple[int, ...] = ()
        self._since = clock()

    def __call__(self) -> bool:
        probe = getattr(self.engine, "alive", None)
        try:
            if callable(probe):
                return bool(probe())
            s = self.engine.status()
        except Exception:
            log.exception("engine liveness check failed")
            return False
        crashed = getattr(self.engine, "crashed", None)
        # A failed *load* (say, a truncated model file) leaves the worker running and every request retries the
        # load, so it is not dead: a restart cannot mend the file and would only make /health unreachable.
        if (crashed() is not None) if callable(crashed) else s.state == EngineState.FAILED:
            return False
        progress = (s.prompt_tokens_evaluated_total, s.completion_tokens_total, s.requests_finished_total,
                    s.requests_cancelled_total, s.loads_total)
        now = self.clock()
        if progress != self._progress or s.slots_busy == 0 or s.state != EngineState.READY:
            self._progress, self._since = progress, now
            return True
        return now - self._since < self.stall_after


class DaemonServer(uvicorn.Server):
    """uvicorn.Server that reports STOPPING to systemd and exits 0 after a signal (uvicorn re-raises it)."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("received %s: stopping (in-flight requests get up to %ss)",
                     signal.Signals(sig).name, self.config.timeout_graceful_shutdown)
            self.notifier.stopping("shutting down")
        super().handle_exit(sig, frame)


async def _announce_ready(server: DaemonServer, notifier: Notifier, url: str, model: str) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.02)
    log.info("serving %s on %s", model, url)
    notifier.ready(f"serving {model} on {url}")


async def _watchdog(server: DaemonServer, notifier: Notifier, alive: Liveness, interval: float) -> None:
    # Only ping while the engine makes progress, so systemd restarts a hung engine (WatchdogSec).
    while not server.should_exit:
        if alive():
            notifier.watchdog()
        else:
            log.error("engine is not alive; withholding the watchdog ping so systemd restarts the daemon")
        await asyncio.sleep(interval)


async def _signalled(server: DaemonServer) -> None:
    """Return once the server has been told to stop (polled: uvicorn sets a flag, it offers no event)."""
    while not server.should_exit:
        await asyncio.sleep(0.05)


async def _exit_when_crashed(server: DaemonServer, engine: Engine, fatal: list[str], interval: float) -> None:
    # A crashed worker never serves again; exiting non-zero lets systemd (Restart=on-failure) start a fresh one,
    # even when no watchdog is configured.
    probe = getattr(engine, "crashed", None)
    if not callable(probe):
        return
    while not server.should_exit:
        reason = probe()
        if reason:
            log.error("%s; exiting so the service manager restarts the daemon", reason)
            fatal.append(str(reason))
            server.should_exit = True
            return
        await asyncio.sleep(interval)


async def _halt_before_the_bound(server: DaemonServer, engine: Engine, grace: float,
                                 modules: Sequence[Any] = ()) -> None:
    # uvicorn cancels requests still running at timeout_graceful_shutdown: a stream then just stops and a queued
    # request gets uvicorn's text/plain 500. Halting the engine a moment before lets every response end properly
    # (a final error event for a stream, a 503 JSON with Retry-After for a request that never started).
    # Modules with a halt() (voice: running transcriptions) are halted at the same moment, for the same reason.
    halts = [halt for halt in (getattr(x, "halt", None) for x in (engine, *modules)) if callable(halt)]
    if not halts:
        return
    await _signalled(server)
    # Two seconds (half the bound if shorter) leave a loaded board time to write every final event.
    await asyncio.sleep(max(0.0, grace - min(2.0, grace / 2)))
    log.info("shutdown bound near: ending the answers still running")
    for halt in halts:
        halt()


async def _stop_kiosk_on_exit(server: DaemonServer, kiosk: KioskService) -> None:
    # At the signal, not after the HTTP drain: a visitor must not start a new turn on a daemon that is stopping.
    # (The app's lifespan stops it too, so the order kiosk -> modules -> engine holds however serve() ends.)
    await _signalled(server)
    await kiosk.stop()


async def _stop_on_exit(server: DaemonServer, stop: Callable[[], Awaitable[None]]) -> None:
    await _signalled(server)
    await stop()


async def serve(settings: Settings, engine: Engine, app: Any, sock: socket.socket,
                notifier: Notifier | None = None, kiosk: KioskService | None = None,
                modules: Sequence[Any] = (), stops: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
    """Serve `app` on the bound `sock` until SIGTERM/SIGINT; then stop `kiosk`, drain, close the engine, return.
    Just before the drain bound the engine and any of `modules` with a `halt()` end the work still running.
    `stops` (other servers on the same engine, e.g. Wyoming) are called at the signal, and again (they must be
    idempotent) before the engine closes."""
    notifier = notifier or Notifier()

    async def quiet_at_shutdown(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running at the shutdown bound; that is the plan, not an error
            # worth a traceback (the access log already has the request, marked error=cancelled).
            if not server.should_exit:
                raise

    limits = settings.server
    config = uvicorn.Config(
        quiet_at_shutdown, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=limits.shutdown_timeout,  # type: ignore[arg-type]
        server_header=False,
        **uvicorn_options(limits.read_timeout, limits.keep_alive_timeout, limits.max_connections),
    )
    accept_errors = RateLimitedFilter()
    logging.getLogger("asyncio").addFilter(accept_errors)
    server = DaemonServer(config, notifier)
    url = url_of(sock)
    fatal: list[str] = []
    helpers = [asyncio.ensure_future(_announce_ready(server, notifier, url, engine.status().model)),
               asyncio.ensure_future(_exit_when_crashed(server, engine, fatal, CRASH_POLL)),
               asyncio.ensure_future(_halt_before_the_bound(server, engine, limits.shutdown_timeout, modules))]
    if notifier.watchdog_interval is not None:
        helpers.append(asyncio.ensure_future(
            _watchdog(server, notifier, Liveness(engine), notifier.watchdog_interval)))
    if kiosk is not None:
        helpers.append(asyncio.ensure_future(_stop_kiosk_on_exit(server, kiosk)))
    helpers += [asyncio.ensure_future(_stop_on_exit(server, stop)) for stop in stops]
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        # uvicorn exits the process when the app's startup (kiosk modules) fails; make that an error line.
        raise ClawdError(f"the HTTP server failed to start (exit status {exc.code}); see the log above") from None
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if kiosk is not None:
            await kiosk.stop()  # normally stopped already; never let a turn outlive the engine
        for stop in stops:
            await stop()  # likewise: no Wyoming answer outlives the engine
        notifier.status("closing the engine")
        await engine.close()
        sock.close()
        logging.getLogger("asyncio").removeFilter(accept_errors)
    if fatal:
        raise EngineError(f"{fatal[0]} (see the traceback above)")
    log.info("stopped")
