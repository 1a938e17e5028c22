"""Kiosk(settings, engine, voice, ocr): the idle → listening → thinking → speaking loop over shared components."""
from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Settings
from ..engine.types import ChatMessage, Chunk, Engine, GenerationRequest, SamplingParams
from ..errors import ClawdError, UsageError
from ..threads import ThreadFeed
from .audio import TimedPlayer, TimedSource
from .history import Conversation
from .options import KioskOptions
from .screen import Screen, frame_url
from .speculate import PrimedTTS, Speculator
from .turnlog import TurnLog, TurnRecord

if TYPE_CHECKING:
    from ..ocr.module import OcrModule
    from ..ocr.reader import OcrResult
    from ..voice.module import VoiceModule
    from ..voice.speaker import Speaker

log = logging.getLogger(__name__)
TALK_WINDOW = 8.0  # seconds the screen shows "listening" after push-to-talk when nobody speaks


class State(str, enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class KioskInput:
    """Something to answer: a transcript, a typed line or an HTTP call; `read` asks for the camera's text."""

    text: str
    source: str = "text"
    read: bool = False
    marks: Mapping[str, float] = field(default_factory=dict)


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class Kiosk:
    """One conversation at a kiosk. Components are passed in, so the daemon and the kiosk share one engine.

    `voice` may be None (typed text only, answers printed) and `ocr` may be None (no camera turns).
    """

    def __init__(self, settings: Settings, engine: Engine, voice: VoiceModule | None, ocr: OcrModule | None,
                 options: KioskOptions, *, log_to: TurnLog | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_state: Callable[[State], None] | None = None,
                 on_input: Callable[[KioskInput], None] | None = None, screen: Screen | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.voice = voice
        self.ocr = ocr
        self.options = options
        self.turn_log = log_to
        self.on_text = on_text
        self.on_state = on_state
        self.on_input = on_input
        self.screen = screen
        self.state = State.IDLE
        context = options.context_tokens or settings.max_sequence_length
        self.history = Conversation(options.system_prompt, max_turns=options.history_turns,
                                    budget=max(64, context - options.max_tokens))
        self.turns = 0
        self.speaker: Speaker | None = None
        self._player: TimedPlayer | None = None
        self._tts: PrimedTTS | None = None
        if voice is not None and options.speak:
            from ..voice.speaker import Speaker

            self._player = TimedPlayer(voice.options.output)
            self._tts = PrimedTTS(voice.tts())
            self.speaker = Speaker(self._tts, self._player)
        self._speculator = Speculator(lambda messages: self.engine.generate(self._request(messages)), self._tts)
        self._inputs: asyncio.Queue[KioskInput | BaseException | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: asyncio.Task[TurnRecord] | None = None
        self._speech_start: float | None = None
        self._feeds: list[ThreadFeed[KioskInput]] = []
        self._after_cancel = State.LISTENING  # where a cancelled turn leaves the kiosk (stop(): idle)

    # --- state ------------------------------------------------------------------------------------
    def _set_state(self, state: State, record: TurnRecord | None = None) -> None:
        if state is self.state:
            return
        self.state = state
        if record is not None:
            record.states.append((state.value, time.time()))
        if self.on_state is not None:
            self.on_state(state)
        if self.screen is not None:
            self.screen.state(state.value)

    # --- inputs -----------------------------------------------------------------------------------
    def submit(self, item: KioskInput | BaseException | None) -> None:
        """Queue an input (None = no more input); safe from any thread once run() has started."""
        loop = self._loop
        if loop is None:
            self._inputs.put_nowait(item)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                loop.call_soon_threadsafe(self._inputs.put_nowait, item)

    def listen(self, source_spec: str | None = None) -> None:
        """Start recognising speech from the voice module's input (or `source_spec`) in a thread; call it from the
        event loop that will run()."""
        if self.voice is None:
            raise UsageError("listening needs the voice module (modules.voice)")
        voice = self.voice
        source = TimedSource(voice.open_source(source_spec), threshold=self.options.vad_threshold,
                             realtime=self.options.realtime_input)

        def heard(cancel: threading.Event) -> Iterator[KioskInput]:
            for text in voice.listen(source, on_speech=self._heard_speech, cancel=cancel,  # type: ignore[arg-type]
                                     on_partial=self._heard_partial if self.screen is not None else None,
                                     on_tentative=self._heard_tentative if self.options.speculate else None):
                marks = {"transcript": time.time()}
                end = source.last_voiced()
                if end is not None:
                    marks["end_of_speech"] = end
                if self._speech_start is not None:
                    marks["speech_start"] = self._speech_start
                    self._speech_start = None
                yield KioskInput(text, "voice", marks=marks)

        feed = ThreadFeed("kiosk-listen", f"recognising speech from {source_spec or voice.options.input}", heard,
                          self.submit, stop=source.close)
        feed.start()
        self._feeds.append(feed)

    def _heard_speech(self) -> None:
        """Audio thread: someone started talking (or went on after a pause). Barge-in: stop the reply and drop
        the rest of the turn; an answer started at the pause is stale."""
        if self._speech_start is None:
            self._speech_start = time.time()
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._barge_in)

    def _heard_tentative(self, text: str) -> None:
        """Audio thread: the visitor paused; `text` is probably what they said. The answer starts now."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._speculate, text)

    def _speculate(self, text: str) -> None:
        busy = self._current is not None and not self._current.done()
        if busy or self._wants_read(KioskInput(text, "voice"))[0]:
            return  # a camera turn is not started ahead: the frame must be the one at the final transcript
        self._speculator.start(self.history.messages(text))

    def _heard_partial(self, text: str) -> None:
        """Audio thread: the recogniser's hypothesis changed; the screen shows it while the visitor speaks."""
        loop, screen = self._loop, self.screen
        if loop is not None and screen is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(screen.partial, text)

    def stop(self) -> None:
        """The screen's stop button: silence the reply and drop the rest of the turn; the kiosk goes idle."""
        current = self._current
        if current is not None and not current.done():
            log.info("stop: the visitor stopped the turn while the kiosk was %s", self.state.value)
            self._after_cancel = State.IDLE
            if self.speaker is not None:
                self.speaker.stop()
            current.cancel()

    def talk(self) -> None:
        """The screen's push-to-talk button: like speech starting, it stops the reply whatever `barge_in` says,
        and the kiosk shows it is listening (for TALK_WINDOW seconds if nobody speaks)."""
        current = self._current
        if current is not None and not current.done():
            if self.speaker is not None:
                self.speaker.stop()
            current.cancel()
        else:
            self._set_state(State.LISTENING)
        if self._loop is not None:
            self._loop.call_later(TALK_WINDOW, self._talk_expired, time.time())

    def _talk_expired(self, pressed: float) -> None:
        spoke = self._speech_start is not None and self._speech_start >= pressed
        idle = self._current is None or self._current.done()
        if self.state is State.LISTENING and idle and not spoke:
            self._set_state(State.IDLE)

    def _barge_in(self) -> None:
        self._speculator.drop()
        barge = self.voice is not None and self.voice.options.barge_in
        current = self._current
        if barge and current is not None and not current.done():
            log.info("barge-in: the visitor spoke while the kiosk was %s", self.state.value)
            if self.speaker is not None:
                self.speaker.stop()
            current.cancel()
        if current is None or current.done():
            self._set_state(State.LISTENING)

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self, *, max_turns: int | None = None) -> None:
        """Answer inputs one at a time until the input ends (None), `max_turns` are done, or cancelled."""
        self._loop = asyncio.get_running_loop()
        try:
            while max_turns is None or self.turns < max_turns:
                item = await self._inputs.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._current = asyncio.ensure_future(self.turn(item))
                await asyncio.wait([self._current])
                self._current = None
        finally:
            current, self._current = self._current, None
            if current is not None and not current.done():
                # run() itself was cancelled (daemon shutdown): the turn must not outlive it on the engine.
                if self.speaker is not None:
                    self.speaker.stop()
                current.cancel()
                await asyncio.wait([current])
            await self.close()

    async def close(self) -> None:
        """Stop listening and speaking. A listener thread that would not stop is logged and kept in `_feeds`."""
        await self._speculator.close()
        if self.speaker is not None:
            self.speaker.stop()
        stopped = await asyncio.gather(*(feed.close() for feed in self._feeds))
        self._feeds = [feed for feed, done in zip(self._feeds, stopped, strict=True) if not done]

    def _wants_read(self, item: KioskInput) -> tuple[bool, str]:
        """(read the camera?, the question that goes with it)."""
        words = _words(item.text)
        for trigger in self.options.read_triggers:
            padded = f" {words} "
            if f" {_words(trigger)} " in padded:
                rest = padded.replace(f" {_words(trigger)} ", " ", 1).strip()
                return True, rest or self.options.read_prompt
        return item.read, item.text.strip() or self.options.read_prompt

    async def turn(self, item: KioskInput) -> TurnRecord:
        """One exchange, logged whatever happens (answered, interrupted by barge-in, or failed)."""
        self.turns += 1
        record = TurnRecord(self.turns, item.source, user=item.text)
        for stage, at in item.marks.items():
            record.mark(stage, at)
        record.mark("input")
        if self.on_input is not None:
            self.on_input(item)
        self._set_state(State.THINKING, record)
        try:
            read, question = self._wants_read(item)
            if self.screen is not None:
                self.screen.turn(record.turn, item.source, item.text, read)
            prompt = question
            if read:
                prompt = await self._read_camera(record, question)
            await self._answer(record, prompt)
        except asyncio.CancelledError:
            record.interrupted = True
        except ClawdError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            log.error("turn %d failed: %s", record.turn, exc)
        finally:
            record.mark("done")
            # Interrupted means someone is talking (barge-in): the kiosk is listening to them now.
            self._set_state(self._after_cancel if record.interrupted else State.IDLE, record)
            self._after_cancel = State.LISTENING
            if self.screen is not None:
                self.screen.done({"turn": record.turn, "source": record.source, "user": record.user,
                                  "answer": record.answer, "interrupted": record.interrupted,
                                  "error": record.error})
            if self.turn_log is not None:
                self.turn_log.write(record)
        return record

    async def _read_camera(self, record: TurnRecord, question: str) -> str:
        if self.ocr is None:
            raise UsageError("reading needs the ocr module (modules.ocr) and a camera")
        record.mark("ocr_start")
        frame = await self.ocr.grab(self.options.camera)
        result = await self.ocr.read_image(frame)
        record.mark("ocr_done")
        if self.screen is not None:
            await self._show_frame(frame, result)
        record.ocr_text = result.text
        seen = " / ".join(line for line in result.text.splitlines() if line.strip())
        if not seen:
            return f"The camera shows no readable text. Tell the visitor that briefly. {question}"
        return f'The camera shows a sign that reads: "{seen}". {question}'

    async def _show_frame(self, frame: object, result: OcrResult) -> None:
        screen = self.screen
        if screen is None:
            return
        height, width = getattr(frame, "shape", (0, 0))[:2]
        image = await asyncio.to_thread(frame_url, frame)
        screen.frame(image, int(width), int(height), [word.to_dict() for word in result.words], result.text)

    def _request(self, messages: tuple[ChatMessage, ...]) -> GenerationRequest:
        sampling = SamplingParams(max_tokens=self.options.max_tokens, temperature=self.options.temperature,
                                  seed=self.options.seed)
        return GenerationRequest(sampling=sampling, messages=messages)

    async def _answer(self, record: TurnRecord, prompt: str) -> None:
        record.prompt = prompt
        messages = self.history.messages(prompt)
        deltas = self._deltas(record, messages)
        try:
            if self.speaker is not None and self._player is not None:
                def first_audio() -> None:
                    record.mark("first_audio")
                    loop = self._loop
                    if loop is not None:
                        loop.call_soon_threadsafe(self._set_state, State.SPEAKING, record)
                self._player.on_first_audio = first_audio
                completed = await self.speaker.say_stream(deltas)
                record.interrupted = record.interrupted or not completed
            else:
                async for _ in deltas:
                    pass
        finally:
            await deltas.aclose()  # frees the engine slot if the reply was cut short
        if not record.interrupted:
            self.history.add(prompt, record.answer)

    async def _stream(self, record: TurnRecord, messages: tuple[ChatMessage, ...]) -> AsyncIterator[Chunk]:
        """The answer started at the pause if it was for these very messages, else a new one."""
        speculation, record.speculation = await self._speculator.claim(messages)
        if speculation is not None:
            record.mark("speculation", speculation.started)
            record.mark("request")
            return speculation.take()
        record.mark("request")
        return self.engine.generate(self._request(messages))

    async def _deltas(self, record: TurnRecord, messages: tuple[ChatMessage, ...]) -> AsyncGenerator[str, None]:
        stream = await self._stream(record, messages)
        try:
            async for chunk in stream:
                if chunk.text:
                    record.mark("first_token")
                    record.answer += chunk.text
                    if self.on_text is not None:
                        self.on_text(chunk.text)
                    if self.screen is not None:
                        self.screen.delta(chunk.text)
                    yield chunk.text
                if chunk.usage is not None:
                    usage = chunk.usage
                    record.usage = {"prompt_tokens": usage.prompt_tokens,
                                    "completion_tokens": usage.completion_tokens,
                                    "cached_prompt_tokens": usage.cached_prompt_tokens}
                    self.history.calibrate(messages, usage.prompt_tokens)
                if chunk.finish_reason is not None:
                    record.mark("generated")
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()
