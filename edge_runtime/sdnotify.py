"""systemd's sd_notify protocol in pure Python: one datagram per state change on $NOTIFY_SOCKET."""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd (no NOTIFY_SOCKET).

    The address is read once, at construction, so tests can point it at their own socket through `env`.
    Sending never raises: a daemon must not die because the supervisor went away.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _address(env.get(ENV_SOCKET, ""))
        self._watchdog_usec = _watchdog_usec(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3) advises), or None."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send "KEY=value" lines as one datagram; True when it was delivered."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block: a datagram to a receiver whose queue is full (net.unix.max_dgram_qlen) would
                # otherwise stall the caller -- the daemon's event loop -- until the supervisor reads.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            # Once: a watchdog ping every few seconds must not flood the journal.
            (log.debug if self._warned else log.warning)("sd_notify to %r failed: %s", self._address, exc)
            self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


def _address(raw: str) -> str | bytes | None:
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no filesystem path.
        return b"\0" + raw[1:].encode("utf-8")
    if raw.startswith("/"):
        return raw
    # sd_notify(3) also accepts vsock:CID:PORT; a VM guest feature we do not need on a board.
    log.warning("ignoring unsupported %s=%r (only unix socket paths and @abstract names)", ENV_SOCKET, raw)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get(ENV_WATCHDOG_USEC, "")
    if not raw:
        return None
    pid = env.get(ENV_WATCHDOG_PID, "")
    # WATCHDOG_PID names the process systemd expects pings from; a child that inherited the env must not ping.
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring malformed %s=%r", ENV_WATCHDOG_USEC, raw)
        return None
    return usec if usec > 0 else None
