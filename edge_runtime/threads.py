"""ThreadFeed: the one bridge from a blocking worker thread to asyncio code, and a close that reports a stuck thread."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long close() waits for the producer to notice `cancel`: a cancellable producer needs a fraction of a second
# (one audio chunk, one poll), so this only bounds one stuck in a call that cannot be interrupted.
JOIN_TIMEOUT = 5.0


def _where(thread: threading.Thread, depth: int = 3) -> str:
    """The innermost Python lines `thread` is running, innermost first: 'sources.py:195 in _read < ...'.

    Several lines, because the innermost is often the standard library (threading.py in wait) and the caller
    above it says what is waiting.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame, limit=depth)
    return " < ".join(f"{Path(entry.filename).name}:{entry.lineno} in {entry.name}" for entry in reversed(stack))


class ThreadFeed(Generic[T]):
    """Runs `produce(cancel)` in a daemon thread named `name`; each item it yields, then its failure if it fails,
    then None (the end) are handed to `deliver` on the event loop that called start().

    close() sets `cancel` and calls `stop` (e.g. closing the audio source the producer reads), so the producer
    ends, then waits for the thread. A failure the producer raises because it was cancelled is not delivered.
    """

    def __init__(self, name: str, doing: str, produce: Callable[[threading.Event], Iterable[T]],
                 deliver: Callable[[T | BaseException | None], None], *,
                 stop: Callable[[], None] | None = None) -> None:
        self.name = name
        self.doing = doing  # what the thread is for, in the warning about a thread that would not stop
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self._produce = produce
        self._deliver = deliver
        self._stop = stop

    def start(self) -> None:
        """Start the thread; call from the event loop that is to receive the items."""
        loop = asyncio.get_running_loop()

        def post(item: T | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown: nobody is waiting
                loop.call_soon_threadsafe(self._deliver, item)

        def run() -> None:
            try:
                for item in self._produce(self.cancel):
                    post(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, whose consumer re-raises it
                if not self.cancel.is_set():
                    post(exc)
                else:
                    log.debug("%s ended after it was cancelled: %s", self.name, exc)
            finally:
                post(None)

        self.thread = threading.Thread(target=run, name=self.name, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    async def close(self, timeout: float = JOIN_TIMEOUT) -> bool:
        """Cancel the producer and wait up to `timeout` s for its thread; False (and a warning) if it is still
        running then. Such a thread is blocked where cancelling cannot reach (a read from a silent pipe, a native
        call); it is a daemon thread, so it cannot keep the process from exiting, and this feed keeps it in
        `thread` for whoever wants to look again."""
        self.cancel.set()
        if self._stop is not None:
            self._stop()
        thread = self.thread
        if thread is None:
            return True
        await asyncio.to_thread(thread.join, timeout)
        if not thread.is_alive():
            return True
        log.warning("thread %s (%s) did not stop within %.1f s of being cancelled; it is still running at %s "
                    "and is left behind (a daemon thread: the process can still exit)",
                    self.name, self.doing, timeout, _where(thread))
        return False
