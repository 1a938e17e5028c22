"""Text to speech for Wyoming: pick the voice a request names, speak sentence by sentence as audio events."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

from ..errors import AudioError
from ..voice.audio import SAMPLE_WIDTH
from ..voice.sentences import SentenceSplitter
from .info import Catalog, VoiceChoice, bcp47, primary
from .protocol import ProtocolError

if TYPE_CHECKING:
    from ..voice.module import VoiceModule
    from ..voice.tts import TTS

# Samples per audio-chunk event: ~46 ms at 22.05 kHz, small enough that a player starts at once.
CHUNK_SAMPLES = 1024


def choose_voice(voice: VoiceModule, catalog: Catalog, name: str | None, language: str | None,
                 speaker: str | None) -> TTS:
    """Blocking (a Piper voice loads on first use): the named voice, else the configured one if it speaks
    `language`, else the first installed voice that does."""
    if not catalog.voices:
        raise ProtocolError("no text-to-speech voice is installed", "no-voice")
    if name:
        found = catalog.voice(name)
        if found is None:
            raise ProtocolError(f"unknown voice {name!r}; describe lists the installed voices", "unknown-voice")
        if speaker and found.speakers and speaker not in found.speakers:
            raise ProtocolError(f"voice {name!r} has no speaker {speaker!r}", "unknown-speaker")
        chosen = found
    else:
        chosen = catalog.voices[0]  # the configured voice when it is installed
        if language and all(primary(lang) != primary(language) for lang in chosen.languages):
            chosen = _voice_for_language(catalog, language)
    # A speaker only means something for a voice that has several (Home Assistant may send one for any voice).
    speaker = speaker if speaker and chosen.speakers else None
    try:
        if chosen.name == catalog.configured_voice:
            return voice.tts_for(voice.options.tts, speaker=speaker)  # the configured voice, rate and pitch
        return voice.tts_for(chosen.engine, chosen.name, speaker=speaker)
    except AudioError as exc:
        raise ProtocolError(str(exc), "unknown-voice") from None


def _voice_for_language(catalog: Catalog, language: str) -> VoiceChoice:
    """The voice of exactly that language (`en-GB`), else espeak-ng's usual one for it (`en` -> `en-us`), else the
    first voice of the language."""
    from ..voice.tts import ESPEAK_LANGUAGE_VOICES

    speaking = [v for v in catalog.voices if any(primary(lang) == primary(language) for lang in v.languages)]
    if not speaking:
        raise ProtocolError(f"no installed voice speaks language {language!r}", "unsupported-language")
    usual = ESPEAK_LANGUAGE_VOICES.get(primary(language), primary(language))
    return next((v for v in speaking if bcp47(language) in v.languages),
                next((v for v in speaking if v.name == usual), speaking[0]))


class Speech:
    """One audio-start ... audio-stop answer to a synthesize or a synthesize stream.

    Text is cut into sentences and each is synthesised as soon as it is complete, so the first audio-chunk
    leaves after the first sentence, not after the whole text. `slot` bounds synthesis (CPU-bound, sharing the
    cores with the LLM) across the server's connections.
    """

    def __init__(self, tts: TTS, send: Callable[[Event], Awaitable[None]], slot: asyncio.Semaphore,
                 max_chars: int) -> None:
        self.tts = tts
        self.send = send
        self.slot = slot
        self.max_chars = max_chars
        self.chars = 0
        self.rate: int | None = None
        self._splitter = SentenceSplitter()

    async def _start(self, rate: int) -> None:
        if self.rate is None:
            self.rate = rate
            await self.send(AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=1).event())

    async def _speak(self, sentence: str) -> None:
        async with self.slot:
            try:
                audio = await asyncio.to_thread(self.tts.synthesize, sentence)
            except AudioError as exc:
                raise ProtocolError(f"speech synthesis failed: {exc}", "synthesis-failed") from None
        await self._start(audio.sample_rate)
        if audio.sample_rate != self.rate:  # one stream, one format (a client writes one WAV header)
            audio = audio.at_rate(self.rate)  # type: ignore[arg-type]
        step = CHUNK_SAMPLES * SAMPLE_WIDTH
        for offset in range(0, len(audio.pcm), step):
            await self.send(AudioChunk(rate=audio.sample_rate, width=SAMPLE_WIDTH, channels=1,
                                       audio=audio.pcm[offset:offset + step]).event())

    async def add(self, text: str) -> None:
        """More text; the sentences it completes are spoken now."""
        self.chars += len(text)
        if self.chars > self.max_chars:
            raise ProtocolError(f"the text is longer than {self.max_chars} characters (wyoming.max_text_chars)",
                                "text-too-long")
        for sentence in self._splitter.feed(text):
            await self._speak(sentence)

    async def finish(self) -> None:
        """Speak the rest and close the audio (an empty text still gets audio-start and audio-stop)."""
        for sentence in self._splitter.flush():
            await self._speak(sentence)
        if self.rate is None:
            await self._start(int(await asyncio.to_thread(_rate_of, self.tts)))
        await self.send(AudioStop().event())


def _rate_of(tts: Any) -> int:
    return int(getattr(tts, "sample_rate", 22050))
