"""Bounds on a voice module's recognition work: uploads admitted at once, a fair CPU turn per chunk, cancellation."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import AudioError, EngineBusy
from .stt import Recognizer, Transcript

T = TypeVar("T")
KEY = "modules.voice.max_concurrent_transcriptions"
# How often a recogniser waiting for its turn looks at its cancel flag: cancellation latency while queued.
_POLL = 0.05


class Ticket:
    """One admitted transcription: its cancel flag and its worker thread; gives its place back once."""

    def __init__(self, limiter: RecognitionLimiter) -> None:
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self._limiter = limiter

    def release(self) -> None:
        self._limiter._release(self)


class GatedRecognizer:
    """A recogniser whose every chunk waits for a turn of the limiter and stops once `cancel` is set."""

    def __init__(self, inner: Recognizer, limiter: RecognitionLimiter, cancel: threading.Event | None) -> None:
        self.sample_rate = inner.sample_rate
        self._inner = inner
        self._limiter = limiter
        self._cancel = cancel

    def accept(self, chunk: bytes) -> Transcript | None:
        with self._limiter.turn(self._cancel):
            return self._inner.accept(chunk)

    def finish(self) -> Transcript | None:
        with self._limiter.turn(self._cancel):
            return self._inner.finish()

    def finalize(self) -> Transcript | None:
        with self._limiter.turn(self._cancel):
            return self._inner.finalize()

    def close(self) -> None:
        self._inner.close()


class RecognitionLimiter:
    """Owned by one VoiceModule, shared by its HTTP route and its listeners (the kiosk in the daemon).

    Two bounds, both `limit` wide. Uploads: at most `limit` transcriptions admitted at once; one more is refused
    at once (EngineBusy: 503 + Retry-After, which OpenAI clients honour when they retry) rather than queued,
    since every waiting upload would hold its bytes and a recogniser. CPU: recognisers take turns per chunk
    (~100 ms of audio, tens of ms of CPU), first come first served, at most `limit` at a time; so a live
    microphone is never starved by an upload, and recognition as a whole never takes more than `limit` cores
    from the LLM on a 2-core board. A cancel flag (client gone, shutdown) stops a recogniser at its next turn.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition()
        self._free = limit  # CPU turns not taken
        self._queue: deque[object] = deque()  # threads waiting for a turn, oldest first
        self._tickets: set[Ticket] = set()
        self._closed = False

    # --- uploads ----------------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A place for one transcription, or EngineBusy when `limit` are running or the module is stopping."""
        with self._cond:
            if self._closed:
                raise EngineBusy("speech recognition is stopping (the server is shutting down)")
            if len(self._tickets) >= self.limit:
                raise EngineBusy(f"speech recognition is busy: {self.limit} transcription(s) running ({KEY}); "
                                 "retry later")
            ticket = Ticket(self)
            self._tickets.add(ticket)
            return ticket

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            self._tickets.discard(ticket)

    def start(self, ticket: Ticket, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run `job` in a thread of its own; the future gets its result. The place is given back when the thread
        ends (not when the caller stops waiting), before the result is posted: a client that sends its next
        upload as soon as it has its answer finds the place free."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not future.done():  # done: the caller gave up (client gone, shutdown) and cancelled it
                outcome()

        def work() -> None:
            outcome: Callable[[], None]
            try:
                outcome = functools.partial(future.set_result, job())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine, which re-raises
                outcome = functools.partial(future.set_exception, exc)
            finally:
                ticket.release()
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown: nobody is waiting
                loop.call_soon_threadsafe(settle, outcome)

        # A thread per transcription, not the event loop's default executor: a task cancelled before the
        # executor ran it would never give its place back, and at exit asyncio joins that executor's threads.
        # A daemon thread, so the process can exit even if a recogniser's native call never returns.
        ticket.thread = threading.Thread(target=work, name="voice-transcribe", daemon=True)
        try:
            ticket.thread.start()
        except RuntimeError:  # no thread to be had (systemd's TasksMax): the place must not stay taken
            ticket.release()
            raise
        return future

    # --- CPU turns --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def turn(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold one of `limit` CPU turns (first come, first served); AudioError if `cancel` is set meanwhile."""
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or self._free == 0:
                    if cancel is not None and cancel.is_set():
                        raise AudioError("transcription cancelled")
                    self._cond.wait(_POLL)
            finally:
                self._queue.remove(me)
                self._cond.notify_all()  # the next in line may go (or look at its own cancel flag)
            if cancel is not None and cancel.is_set():
                raise AudioError("transcription cancelled")
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()

    def gated(self, recognizer: Recognizer, cancel: threading.Event | None = None) -> GatedRecognizer:
        return GatedRecognizer(recognizer, self, cancel)

    # --- module lifetime --------------------------------------------------------------------------
    def open(self) -> None:
        with self._cond:
            self._closed = False

    def halt(self) -> list[Ticket]:
        """Refuse new uploads and cancel the running ones (each stops at its next chunk); returns them."""
        with self._cond:
            self._closed = True
            tickets = list(self._tickets)
            for ticket in tickets:
                ticket.cancel.set()
            self._cond.notify_all()
        return tickets

    def close(self, timeout: float) -> None:
        """halt(), then wait up to `timeout` s for the cancelled transcriptions' threads."""
        deadline = time.monotonic() + timeout
        for ticket in self.halt():
            if ticket.thread is not None and ticket.thread is not threading.current_thread():
                ticket.thread.join(max(0.0, deadline - time.monotonic()))
