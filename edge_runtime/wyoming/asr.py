"""Speech to text for Wyoming: pick the model a `transcribe` asks for, recognise audio while it streams in."""
from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..voice.audio import WavDecoder, WavFormat
from ..voice.stt import SpeechToText, transcribe
from .info import Catalog, primary
from .protocol import ProtocolError

if TYPE_CHECKING:
    from ..voice.module import VoiceModule

# Audio formats the protocol can carry and the decoder converts (rate, sample width in bytes, channels).
MIN_RATE, MAX_RATE = 8000, 192000
WIDTHS = (1, 2, 3, 4)
MAX_CHANNELS = 8
# Converted audio waiting for the recogniser, in 16 kHz chunks; a client sending faster waits (backpressure)
# instead of the server buffering an unbounded stream.
QUEUE_CHUNKS = 100
_POLL = 0.05  # how often a recogniser waiting for audio looks at its cancel flag


@dataclass(frozen=True)
class SpeechModel:
    """The recogniser a stream uses and what to tell the client about it."""

    engine: SpeechToText
    grammar: tuple[str, ...] | None
    language: str | None


def choose_model(voice: VoiceModule, catalog: Catalog, name: str | None, language: str | None) -> SpeechModel:
    """Blocking (registry look-ups): a named model, else the configured one if it speaks `language`, else the
    first installed model that does. Nothing is ever downloaded for a request."""
    if not catalog.models:
        raise ProtocolError("no speech model is installed", "no-model")
    default = catalog.model(catalog.configured_model or "") or catalog.models[0]
    chosen = default
    if name:
        found = catalog.model(name)
        if found is None:
            raise ProtocolError(f"unknown speech model {name!r}; installed: "
                                + ", ".join(m.name for m in catalog.models), "unknown-model")
        chosen = found
    elif language and default.language and primary(language) != primary(default.language):
        match = next((m for m in catalog.models if m.language and primary(m.language) == primary(language)), None)
        if match is None:
            raise ProtocolError(f"no installed speech model understands language {language!r}",
                                "unsupported-language")
        chosen = match
    if chosen.name == catalog.configured_model:
        # The configured grammar belongs to the configured model only.
        return SpeechModel(voice.stt(pull=False), voice.grammar(), chosen.language)
    return SpeechModel(voice.stt(chosen.name, pull=False), None, chosen.language)


def check_format(rate: object, width: object, channels: object) -> WavFormat:
    """An audio-start's format as the decoder's input format; ProtocolError when it cannot be PCM we read."""
    def whole(value: object, low: int, high: int) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return value if ok else None  # type: ignore[return-value]

    checked = (whole(rate, MIN_RATE, MAX_RATE), whole(width, 1, len(WIDTHS)), whole(channels, 1, MAX_CHANNELS))
    if None in checked:
        raise ProtocolError(f"unsupported audio format rate={rate!r} width={width!r} channels={channels!r}; "
                            f"rate {MIN_RATE}-{MAX_RATE} Hz, width 1-4 bytes, 1-{MAX_CHANNELS} channels",
                            "bad-audio-format")
    hz, size, count = (int(v) for v in checked)  # type: ignore[arg-type]
    return WavFormat(hz, count, size * 8, False, 0, 0)


class Utterance:
    """One audio-start ... audio-stop stream: converted to 16 kHz mono as it arrives and recognised in a worker
    thread admitted by the voice module's limiter (shared with /v1/audio and the kiosk), so a CPU-bound
    recogniser never blocks the event loop and never takes more cores than configured."""

    def __init__(self, voice: VoiceModule, model: SpeechModel, fmt: WavFormat, max_seconds: float,
                 on_final: Callable[[str], None]) -> None:
        self.fmt = fmt
        self.model = model
        self.max_seconds = max_seconds
        self.seconds = 0.0
        self._decoder = WavDecoder(fmt)
        self._pending = b""  # bytes of a frame split across two chunks
        self._chunks: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._ticket = voice.limiter.admit()  # EngineBusy when recognition is at its limit
        cancel = self._ticket.cancel
        loop = asyncio.get_running_loop()

        def deliver(text: str) -> None:
            if not cancel.is_set():  # an aborted stream's last words are nobody's business
                on_final(text)

        def final(text: str) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is listening
                loop.call_soon_threadsafe(deliver, text)

        def chunks() -> Iterator[bytes]:
            while not cancel.is_set():
                try:
                    item = self._chunks.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if item is None:
                    return
                yield item

        grammar: Sequence[str] | None = model.grammar
        self._result = voice.limiter.start(self._ticket, lambda: transcribe(
            model.engine, chunks(), grammar, wrap=lambda r: voice.limiter.gated(r, cancel), on_final=final))
        # An aborted stream's result (AudioError "cancelled") is nobody's business: retrieve it so asyncio does
        # not log "exception was never retrieved".
        self._result.add_done_callback(lambda f: None if f.cancelled() else f.exception())

    async def _put(self, item: bytes | None) -> None:
        while True:
            if self._result.done():
                return  # the recogniser failed or was cancelled: the error comes from finish()
            try:
                self._chunks.put_nowait(item)
                return
            except queue.Full:
                await asyncio.sleep(_POLL)

    async def feed(self, pcm: bytes) -> None:
        """Client audio in the stream's format; ProtocolError once it is longer than `max_seconds`."""
        frame = self.fmt.frame_bytes
        self.seconds += len(pcm) / frame / self.fmt.sample_rate
        if self.seconds > self.max_seconds:
            raise ProtocolError(f"the audio is longer than the {self.max_seconds:g} s limit "
                                "(wyoming.max_audio_seconds)", "audio-too-long")
        data = self._pending + pcm
        usable = len(data) - len(data) % frame
        self._pending = data[usable:]
        if usable:
            converted = self._decoder.push(data[:usable])
            if converted:
                await self._put(converted)

    async def finish(self) -> str:
        """The whole transcript, once the recogniser has had all the audio."""
        tail = self._decoder.flush()
        if tail:
            await self._put(tail)
        await self._put(None)
        return await self._result

    def abort(self) -> None:
        """The client left or the stream was refused: the worker stops at its next chunk, the slot is freed."""
        self._ticket.cancel.set()
        with contextlib.suppress(queue.Full):
            self._chunks.put_nowait(None)
