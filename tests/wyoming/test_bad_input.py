"""Bad clients: unknown events, audio out of order, oversized or malformed frames, clients that leave mid-stream,
a crowd of connections. The server answers with error events, frees what it held and keeps serving."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart

from edge_runtime.voice.audio import Audio

from .conftest import Running, exchange, read_until, start_server, stop_server, types


async def raw(running: Running, data: bytes) -> list[Event]:
    """Bytes straight onto the socket, then every event until the server closes."""
    async with running.client() as client:
        assert client._writer is not None
        client._writer.write(data)
        await client._writer.drain()
        return await read_until(client, ())


def idle(running: Running, timeout: float = 10.0, served: int = 0) -> None:
    """Wait until the server has finished with every connection (a client's close reaches it a moment later) and
    served `served` in all."""
    deadline = time.monotonic() + timeout
    while running.server.connections or running.server.sessions_total < served:
        assert time.monotonic() < deadline, f"{running.server.connections} connection(s) still open"
        time.sleep(0.02)


def error_code(events: list[Event]) -> str:
    assert events and events[0].type == "error", events
    return str(events[0].data["code"])


def test_unknown_event_and_audio_out_of_order_keep_the_connection(running: Running) -> None:
    async def go() -> list[list[Event]]:
        async with running.client() as client:
            answers = []
            for event in (Event(type="no-such-event", data={"x": 1}),
                          AudioChunk(rate=16000, width=2, channels=1, audio=bytes(320)).event(),
                          AudioStop().event(), SynthesizeChunk(text="hi").event(), Describe().event()):
                answers.append(await exchange(client, event, until=("error", "info")))
            return answers

    unknown, chunk, stop, tts_chunk, info = asyncio.run(go())
    assert error_code(unknown) == "unknown-event"
    assert error_code(chunk) == "audio-not-started"
    assert error_code(stop) == "audio-not-started"
    assert error_code(tts_chunk) == "synthesis-not-started"
    assert types(info) == ["info"]


def test_malformed_and_oversized_frames_are_refused_then_closed(running: Running) -> None:
    limit = running.server.options.max_event_bytes
    cases = {
        "too-large": json.dumps({"type": "audio-chunk", "payload_length": limit + 1}).encode() + b"\n",
        "bad-event": b"this is not json\n",
    }
    for code, data in cases.items():
        assert error_code(asyncio.run(raw(running, data))) == code
    huge_header = b'{"type": "describe", "pad": "' + b"x" * 100_000 + b'"}\n'
    assert error_code(asyncio.run(raw(running, huge_header))) == "too-large"
    assert error_code(asyncio.run(raw(running, b'{"data": {}}\n'))) == "bad-event"  # no type
    bad_data = json.dumps({"type": "transcript", "data_length": 5}).encode() + b"\n[1,2]"
    assert error_code(asyncio.run(raw(running, bad_data))) == "bad-event"


def test_audio_over_the_limit_is_refused(running: Running) -> None:
    seconds = running.server.options.max_audio_seconds

    async def go() -> list[Event]:
        async with running.client() as client:
            events = [Transcribe(language="ko").event(), AudioStart(rate=16000, width=2, channels=1).event()]
            chunk = AudioChunk(rate=16000, width=2, channels=1, audio=bytes(32000)).event()  # 1 s
            events += [chunk] * (int(seconds) + 2) + [AudioStop().event()]
            return await exchange(client, *events, until=())

    events = asyncio.run(go())
    assert types(events) == ["error"] and events[0].data["code"] == "audio-too-long"


def test_long_texts_are_refused(running: Running) -> None:
    limit = running.server.options.max_text_chars

    async def go(event: Event) -> list[Event]:
        async with running.client() as client:
            return await exchange(client, event, until=("error", "audio-stop", "handled-stop"))

    assert error_code(asyncio.run(go(Synthesize(text="a" * (limit + 1)).event()))) == "text-too-long"
    assert error_code(asyncio.run(go(Transcript(text="a" * (limit + 1)).event()))) == "text-too-long"


def test_a_client_leaving_mid_utterance_frees_the_recogniser(running: Running,
                                                             ko_speech: Callable[..., Audio]) -> None:
    """One recognition at a time (modules.voice.max_concurrent_transcriptions 1): a leaked place would make the
    next utterance busy."""
    speech = ko_speech("안녕하세요").pcm

    async def leave() -> None:
        async with running.client() as client:
            await client.write_event(Transcribe(language="ko").event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=speech[:16000]).event())

    async def utterance() -> list[Event]:
        async with running.client() as client:
            return await exchange(client, Transcribe(language="ko").event(),
                                  AudioStart(rate=16000, width=2, channels=1).event(),
                                  AudioChunk(rate=16000, width=2, channels=1, audio=speech).event(),
                                  AudioStop().event(), until=("transcript-stop", "error"))

    served = running.server.sessions_total
    for _ in range(3):
        asyncio.run(leave())
    idle(running, served=served + 3)
    assert running.server.voice is not None and not running.server.voice.limiter._tickets
    events = asyncio.run(utterance())
    assert types(events)[-2:] == ["transcript", "transcript-stop"], events
    assert Transcript.from_event(events[-2]).text == "안녕하세요"


def test_a_client_leaving_mid_answer_frees_the_engine_slot(running: Running) -> None:
    # A server of its own with room for a long answer, on the same engine.
    long = start_server(running.server.settings, running.engine, None, max_tokens=1000)
    engine = running.engine
    cancelled = engine.status().requests_cancelled_total

    async def leave() -> None:
        async with long.client() as client:
            await client.write_event(Transcript(text="Write a very long story about a dragon.",
                                                context={"conversation_id": "gone"}).event())
            await read_until(client, ("handled-chunk",))

    try:
        asyncio.run(leave())
        deadline = time.monotonic() + 10
        while engine.status().slots_busy or long.server.connections:
            assert time.monotonic() < deadline, engine.status()
            time.sleep(0.02)
        assert engine.status().requests_cancelled_total == cancelled + 1
        # An unfinished answer does not join the history.
        thread = long.server.conversations.peek("gone")
        assert thread is not None and not thread.history.turns
    finally:
        stop_server(long)


def test_a_client_leaving_mid_synthesis_stream(running: Running) -> None:
    async def leave() -> None:
        async with running.client() as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="안녕하세요. 문을").event())

    asyncio.run(leave())
    async def describe() -> list[Event]:
        async with running.client() as client:
            return await exchange(client, Describe().event(), until=("info",))

    assert types(asyncio.run(describe())) == ["info"]


def test_a_hundred_connections_at_once(running: Running) -> None:
    limit = running.server.options.max_connections
    idle(running)

    async def crowd() -> list[list[Event]]:
        clients = [running.client() for _ in range(100)]
        await asyncio.gather(*(c.connect() for c in clients))
        try:
            return await asyncio.gather(*(exchange(c, Describe().event(), until=("info", "error"))
                                          for c in clients))
        finally:
            await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)

    answers = asyncio.run(crowd())
    kinds = [types(a)[0] if a else "closed" for a in answers]
    assert kinds.count("info") == limit
    assert kinds.count("error") == 100 - limit
    assert {a[0].data["code"] for a in answers if a and a[0].type == "error"} == {"too-many-connections"}
    idle(running)

    async def describe() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", running.port) as client:
            return await exchange(client, Describe().event(), until=("info",))

    assert types(asyncio.run(describe())) == ["info"]


def test_an_idle_connection_is_closed(running: Running) -> None:
    quick = start_server(running.server.settings, running.engine, None, idle_timeout=1)

    async def wait() -> tuple[list[Event], float]:
        async with quick.client() as client:
            started = time.monotonic()
            return await read_until(client, ()), time.monotonic() - started

    try:
        events, took = asyncio.run(wait())
        assert events == [] and 0.9 < took < 5
    finally:
        stop_server(quick)
