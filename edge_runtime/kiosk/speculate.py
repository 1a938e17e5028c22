"""An answer started on a tentative transcript (a short pause), taken over by the turn when the final agrees."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future

from ..engine.types import ChatMessage, Chunk
from ..voice.audio import Audio
from ..voice.sentences import SentenceSplitter
from ..voice.tts import TTS

PRIMED_SENTENCES = 1  # the first sentence is what the visitor waits for; later ones are made while it plays


class PrimedTTS:
    """A TTS whose sentences can be synthesised ahead, in a thread; synthesize() of a primed sentence waits for
    that work instead of starting again. Not primed: the wrapped TTS as it is."""

    def __init__(self, tts: TTS) -> None:
        self.tts = tts
        self.name = tts.name
        self._lock = threading.Lock()
        self._primed: dict[str, Future[Audio]] = {}

    def prime(self, sentence: str) -> None:
        with self._lock:
            if sentence in self._primed:
                return
            future: Future[Audio] = Future()
            self._primed[sentence] = future

        def work() -> None:
            try:
                future.set_result(self.tts.synthesize(sentence))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the sentence
                future.set_exception(exc)

        threading.Thread(target=work, name="kiosk-prime-tts", daemon=True).start()

    def synthesize(self, text: str) -> Audio:
        with self._lock:
            future = self._primed.pop(text, None)
        return future.result() if future is not None else self.tts.synthesize(text)

    def discard(self) -> None:
        """Forget primed sentences (their threads finish on their own; results are dropped)."""
        with self._lock:
            self._primed.clear()


class Speculation:
    """Runs `stream` (the engine's answer to `messages`) into a buffer from the moment it is made, priming the
    TTS with its first sentence. take() hands the buffered and the remaining chunks to the turn; close() drops
    it (the engine slot is freed, and the prefix cache keeps the prompt it evaluated)."""

    def __init__(self, messages: tuple[ChatMessage, ...], stream: AsyncIterator[Chunk],
                 tts: PrimedTTS | None) -> None:
        self.messages = messages
        self.started = time.time()
        self._stream = stream
        self._tts = tts
        self._chunks: list[Chunk] = []
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        splitter = SentenceSplitter()
        primed = 0
        try:
            async for chunk in self._stream:
                self._chunks.append(chunk)
                self._changed.set()
                if self._tts is not None and primed < PRIMED_SENTENCES and chunk.text:
                    for sentence in splitter.feed(chunk.text)[:PRIMED_SENTENCES - primed]:
                        self._tts.prime(sentence)
                        primed += 1
            if self._tts is not None and primed < PRIMED_SENTENCES:
                for sentence in splitter.flush()[:PRIMED_SENTENCES - primed]:
                    self._tts.prime(sentence)
        except Exception as exc:  # noqa: BLE001 - the turn that takes this over raises it
            self._error = exc
        finally:
            self._done = True
            self._changed.set()

    async def take(self) -> AsyncIterator[Chunk]:
        """Every chunk of the answer, buffered ones first; closing this iterator closes the speculation."""
        index = 0
        try:
            while True:
                while index < len(self._chunks):
                    yield self._chunks[index]
                    index += 1
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return
                self._changed.clear()  # nothing ran since the checks above (one event loop, no await between)
                await self._changed.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            await closer()

    async def drop(self) -> None:
        """Never taken (the final transcript differs, or speech resumed): close, and forget the primed audio."""
        await self.close()
        if self._tts is not None:
            self._tts.discard()


class Speculator:
    """The kiosk's one answer-in-advance at a time: start() at a pause, drop() when speech goes on, claim() by the
    turn with the final transcript's messages."""

    def __init__(self, generate: Callable[[tuple[ChatMessage, ...]], AsyncIterator[Chunk]],
                 tts: PrimedTTS | None) -> None:
        self._generate = generate
        self._tts = tts
        self._current: Speculation | None = None
        self._dropping: set[asyncio.Future[None]] = set()  # drops in flight (a task must be referenced)

    def start(self, messages: tuple[ChatMessage, ...]) -> None:
        if self._current is not None and self._current.messages == messages:
            return
        self.drop()
        self._current = Speculation(messages, self._generate(messages), self._tts)

    def drop(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            task = asyncio.ensure_future(current.drop())
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)

    async def claim(self, messages: tuple[ChatMessage, ...]) -> tuple[Speculation | None, str | None]:
        """("taken" and the answer started for exactly `messages`, which the caller now owns), or "dropped" when one
        for other messages was dropped now (awaited, so the prefix cache holds its prompt), or nothing started."""
        current, self._current = self._current, None
        if current is None:
            return None, None
        if current.messages == messages:
            return current, "taken"
        await current.drop()
        return None, "dropped"

    async def close(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            await current.drop()
