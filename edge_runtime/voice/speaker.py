"""Spoken replies: sentence-level streaming (speak sentence 1 while the LLM writes sentence 2) and barge-in."""
from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterable, Iterator

from .audio import Audio
from .player import Player
from .sentences import SentenceSplitter
from .tts import TTS

_POLL = 0.05


class Speaker:
    """TTS + Player; `stop()` (from any thread, e.g. when the microphone hears speech) ends the reply."""

    def __init__(self, tts: TTS, player: Player) -> None:
        self.tts = tts
        self.player = player
        self._cancel = threading.Event()
        self._speaking = threading.Event()

    @property
    def speaking(self) -> bool:
        return self._speaking.is_set()

    def stop(self) -> None:
        """Barge-in: cut the current reply now and drop the sentences not yet spoken."""
        self._cancel.set()
        self.player.stop()

    def say(self, text: str) -> bool:
        """Speak `text` (blocking), synthesising sentence by sentence; False if stop() interrupted it."""
        cancel = self._begin()
        try:
            splitter = SentenceSplitter()
            sentences = [*splitter.feed(text), *splitter.flush()]
            clips = (self.tts.synthesize(s) for s in sentences if not cancel.is_set())
            return self.player.play(clips, cancel) and not cancel.is_set()
        finally:
            self._speaking.clear()

    async def say_stream(self, deltas: AsyncIterable[str]) -> bool:
        """Speak text as it arrives: each sentence is synthesised (in a thread) while the previous one plays,
        all through one output stream. Returns False if stop() interrupted it; the rest of `deltas` is then
        not consumed.
        """
        cancel = self._begin()
        clips: queue.Queue[Audio | None] = queue.Queue()

        async def produce() -> None:
            splitter = SentenceSplitter()
            try:
                async for delta in deltas:
                    for sentence in splitter.feed(delta):
                        if cancel.is_set():
                            return
                        clips.put(await asyncio.to_thread(self.tts.synthesize, sentence))
                for sentence in splitter.flush():
                    if not cancel.is_set():
                        clips.put(await asyncio.to_thread(self.tts.synthesize, sentence))
            finally:
                clips.put(None)

        def pending() -> Iterator[Audio]:
            while not cancel.is_set():
                try:
                    clip = clips.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if clip is None:
                    return
                yield clip

        producer = asyncio.create_task(produce())
        try:
            completed = await asyncio.to_thread(self.player.play, pending(), cancel)
        finally:
            self._speaking.clear()
            cancel.set()  # ends pending() and produce() if play() failed
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
            else:
                producer.result()  # a TTS failure surfaces here, not as an unretrieved task exception
        return completed

    def _begin(self) -> threading.Event:
        # A fresh event per reply: a stop() meant for the last reply never silences the next one.
        self._cancel = threading.Event()
        self._speaking.set()
        return self._cancel
