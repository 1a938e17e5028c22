"""ThreadFeed, the bridge from a worker thread to asyncio code: delivery order, cancellation, a thread that stays."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from edge_runtime.errors import AudioError
from edge_runtime.threads import ThreadFeed

Item = str | BaseException | None


async def _collect(got: list[Item], feed: ThreadFeed[str]) -> None:
    """Start `feed` (delivering into `got`) and wait for its end marker."""
    feed.start()
    while not got or got[-1] is not None:
        await asyncio.sleep(0.01)


def test_items_then_the_end_reach_the_event_loop_in_order() -> None:
    got: list[Item] = []
    loop_thread: list[threading.Thread] = []

    def deliver(item: Item) -> None:
        loop_thread.append(threading.current_thread())
        got.append(item)

    feed = ThreadFeed("t-items", "counting", lambda cancel: iter(["one", "two", "three"]), deliver)
    asyncio.run(_collect(got, feed))
    assert got == ["one", "two", "three", None]
    assert set(loop_thread) == {threading.main_thread()}  # delivered on the loop, not in the worker
    assert feed.thread is not None and feed.thread.name == "t-items"


def test_a_failure_is_delivered_before_the_end() -> None:
    got: list[Item] = []

    def produce(cancel: threading.Event) -> Iterator[str]:
        yield "heard"
        raise AudioError("the microphone went away")

    asyncio.run(_collect(got, ThreadFeed("t-fail", "failing", produce, got.append)))
    assert got[0] == "heard" and got[2] is None
    assert isinstance(got[1], AudioError) and str(got[1]) == "the microphone went away"


def test_close_cancels_a_producer_that_watches_its_flag(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Item] = []
    stopped: list[str] = []

    def produce(cancel: threading.Event) -> Iterator[str]:
        while not cancel.wait(0.01):
            yield "tick"
        raise AudioError("transcription cancelled")  # what a gated recogniser raises once cancelled

    async def scenario() -> tuple[bool, float]:
        feed = ThreadFeed("t-cancel", "ticking", produce, got.append, stop=lambda: stopped.append("stop"))
        feed.start()
        await asyncio.sleep(0.05)
        began = time.monotonic()
        done = await feed.close(timeout=5.0)
        await asyncio.sleep(0.05)  # the end marker the thread posted last
        return done, time.monotonic() - began

    with caplog.at_level(logging.WARNING):
        done, took = asyncio.run(scenario())
    assert done and took < 1.0
    assert stopped == ["stop"]
    assert not [item for item in got if isinstance(item, BaseException)]  # asked to stop: not a failure
    assert got[-1] is None
    assert not caplog.records


def test_a_producer_that_ignores_close_is_reported_not_silently_left(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def stuck_in_a_read() -> None:
        release.wait(30)  # stands for a read from a silent pipe: nothing cancel could interrupt

    def produce(cancel: threading.Event) -> Iterator[str]:
        stuck_in_a_read()
        yield "late"

    feed = ThreadFeed("t-stuck", "reading a silent pipe", produce, lambda item: None)

    async def scenario() -> bool:
        feed.start()
        await asyncio.sleep(0.05)
        return await feed.close(timeout=0.3)

    try:
        with caplog.at_level(logging.WARNING, logger="edge_runtime.threads"):
            done = asyncio.run(scenario())
        assert done is False
        assert feed.running  # still referenced by the feed, for whoever looks again
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "t-stuck" in message and "reading a silent pipe" in message and "0.3 s" in message
        assert "test_threads.py" in message and "stuck_in_a_read" in message  # where it is blocked
    finally:
        release.set()
        assert feed.thread is not None
        feed.thread.join(5)
    assert not feed.running
