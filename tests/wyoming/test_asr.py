"""transcribe + audio-start/chunk/stop -> transcript, at rates, widths and channel counts the recognisers do not
use natively (the server converts), as Home Assistant's speech-to-text entity sends them."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

from edge_runtime.voice.audio import Audio, resample
from edge_runtime.voice.stt import normalize

from .conftest import Running, exchange, types

QUESTION = "What is the capital of France? Answer in one sentence."


def encode(audio: Audio, rate: int, width: int, channels: int) -> bytes:
    """`audio` as interleaved PCM at `rate`, `width` bytes per sample, `channels` identical channels."""
    samples = resample(audio.samples(), audio.sample_rate, rate).astype(np.int32)
    if width == 1:
        data = (samples // 256 + 128).astype(np.uint8)
    elif width == 2:
        data = samples.astype("<i2")
    elif width == 4:
        data = (samples << 16).astype("<i4")
    else:
        raise AssertionError(width)
    return np.repeat(data, channels).tobytes()


def utterance(pcm: bytes, rate: int, width: int, channels: int, *, chunk_frames: int = 1024,
              name: str | None = None, language: str | None = None) -> list[Event]:
    """Home Assistant's order: transcribe, audio-start, audio-chunk..., audio-stop."""
    step = chunk_frames * width * channels
    events = [Transcribe(name=name, language=language).event(),
              AudioStart(rate=rate, width=width, channels=channels).event()]
    events += [AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i:i + step]).event()
               for i in range(0, len(pcm), step)]
    return [*events, AudioStop().event()]


async def recognise(running: Running, events: list[Event]) -> list[Event]:
    async with running.client() as client:
        return await exchange(client, *events, until=("transcript-stop", "error"))


def transcript_of(events: list[Event]) -> str:
    assert "error" not in types(events), events
    finals = [Transcript.from_event(e) for e in events if Transcript.is_type(e.type)]
    assert len(finals) == 1, types(events)
    return finals[0].text


@pytest.mark.parametrize(("rate", "width", "channels"), [(16000, 2, 1), (48000, 2, 1), (22050, 2, 2),
                                                         (44100, 4, 1), (8000, 1, 1)])
def test_korean_through_vosk_at_any_format(running: Running, ko_speech: Callable[..., Audio], rate: int,
                                           width: int, channels: int) -> None:
    pcm = encode(ko_speech("문을 열어 주세요"), rate, width, channels)
    events = asyncio.run(recognise(running, utterance(pcm, rate, width, channels, language="ko")))
    assert transcript_of(events) == "문을 열어 주세요"
    # The streaming events around it: start, the final utterances as chunks, the transcript, stop.
    kinds = types(events)
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = "".join(TranscriptChunk.from_event(e).text for e in events if TranscriptChunk.is_type(e.type))
    assert chunks == "문을 열어 주세요"
    assert Transcript.from_event(events[-2]).language == "ko"


def test_english_through_pocketsphinx_chosen_by_language(running: Running, piper_question: Audio) -> None:
    """language en (not the configured Korean): the installed English recogniser answers; Piper's own
    22050 Hz in stereo, as a satellite might send it."""
    pcm = encode(piper_question, 22050, 2, 2)
    events = asyncio.run(recognise(running, utterance(pcm, 22050, 2, 2, language="en-US")))
    assert transcript_of(events) == normalize(QUESTION)


def test_english_by_model_name(running: Running, piper_question: Audio) -> None:
    events = asyncio.run(recognise(running, utterance(piper_question.pcm, 16000, 2, 1, name="pocketsphinx-en-us")))
    assert transcript_of(events) == normalize(QUESTION)


def test_two_utterances_on_one_connection_and_silence(running: Running, ko_speech: Callable[..., Audio]) -> None:
    hello = ko_speech("안녕하세요").pcm
    silence = bytes(32000)

    async def twice() -> tuple[list[Event], list[Event]]:
        async with running.client() as client:
            first = await exchange(client, *utterance(hello, 16000, 2, 1), until=("transcript-stop",))
            second = await exchange(client, *utterance(silence, 16000, 2, 1), until=("transcript-stop",))
            return first, second

    first, second = asyncio.run(twice())
    assert transcript_of(first) == "안녕하세요"
    assert transcript_of(second) == ""
    assert types(second) == ["transcript-start", "transcript", "transcript-stop"]


def test_unknown_model_and_language_are_error_events(running: Running) -> None:
    audio = bytes(3200)
    for request, code in (({"name": "no-such-model"}, "unknown-model"), ({"language": "xx"}, "unsupported-language")):
        # The whole utterance is sent first, as Home Assistant does; the error comes, then the connection closes.
        events = asyncio.run(recognise(running, utterance(audio, 16000, 2, 1, **request)))  # type: ignore[arg-type]
        assert types(events) == ["error"], events
        assert events[0].data["code"] == code
    for rate, width, channels in ((1000, 2, 1), (16000, 5, 1), (16000, 2, 0)):
        events = asyncio.run(recognise(running, utterance(audio, rate, width, max(channels, 1))
                                       if channels else [AudioStart(rate=rate, width=width, channels=0).event(),
                                                         AudioStop().event()]))
        assert types(events) == ["error"] and events[0].data["code"] == "bad-audio-format", events
