"""One client connection: reads events with bounds and answers describe, ASR, TTS and conversation requests."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.ping import Pong
from wyoming.tts import SynthesizeStopped

from ..errors import ClawdError
from .asr import Utterance, check_format, choose_model
from .conversation import answer
from .info import ASR_PROGRAM, HANDLE_PROGRAM, TTS_PROGRAM
from .protocol import ProtocolError, code_of, encode, error_event, read_event
from .tts import Speech, choose_voice

if TYPE_CHECKING:
    from .server import WyomingServer

log = logging.getLogger(__name__)
PROGRAMS = frozenset({ASR_PROGRAM, TTS_PROGRAM, HANDLE_PROGRAM})
AUDIO_IN = frozenset({"audio-start", "audio-chunk"})
SPEECH_OUT = frozenset({"synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop"})
OUT_OF_ORDER = frozenset({"audio-not-started", "synthesis-not-started"})


def _text(event: Event, key: str = "text") -> str:
    value = event.data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{event.type}: `{key}` must be a string", "bad-event")
    return value


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class Session:
    """The state of one connection. Requests are answered in order; a conversation turn runs as a task so that a
    client that leaves is noticed at once and its engine stream closed (freeing the slot)."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.transcribe: dict[str, Any] = {}
        self.utterance: Utterance | None = None
        self.streamed = False  # transcript-start sent for the current utterance
        # An utterance refused after its audio-start (busy, unknown model, too long): the error is sent at once,
        # the rest of its audio is read and dropped, and the connection closes at its audio-stop. Home Assistant
        # writes all the audio before it reads, and only a closed connection ends its wait for a transcript.
        self.refused = False
        self.closing = False
        self.speech: Speech | None = None  # a synthesize-start stream
        self.job: asyncio.Task[None] | None = None

    # --- writing ----------------------------------------------------------------------------------
    def send_now(self, event: Event) -> None:
        """Write without waiting (callbacks from the recogniser thread); the transport buffers it in order."""
        if not self.writer.is_closing():
            self.writer.write(encode(event))

    async def send(self, event: Event) -> None:
        """Write and wait until the client takes it; a client that stops reading for idle_timeout has gone (its
        answer would otherwise hold an engine slot for as long as it pleases)."""
        if self.writer.is_closing():
            raise ConnectionResetError("the client has gone")
        self.writer.write(encode(event))
        try:
            await asyncio.wait_for(self.writer.drain(), self.server.options.idle_timeout)
        except TimeoutError:
            raise ConnectionResetError("the client stopped reading") from None

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        options = self.server.options
        try:
            while True:
                read = asyncio.ensure_future(read_event(self.reader, options.max_event_bytes))
                try:
                    while not (await asyncio.wait({read}, timeout=options.idle_timeout))[0]:
                        if self.job is None or self.job.done():  # waiting for our own answer is not idling
                            log.debug("wyoming: closing a connection idle for %.0f s", options.idle_timeout)
                            return
                finally:
                    read.cancel()
                try:
                    event = read.result()
                except ProtocolError as exc:
                    await self._refuse(exc)
                    if exc.fatal:
                        return
                    continue
                if event is None:
                    return
                if not await self._dispatch(event):
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            log.debug("wyoming: the client left")
        finally:
            await self.close()

    async def _dispatch(self, event: Event) -> bool:
        """Answer one event; False closes the connection."""
        try:
            await self.handle(event)
        except (ProtocolError, ClawdError) as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc), code_of(exc))
            if error.code in OUT_OF_ORDER:
                pass  # nothing was started, so nothing waits for an answer: the connection stays usable
            elif event.type in AUDIO_IN:
                self.refused = True  # the connection closes at this utterance's audio-stop
            elif event.type in SPEECH_OUT or isinstance(exc, ClawdError):
                # Home Assistant waits for audio-stop or synthesize-stopped and skips error events: only a closed
                # connection ends that wait.
                error.fatal = True
            await self._refuse(error)
            return not error.fatal
        except (ConnectionError, OSError):
            raise
        except Exception as exc:  # a bug: one connection fails, the server keeps serving
            log.exception("wyoming: %s failed", event.type)
            await self._refuse(ProtocolError(f"internal error: {type(exc).__name__}", "internal-error", fatal=True))
            return False
        return not self.closing

    async def _refuse(self, error: ProtocolError) -> None:
        log.info("wyoming: %s (%s)", error, error.code)
        if self.utterance is not None:
            self.utterance.abort()
            self.utterance = None
        self.speech = None
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(error_event(str(error), error.code))

    async def close(self) -> None:
        if self.utterance is not None:
            self.utterance.abort()
            self.utterance = None
        job, self.job = self.job, None
        if job is not None and not job.done():
            job.cancel()  # closes the engine stream: the slot is free before this connection is forgotten
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        self.writer.close()
        try:
            # The transport sends what is buffered first; a client that reads nothing would make that wait forever.
            await asyncio.wait_for(self.writer.wait_closed(), self.server.options.idle_timeout)
        except TimeoutError:
            self.writer.transport.abort()
        except Exception:  # noqa: BLE001, S110 - the connection is gone however it ended
            pass

    # --- events -----------------------------------------------------------------------------------
    async def handle(self, event: Event) -> None:
        kind = event.type
        if self.job is not None and not self.job.done() and kind not in ("describe", "ping"):
            await asyncio.shield(self.job)  # one request at a time: finish the answer being written first
        if kind == "describe":
            await self.send(self.server.info)
        elif kind == "ping":
            await self.send(Pong(text=_optional_str(event.data.get("text"))).event())
        elif kind == "select-program":
            name = event.data.get("name")
            if name not in PROGRAMS:
                raise ProtocolError(f"unknown program {name!r}; this server has " + ", ".join(sorted(PROGRAMS)),
                                    "unknown-program")
        elif kind == "transcribe":
            self.transcribe = dict(event.data)
        elif kind == "audio-start":
            await self._audio_start(event)
        elif kind == "audio-chunk":
            await self._audio_chunk(event)
        elif kind == "audio-stop":
            await self._audio_stop()
        elif kind == "transcript":
            self._converse(event)
        elif kind == "synthesize":
            if self.speech is None:  # inside a stream it is the whole text again, sent for old servers: skip it
                speech = await self._speech(event.data.get("voice"))
                await speech.add(_text(event))
                await speech.finish()
        elif kind == "synthesize-start":
            self.speech = await self._speech(event.data.get("voice"))
        elif kind == "synthesize-chunk":
            if self.speech is None:
                raise ProtocolError("synthesize-chunk before synthesize-start", "synthesis-not-started")
            await self.speech.add(_text(event))
        elif kind == "synthesize-stop":
            if self.speech is None:
                raise ProtocolError("synthesize-stop before synthesize-start", "synthesis-not-started")
            speech, self.speech = self.speech, None
            await speech.finish()
            await self.send(SynthesizeStopped().event())
        else:
            raise ProtocolError(f"unknown or unsupported event type {kind!r}", "unknown-event")

    # --- speech to text ---------------------------------------------------------------------------
    async def _audio_start(self, event: Event) -> None:
        self.refused = False
        if self.utterance is not None:
            self.utterance.abort()
            self.utterance = None
        server = self.server
        if server.voice is None:
            raise ProtocolError("speech recognition is not available (no voice module)", "no-model")
        fmt = check_format(event.data.get("rate"), event.data.get("width"), event.data.get("channels"))
        request, self.transcribe = self.transcribe, {}
        model = await asyncio.to_thread(choose_model, server.voice, server.catalog,
                                        _optional_str(request.get("name")), _optional_str(request.get("language")))
        self.streamed = False
        language = model.language or _optional_str(request.get("language"))

        def final(text: str) -> None:
            # Transcript chunks append: after the first, each starts with the space that joins it to the last.
            if not self.streamed:
                self.streamed = True
                self.send_now(TranscriptStart(language=language).event())
                self.send_now(TranscriptChunk(text=text).event())
            else:
                self.send_now(TranscriptChunk(text=" " + text).event())

        self.utterance = Utterance(server.voice, model, fmt, server.options.max_audio_seconds, final)

    async def _audio_chunk(self, event: Event) -> None:
        utterance = self.utterance
        if utterance is None and self.refused:
            return
        if utterance is None:
            raise ProtocolError("audio-chunk before audio-start", "audio-not-started")
        try:
            chunk = AudioChunk.from_event(event)
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"audio-chunk without {exc}", "bad-event") from None
        fmt = utterance.fmt
        if (chunk.rate, chunk.width, chunk.channels) != (fmt.sample_rate, fmt.bits // 8, fmt.channels):
            raise ProtocolError("audio-chunk format differs from its audio-start", "bad-audio-format")
        await utterance.feed(chunk.audio)

    async def _audio_stop(self) -> None:
        utterance, self.utterance = self.utterance, None
        if utterance is None and self.refused:
            self.refused, self.closing = False, True
            return
        if utterance is None:
            raise ProtocolError("audio-stop before audio-start", "audio-not-started")
        try:
            text = await utterance.finish()
        except BaseException:
            utterance.abort()
            raise
        language = utterance.model.language
        if not self.streamed:
            self.send_now(TranscriptStart(language=language).event())
        await self.send(Transcript(text=text, language=language).event())
        await self.send(TranscriptStop().event())

    # --- text to speech ---------------------------------------------------------------------------
    async def _speech(self, raw_voice: object) -> Speech:
        server = self.server
        if server.voice is None:
            raise ProtocolError("speech synthesis is not available (no voice module)", "no-voice")
        voice = _mapping(raw_voice)
        tts = await asyncio.to_thread(choose_voice, server.voice, server.catalog, _optional_str(voice.get("name")),
                                      _optional_str(voice.get("language")), _optional_str(voice.get("speaker")))
        return Speech(tts, self.send, server.tts_slot, server.options.max_text_chars)

    # --- conversation -----------------------------------------------------------------------------
    def _converse(self, event: Event) -> None:
        text = _text(event).strip()
        limit = self.server.options.max_text_chars
        if len(text) > limit:
            raise ProtocolError(f"the transcript is longer than {limit} characters (wyoming.max_text_chars)",
                                "text-too-long")
        context = _mapping(event.data.get("context"))
        self.job = asyncio.ensure_future(self._answer(text, context))
        # A client that left makes the job's writes fail; that is the end of it, not an error to report.
        self.job.add_done_callback(lambda job: None if job.cancelled() else job.exception())

    async def _answer(self, text: str, context: dict[str, Any]) -> None:
        server = self.server
        raw_id = context.get("conversation_id")
        conversation_id = str(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else None
        reply_context = {"conversation_id": conversation_id} if conversation_id else None
        if not text:
            await self.send(NotHandled(text="There was nothing to answer.", context=reply_context).event())
            return
        thread = server.conversations.get(conversation_id)
        reply = ""
        started = False
        try:
            async for delta in answer(server.engine, thread, text, server.conversations.sampling):
                if not started:
                    started = True
                    await self.send(HandledStart(context=reply_context).event())
                reply += delta
                await self.send(HandledChunk(text=delta).event())
        except ClawdError as exc:
            # Busy, shutting down, a failed model, a prompt too long: Home Assistant shows the reason.
            log.info("wyoming: not handled: %s", exc)
            await self.send(NotHandled(text=f"{exc}", context=reply_context).event())
            return
        if not started:
            await self.send(HandledStart(context=reply_context).event())
        await self.send(Handled(text=reply.strip(), context=reply_context).event())
        await self.send(HandledStop().event())
