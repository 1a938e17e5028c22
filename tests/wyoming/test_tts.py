"""synthesize -> audio-start/chunk/stop, and the streaming synthesize-start/chunk/stop, as Home Assistant's
text-to-speech entity sends them; the audio is recognised back to the text."""
from __future__ import annotations

import asyncio
import time

from wyoming.audio import AudioChunk, AudioStart
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import normalize, transcribe
from edge_runtime.voice.vosk_stt import VoskEngine

from .conftest import KO_GRAMMAR, Running, exchange, read_until, types


def audio_of(events: list[Event]) -> Audio:
    """What Home Assistant makes of the answer: the first audio-start's format, every audio-chunk's bytes."""
    start = next(AudioStart.from_event(e) for e in events if AudioStart.is_type(e.type))
    assert (start.width, start.channels) == (2, 1)
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert chunks and all(c.rate == start.rate for c in chunks)
    return Audio(b"".join(c.audio for c in chunks), start.rate)


def test_synthesize_korean_is_recognised_back(running: Running, ko_engine: VoskEngine) -> None:
    async def speak() -> list[Event]:
        async with running.client() as client:
            # No voice: the configured one (espeak-ng Korean at the measured rate and pitch).
            return await exchange(client, Synthesize(text="문을 열어 주세요").event(), until=("audio-stop", "error"))

    events = asyncio.run(speak())
    assert types(events)[0] == "audio-start" and types(events)[-1] == "audio-stop"
    audio = audio_of(events).at_rate(SAMPLE_RATE)
    assert transcribe(ko_engine, audio, KO_GRAMMAR) == "문을 열어 주세요"


def test_streaming_synthesis_sentence_by_sentence(running: Running, ko_engine: VoskEngine) -> None:
    """Home Assistant's streaming order: synthesize-start, chunks, the whole text again as `synthesize` (skipped),
    synthesize-stop; audio for the first sentence arrives before the stream ends."""
    async def speak() -> tuple[list[Event], list[Event]]:
        async with running.client() as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="ko")).event())
            for part in ("안녕하", "세요. 문을 ", "열어 주세요."):
                await client.write_event(SynthesizeChunk(text=part).event())
            # The first sentence is complete (its end is followed by text): its audio comes before the stop.
            early = await read_until(client, ("audio-chunk",))
            await client.write_event(Synthesize(text="안녕하세요. 문을 열어 주세요.").event())
            await client.write_event(SynthesizeStop().event())
            return early, await read_until(client, ("synthesize-stopped", "error"))

    early, rest = asyncio.run(speak())
    events = early + rest
    assert types(early) == ["audio-start", "audio-chunk"]
    assert types(events)[-2:] == ["audio-stop", "synthesize-stopped"]
    assert types(events).count("audio-start") == 1  # one stream, one WAV header
    audio = audio_of(events).at_rate(SAMPLE_RATE)
    assert transcribe(ko_engine, audio, KO_GRAMMAR) == "안녕하세요 문을 열어 주세요"


def test_piper_voice_by_name_and_latency(running: Running, sphinx_engine: SphinxEngine) -> None:
    text = "What is the capital of France? Answer in one sentence."

    async def speak(voice: SynthesizeVoice) -> tuple[list[Event], float]:
        async with running.client() as client:
            started = time.monotonic()
            await client.write_event(Synthesize(text=text, voice=voice).event())
            first = await read_until(client, ("audio-chunk", "error"))
            took = time.monotonic() - started
            return first + await read_until(client, ("audio-stop", "error")), took

    events, _ = asyncio.run(speak(SynthesizeVoice(name="en_US-joe-medium")))  # loads the voice
    events, took = asyncio.run(speak(SynthesizeVoice(name="en_US-joe-medium")))
    audio = audio_of(events)
    assert audio.sample_rate == 22050
    # Piper samples noise on every call (the module's voice is not the tests' deterministic one), so the words
    # are checked against a grammar of phrases, as a kiosk would listen for them.
    grammar = ["what is the capital of france", "answer in one sentence", "hello there", "open the door"]
    heard = transcribe(sphinx_engine, audio.at_rate(SAMPLE_RATE), grammar)
    assert heard == normalize(text)
    print(f"piper synthesize -> first audio-chunk: {took * 1000:.0f} ms")
    # By language: the first installed voice that speaks it.
    events, took = asyncio.run(speak(SynthesizeVoice(language="en")))
    assert audio_of(events).duration > 1.0
    print(f"espeak-ng synthesize -> first audio-chunk: {took * 1000:.0f} ms")


def test_unknown_voice_or_speaker_is_an_error_then_close(running: Running) -> None:
    async def ask(voice: SynthesizeVoice) -> list[Event]:
        async with running.client() as client:
            return await exchange(client, Synthesize(text="hi", voice=voice).event(), until=("audio-stop",))

    for voice, code in ((SynthesizeVoice(name="no-such-voice"), "unknown-voice"),
                        (SynthesizeVoice(language="xx"), "unsupported-language")):
        events = asyncio.run(ask(voice))
        assert types(events) == ["error"] and events[0].data["code"] == code


def test_speakers(running: Running) -> None:
    """A speaker Home Assistant sends for a single-speaker voice is ignored; Piper itself refuses a speaker its
    voice does not have."""
    import pytest

    from edge_runtime.errors import AudioError
    from edge_runtime.voice.tts import PiperTTS

    async def speak() -> list[Event]:
        async with running.client() as client:
            voice = SynthesizeVoice(name="en_US-joe-medium", speaker="nobody")
            return await exchange(client, Synthesize(text="Hello.", voice=voice).event(),
                                  until=("audio-stop", "error"))

    assert types(asyncio.run(speak()))[-1] == "audio-stop"
    with pytest.raises(AudioError, match="single-speaker voice"):
        PiperTTS("joe", speaker="nobody").synthesize("Hello.")
