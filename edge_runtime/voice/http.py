"""OpenAI-compatible audio endpoints: POST /v1/audio/transcriptions (WAV in) and /v1/audio/speech (WAV out)."""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at definition time, and
# fastapi is imported inside build_router() so that importing this package stays light.
import asyncio
import importlib.util
import threading
from typing import TYPE_CHECKING, Any, Optional

from ..errors import AudioError, DependencyMissing, EngineBusy, InvalidRequest, RegistryError
from ..uploads import read_limited
from .audio import Audio, decode_chunks, encode_wav, wav_body
from .stt import CHUNK_BYTES, transcribe
from .tts import ESPEAK, PIPER, TTS

if TYPE_CHECKING:
    from .module import VoiceModule

# Model names OpenAI clients send; they mean "this server's configured engine".
OPENAI_STT_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
OPENAI_TTS_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                           "shimmer", "verse"})
TTS_MODEL_NAMES = {"espeak": ESPEAK, "espeak-ng": ESPEAK, "piper": PIPER}
TRANSCRIPTION_FORMATS = ("json", "text")
SPEECH_FORMATS = ("wav", "pcm")
PCM_RATE = 24000  # OpenAI's `pcm` response format: raw 24 kHz mono S16LE
MAX_SPEECH_CHARS = 4096


def _primary(language: str) -> str:
    return language.replace("_", "-").split("-", 1)[0].lower()


def build_router(module: "VoiceModule") -> Any:
    """The APIRouter the daemon mounts while the voice module is enabled."""
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        # FastAPI needs it for File/Form fields and would otherwise fail with a less helpful RuntimeError.
        raise DependencyMissing("python-multipart (multipart uploads for /v1/audio/transcriptions)", extra="voice")
    from fastapi import APIRouter, File, Form, Request, UploadFile
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel

    from ..server.generation import CLIENT_CLOSED, ClientGone, unless_disconnected
    from ..server.middleware import record_of

    router = APIRouter(tags=["audio"])
    # Synthesis is CPU-bound and shares two cores with the LLM: one at a time. Recognition is bounded by the
    # module's limiter (modules.voice.max_concurrent_transcriptions), which the kiosk shares.
    tts_slot = asyncio.Semaphore(1)

    def stt_engine(model: str) -> tuple[Any, tuple[str, ...] | None]:
        """The engine a request names, and the grammar to use (the configured one only for the configured model)."""
        if model in OPENAI_STT_MODELS or model == module.options.stt_model:
            return module.stt(), module.grammar()
        if "/" in model or model.startswith((".", "~")):
            raise InvalidRequest("model: a model name is expected, not a path", param="model")
        try:
            # A request never starts a download: pull models with `clawd-edge models pull` first.
            return module.stt(model, pull=False), None
        except AudioError as exc:
            raise InvalidRequest(f"model: {exc}", param="model") from None

    def transcribe_upload(data: bytes, name: str, model: str, language: str | None, cancel: threading.Event) -> str:
        """Worker thread: check the WAV header, then decode and recognise chunk by chunk until done or cancelled."""
        try:
            fmt, body = wav_body(data, name)
        except AudioError as exc:
            raise InvalidRequest(str(exc), param="file") from None
        seconds = len(body) // fmt.frame_bytes / fmt.sample_rate
        limit = module.options.max_audio_seconds
        if seconds > limit:
            raise InvalidRequest(f"{name}: {seconds:.1f} s of audio is longer than the {limit:g} s limit "
                                 "(modules.voice.max_audio_seconds)", param="file")
        engine, grammar = stt_engine(model)
        if language and engine.language and _primary(language) != _primary(engine.language):
            raise InvalidRequest(f"language: {language!r} is not the language of speech model {engine.name} "
                                 f"({engine.language})", param="language")
        return transcribe(engine, decode_chunks(fmt, body, CHUNK_BYTES), grammar,
                          wrap=lambda recognizer: module.limiter.gated(recognizer, cancel))

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: Request,
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's dependency-declaration idiom
        model: str = Form(...),
        language: Optional[str] = Form(None),  # noqa: UP045 - evaluated by FastAPI at runtime on 3.10
        prompt: Optional[str] = Form(None),  # noqa: UP045 - accepted for compatibility, not used
        response_format: str = Form("json"),
        temperature: Optional[float] = Form(None),  # noqa: UP045 - accepted for compatibility, not used
    ) -> Response:
        """Speech to text. Multipart `file` (WAV, PCM 8-32 bit or float, 8-96 kHz) and `model`."""
        if response_format not in TRANSCRIPTION_FORMATS:
            raise InvalidRequest(f"response_format: {response_format!r} is not supported; use one of "
                                 + ", ".join(TRANSCRIPTION_FORMATS), param="response_format")
        # Before reading the upload: a request over modules.voice.max_concurrent_transcriptions is a 503 at once.
        ticket = module.limiter.admit()
        try:
            data = await read_limited(file, module.options.max_upload_bytes, "upload",
                                      "modules.voice.max_upload_bytes")
        except BaseException:
            ticket.release()
            raise
        work = module.limiter.start(ticket, lambda: transcribe_upload(data, file.filename or "file", model,
                                                                      language, ticket.cancel))
        try:
            text = await unless_disconnected(work, request.receive)
        except ClientGone:
            # Nobody will read the answer: stop recognising now rather than burn minutes of CPU for nothing.
            ticket.cancel.set()
            record_of(request.scope).error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)
        except asyncio.CancelledError:
            # uvicorn's shutdown bound (server.shutdown_timeout): the worker stops at its next chunk.
            ticket.cancel.set()
            raise
        except AudioError:
            if ticket.cancel.is_set():  # the module stopped under it
                raise EngineBusy("the transcription was cancelled because the server is shutting down") from None
            raise
        if response_format == "text":
            return PlainTextResponse(text + "\n")
        return JSONResponse({"text": text})

    class SpeechRequest(BaseModel):
        model: str
        input: str
        voice: Optional[str] = None  # noqa: UP045
        response_format: str = "wav"
        speed: float = 1.0
        instructions: Optional[str] = None  # noqa: UP045 - accepted for compatibility, not used

    def tts_for(request: SpeechRequest) -> TTS:
        if request.model in OPENAI_TTS_MODELS:
            kind = module.options.tts
        elif request.model in TTS_MODEL_NAMES:
            kind = TTS_MODEL_NAMES[request.model]
        else:
            raise RegistryError(f"unknown speech-synthesis model {request.model!r}; use one of "
                                + ", ".join(sorted(OPENAI_TTS_MODELS | set(TTS_MODEL_NAMES))))
        voice = None if request.voice is None or request.voice in OPENAI_VOICES else request.voice
        try:
            return module.tts_for(kind, voice, request.speed)
        except AudioError as exc:
            raise InvalidRequest(f"voice: {exc}", param="voice") from None

    @router.post("/v1/audio/speech")
    async def speech(request: SpeechRequest) -> Response:
        """Text to speech: WAV (mono 16-bit) or raw 24 kHz PCM."""
        if not request.input.strip():
            raise InvalidRequest("input: the text to speak is empty", param="input")
        if len(request.input) > MAX_SPEECH_CHARS:
            raise InvalidRequest(f"input: {len(request.input)} characters is over the {MAX_SPEECH_CHARS}-character "
                                 "limit", param="input")
        if request.response_format not in SPEECH_FORMATS:
            raise InvalidRequest(f"response_format: {request.response_format!r} is not supported; use one of "
                                 + ", ".join(SPEECH_FORMATS), param="response_format")
        if not 0.25 <= request.speed <= 4.0:
            raise InvalidRequest("speed: must be from 0.25 to 4.0", param="speed")
        tts = await asyncio.to_thread(tts_for, request)
        async with tts_slot:
            audio: Audio = await asyncio.to_thread(tts.synthesize, request.input)
        if request.response_format == "pcm":
            return Response(audio.at_rate(PCM_RATE).pcm, media_type="audio/pcm")
        return Response(encode_wav(audio), media_type="audio/wav")

    return router
