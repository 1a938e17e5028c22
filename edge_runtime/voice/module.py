"""The `voice` kiosk module: builds and shares the recogniser, TTS, player and audio sources from its options."""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import AudioError, ConfigError, DependencyMissing, RegistryError
from ..threads import ThreadFeed
from .limits import RecognitionLimiter
from .options import PREFIX, VoiceOptions, parse_options
from .player import Player
from .sources import AudioSource, open_source
from .speaker import Speaker
from .stt import Recognizer, SpeechToText, WakeGate, finals, load_grammar
from .stt_models import SttModel, create_engine, default_stt_model, identify, resolve_stt_model
from .tts import PIPER, TTS, EspeakTTS, PiperTTS, create_tts
from .vad import SileroVad, VadRecognizer, VadSettings, resolve_vad_model
from .wakeword import WakeWordDetector, WakeWordRecognizer

log = logging.getLogger(__name__)
_CANCEL_TIMEOUT = 2.0  # a cancelled transcription stops within one chunk (tens of ms); this bounds a stuck one


class VoiceModule:
    """Ears and mouth of the kiosk. Engines are created on first use and shared (one model load each)."""

    name = "voice"

    def __init__(self, options: VoiceOptions, settings: Settings, *, stt: SpeechToText | None = None,
                 tts: TTS | None = None) -> None:
        """`stt` / `tts` replace the configured engines (an already-loaded model shared with other code)."""
        self.options = options
        self.settings = settings
        self._engines: dict[str, SpeechToText] = {"": stt} if stt is not None else {}
        self._tts: TTS | None = tts
        self._vad_model: Path | None = None
        self._other_tts: dict[str, TTS] = {}  # engines other than the configured one, built on first request
        self._speaker: Speaker | None = None
        self._sources: set[AudioSource] = set()
        self._lock = threading.Lock()
        # Shared by the HTTP route and listen() (the kiosk): one bound on recognition for the whole module.
        self.limiter = RecognitionLimiter(options.max_concurrent_transcriptions)

    # --- speech to text -------------------------------------------------------------------------
    def stt_model(self, name: str | None = None, *, pull: bool = True) -> SttModel:
        """The configured (or named) speech model, resolved through the registry."""
        configured = name is None
        name = name or self.options.stt_model or default_stt_model(self.settings, self.options.language,
                                                                   self.options.stt)
        model = resolve_stt_model(self.settings, name, pull=pull)
        if configured and self.options.stt not in ("auto", model.engine):
            raise ConfigError(f"{model.name} is a {model.engine} model but modules.voice.stt is {self.options.stt}",
                              key=PREFIX + "stt_model")
        return model

    def stt(self, name: str | None = None, *, pull: bool = True) -> SpeechToText:
        """The engine for the configured (or named) model; created once, its model loaded once.

        `pull=False` refuses to download a registry model that is not local yet (HTTP requests use it).
        """
        with self._lock:
            engine = self._engines.get(name or "")
        if engine is not None:
            return engine
        model = self.stt_model(name, pull=pull)
        with self._lock:
            # Two names (alias, path) for one model share one engine.
            key = f"{model.engine}:{model.path or model.name}"
            engine = self._engines.get(key) or create_engine(model, endpoint_window=self.options.endpoint_window)
            self._engines[key] = self._engines[name or ""] = engine
            return engine

    def grammar(self) -> tuple[str, ...] | None:
        return load_grammar(self.options.grammar, where=PREFIX + "grammar")

    def vad_model(self) -> Path | None:
        """The Silero model file when `vad: silero` (resolved once; pulled if missing), else None."""
        if self.options.vad != "silero":
            return None
        with self._lock:
            if self._vad_model is not None:
                return self._vad_model
        path = resolve_vad_model(self.settings)
        with self._lock:
            self._vad_model = path
        return path

    def live_recognizer(self, grammar: Sequence[str] | None = None) -> Recognizer:
        """A recogniser for a live stream: behind the Silero VAD endpointer unless `vad: recognizer`."""
        engine = self.stt()
        model = self.vad_model()
        recognizer: Recognizer
        restart = None
        if model is None:
            recognizer = engine.recognizer(grammar)
        else:
            settings = VadSettings(threshold=self.options.vad_threshold, silence=self.options.endpoint_window,
                                   tentative=self.options.tentative_window)
            vad = VadRecognizer(engine.recognizer(grammar, endpointing=False), SileroVad(model), settings)
            recognizer, restart = vad, vad.restart
        if self.options.wake_word is None:
            return recognizer
        return WakeWordRecognizer(recognizer, WakeWordDetector(self.options.wake_word), restart=restart,
                                  on_wake=lambda: log.info("wake word heard: listening"))

    def wake_gate(self) -> WakeGate | None:
        return WakeGate(self.options.wake_phrase) if self.options.wake_phrase else None

    # --- audio in -------------------------------------------------------------------------------
    def open_source(self, spec: str | None = None) -> AudioSource:
        source = open_source(spec or self.options.input, chunk_ms=self.options.chunk_ms,
                             queue_chunks=self.options.queue_size)
        with self._lock:
            self._sources.add(source)
        return source

    def listen(self, source: AudioSource | None = None, *, grammar: Sequence[str] | None = None,
               on_speech: Callable[[], None] | None = None, cancel: threading.Event | None = None,
               on_partial: Callable[[str], None] | None = None,
               on_tentative: Callable[[str], None] | None = None) -> Iterator[str]:
        """Final transcripts from `source` (default: the configured input), blocking, wake-gated; `on_partial`
        (the kiosk screen) sees the recogniser's hypotheses while someone speaks, `on_tentative` the hypothesis
        at a short pause (the kiosk starts its answer on it), both in this thread.

        Once `cancel` is set, recognition stops at its next chunk (AudioError) instead of waiting for a turn of
        the limiter behind uploads or decoding the rest of the utterance.
        """
        source = source or self.open_source()
        recognizer = self.live_recognizer(grammar if grammar is not None else self.grammar())
        try:
            yield from finals(source.chunks(), self.limiter.gated(recognizer, cancel), wake=self.wake_gate(),
                              on_speech=on_speech, on_partial=on_partial, on_tentative=on_tentative)
        finally:
            recognizer.close()
            source.close()
            with self._lock:
                self._sources.discard(source)

    def _barge_in(self) -> None:
        speaker = self._speaker
        if speaker is not None and speaker.speaking:
            log.info("speech while speaking: stopping playback (barge-in)")
            speaker.stop()

    async def transcripts(self, source: AudioSource | None = None) -> AsyncIterator[str]:
        """`listen()` for asyncio code: recognition runs in a thread; new speech stops the reply (barge-in)."""
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        heard_from = self.options.input if source is None else type(source).__name__
        source = source or self.open_source()
        on_speech = self._barge_in if self.options.barge_in else None
        feed = ThreadFeed("voice-listen", f"recognising speech from {heard_from}",
                          lambda cancel: self.listen(source, on_speech=on_speech, cancel=cancel), queue.put_nowait,
                          stop=source.close)
        feed.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await feed.close()

    # --- audio out ------------------------------------------------------------------------------
    def tts(self) -> TTS:
        with self._lock:
            if self._tts is None:
                o = self.options
                self._tts = create_tts(o.tts, voice=o.voice, language=o.language, rate=o.rate, pitch=o.pitch)
            return self._tts

    def tts_for(self, kind: str, voice: str | None = None, speed: float = 1.0, speaker: str | None = None) -> TTS:
        """An engine (`espeak` or `piper`) speaking `voice` (None: the engine's default) at `speed` times the
        configured rate; shared by the HTTP route and the Wyoming server, so a Piper voice is loaded once.

        AudioError for a voice the engine does not have (espeak-ng would silently fall back to another one).
        `speaker` picks one speaker of a multi-speaker Piper voice.
        """
        options = self.options
        if kind == options.tts:
            base = self.tts()
        else:
            with self._lock:
                base = self._other_tts.get(kind)  # type: ignore[assignment]
            if base is None:
                built = create_tts(kind, voice=None, language=options.language, rate=options.rate,
                                   pitch=options.pitch)
                with self._lock:
                    base = self._other_tts.setdefault(kind, built)
        rate = round(options.rate * speed)
        if isinstance(base, EspeakTTS):
            if voice is not None and not base.has_voice(voice):
                raise AudioError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")
            return base.with_voice(voice or base.voice, rate)
        if isinstance(base, PiperTTS):
            return base.with_voice(voice or base.voice, rate, speaker)
        return base

    def player(self) -> Player:
        return Player(self.options.output)

    def speaker(self) -> Speaker:
        """The kiosk's one Speaker (its stop() is what barge-in calls)."""
        tts = self.tts()
        with self._lock:
            if self._speaker is None:
                self._speaker = Speaker(tts, self.player())
            return self._speaker

    # --- Module protocol ------------------------------------------------------------------------
    def routers(self) -> Sequence[Any]:
        from .http import build_router

        return [build_router(self)]

    async def start(self) -> None:
        self.limiter.open()
        if self.options.preload:
            engine = await asyncio.to_thread(self.stt)
            await asyncio.to_thread(engine.load)
            await asyncio.to_thread(self.vad_model)

    def halt(self) -> None:
        """The daemon's shutdown bound is near: running transcriptions end now, with a 503 their clients can retry
        (instead of the 500 uvicorn sends for a request it cancels at the bound)."""
        self.limiter.halt()

    async def stop(self) -> None:
        if self._speaker is not None:
            self._speaker.stop()
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            source.close()
        # Uploads being transcribed stop at their next chunk. Their threads are daemon threads, so one stuck in
        # native code cannot keep the process alive past this bound.
        await asyncio.to_thread(self.limiter.close, _CANCEL_TIMEOUT)


# What a caller of the voice module uses: recognition (the STT engine), the configured input when it is a
# microphone, synthesis (Piper when configured; espeak-ng is a program), playback through an output device.
STT, TTS_ONLY, PLAYBACK, MIC = "stt", "tts", "playback", "mic"
EVERYTHING = frozenset({STT, TTS_ONLY, PLAYBACK, MIC})


def _check_dependencies(options: VoiceOptions, engine: str | None, uses: frozenset[str]) -> None:
    needed = []
    if engine is not None:
        needed.append(engine)
        if MIC in uses and (options.input == "mic" or options.input.startswith("mic:")):
            needed.append("sounddevice")
        if MIC in uses and options.vad == "silero":
            needed.append("onnxruntime")
    if STT in uses and MIC in uses and options.wake_word is not None \
            and importlib.util.find_spec("pymicro_wakeword") is None:
        raise DependencyMissing("pymicro-wakeword (for modules.voice.wake_word)", extra="wakeword")
    if PLAYBACK in uses:
        needed.append("sounddevice")
    if options.tts == PIPER and (TTS_ONLY in uses or PLAYBACK in uses) and importlib.util.find_spec("piper") is None:
        raise DependencyMissing("piper-tts (for modules.voice.tts: piper)", extra="piper")
    for package in dict.fromkeys(needed):
        if importlib.util.find_spec(package) is None:
            raise DependencyMissing(f"{package} (needed by modules.voice)", extra="voice")


def create(options: Mapping[str, Any], settings: Settings, *, uses: frozenset[str] = EVERYTHING) -> VoiceModule:
    """Module factory: validates `modules.voice` without downloading or loading a model (start() does that).

    `uses` narrows what must be installed: `say --output` needs neither a recogniser nor PortAudio.
    """
    voice_options = parse_options(options)
    engine: str | None = None
    if STT in uses:
        key = PREFIX + ("stt_model" if voice_options.stt_model else "language")
        try:
            name = voice_options.stt_model or default_stt_model(settings, voice_options.language, voice_options.stt)
            name, engine = identify(settings, name)
        except (AudioError, RegistryError) as exc:
            raise ConfigError(str(exc), key=key) from None
        if voice_options.stt not in ("auto", engine):
            raise ConfigError(f"{name} is a {engine} model but modules.voice.stt is {voice_options.stt}", key=key)
    _check_dependencies(voice_options, engine, uses)
    return VoiceModule(voice_options, settings)
