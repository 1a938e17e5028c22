"""The engine worker's outbox: chunks merged per stream and posted to their event loops, one wake-up per step."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from .scheduler import Job
from .types import Chunk

log = logging.getLogger(__name__)


def _deliver(items: list[tuple[Job, Chunk | BaseException]]) -> None:
    for job, item in items:
        job.queue.put_nowait(item)


def _held_chunk(job: Job) -> Chunk:
    return Chunk(job.held, index=job.index, logprobs=tuple(job.held_logprobs))


class Outbox:
    """Used by the worker thread only. A stream's text goes out at once when it has been quiet for
    `stream_interval`, else it is merged into the next delivery: waking the event loop for every token steals CPU
    from llama.cpp's threads on a 2-core board."""

    def __init__(self, stream_interval: float) -> None:
        self.stream_interval = stream_interval
        self._items: list[tuple[Job, Chunk | BaseException]] = []
        self._holding: list[Job] = []

    def emit(self, job: Job, item: Chunk | BaseException) -> None:
        """Queue `item` for `job`'s consumer; a non-final chunk is held (merged) until flush() decides."""
        if isinstance(item, Chunk) and item.finish_reason is None:
            if not job.held and not job.held_logprobs:
                self._holding.append(job)
            job.held += item.text
            job.held_logprobs.extend(item.logprobs)
            return
        if job.held or job.held_logprobs:
            if isinstance(item, Chunk):
                item = dataclasses.replace(item, text=job.held + item.text,
                                           logprobs=(*job.held_logprobs, *item.logprobs))
            else:
                self._items.append((job, _held_chunk(job)))
            job.held = ""
            job.held_logprobs.clear()
        self._items.append((job, item))

    def flush(self) -> None:
        """Post this step's chunks (and held text that has waited `stream_interval`), one wake-up per event loop."""
        if self._holding:
            now = time.monotonic()
            still = []
            for job in self._holding:
                if not (job.held or job.held_logprobs) or job.cancelled:
                    continue
                if now - job.sent_at >= self.stream_interval:
                    self._items.append((job, _held_chunk(job)))
                    job.held = ""
                    job.held_logprobs.clear()
                    job.sent_at = now
                else:
                    still.append(job)
            self._holding = still
        if not self._items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Chunk | BaseException]]] = {}
        for job, item in self._items:
            by_loop.setdefault(job.loop, []).append((job, item))
        self._items = []
        for loop, items in by_loop.items():
            try:  # one wake-up per event loop per step, not one per token
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                log.debug("a consumer's event loop is closed; dropping %d chunk(s)", len(items))
