"""The kiosk screen's event hub and access rule, without a daemon: catch-up, slow viewers, close, SSE, auth."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from edge_runtime.kiosk.http import COOKIE, screen_access, screen_token
from edge_runtime.kiosk.screen import GENERIC_ERROR, Event, Screen, frame_url, visitor_message


async def _take(events: Any, count: int) -> list[Event]:
    taken: list[Event] = []
    while len(taken) < count:
        event = await asyncio.wait_for(events.__anext__(), 2)
        if event is not None:
            taken.append(event)
    return taken


def test_a_viewer_arriving_mid_turn_gets_the_turn_so_far() -> None:
    async def scenario() -> tuple[list[Event], list[Event]]:
        screen = Screen()
        early = screen.events()
        (first,) = await _take(early, 1)
        assert first.kind == "snapshot" and first.data["turn"] is None
        screen.status("running")
        screen.state("thinking")
        screen.turn(1, "voice", "what is the capital of france", False)
        screen.delta("The capital ")
        late = screen.events()
        caught_up = await _take(late, 1)
        screen.delta("is Paris.")
        return await _take(early, 5), caught_up + await _take(late, 1)

    early, late = asyncio.run(scenario())
    assert [e.kind for e in early] == ["status", "state", "turn", "delta", "delta"]
    assert [e.seq for e in early] == sorted(e.seq for e in early)
    snapshot = late[0].data
    assert late[0].kind == "snapshot" and snapshot["state"] == "thinking" and snapshot["status"] == "running"
    assert snapshot["turn"]["user"] == "what is the capital of france"
    assert snapshot["turn"]["answer"] == "The capital "
    assert late[1].kind == "delta" and late[1].data == {"text": "is Paris."}


def test_a_slow_viewer_never_blocks_and_is_resynced_with_a_snapshot() -> None:
    async def scenario() -> tuple[list[Event], int]:
        screen = Screen(queue_events=4)
        slow = screen.events()
        await _take(slow, 1)
        screen.turn(1, "screen", "hello", False)
        for word in ("one ", "two ", "three ", "four ", "five ", "six "):
            screen.delta(word)  # returns at once although nobody reads
        screen.done({"turn": 1, "source": "screen", "user": "hello", "answer": "one two three four five six ",
                     "interrupted": False, "error": None})
        resync = await _take(slow, 1)
        screen.state("listening")
        return resync + await _take(slow, 1), screen.viewers

    (resync, after), viewers = asyncio.run(scenario())
    assert resync.kind == "snapshot"  # the backlog was dropped, the state now was sent instead
    assert resync.data["turn"] is None and resync.data["turns"][-1]["answer"] == "one two three four five six "
    assert after.kind == "state" and after.data == {"state": "listening"}  # nothing replayed twice
    assert viewers == 1  # still subscribed


def test_close_ends_every_stream_and_unsubscribes() -> None:
    async def scenario() -> int:
        screen = Screen()
        streams = [screen.events() for _ in range(3)]
        for stream in streams:
            await _take(stream, 1)
        screen.close()
        for stream in streams:
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(stream.__anext__(), 2)
        return screen.viewers

    assert asyncio.run(scenario()) == 0


def test_heartbeat_when_nothing_happens() -> None:
    async def scenario() -> Any:
        screen = Screen()
        events = screen.events(heartbeat=0.05)
        await events.__anext__()
        return await asyncio.wait_for(events.__anext__(), 2)

    assert asyncio.run(scenario()) is None


def test_turn_records_keep_visitor_words_and_the_last_turns_only() -> None:
    screen = Screen(last_turns=2)
    for n in (1, 2, 3):
        screen.done({"turn": n, "source": "voice", "user": f"q{n}", "answer": "", "interrupted": False,
                     "error": "OcrError: camera file not found: /x.avi" if n == 3 else None})
    turns = screen.snapshot()["turns"]
    assert [t["turn"] for t in turns] == [2, 3]
    assert turns[1]["error"] == "The camera is not working right now, so signs cannot be read."
    event = Event("done", turns[1], 7)
    head, _, body = event.sse().partition("data: ")
    assert head == "id: 7\nevent: done\n" and json.loads(body) == turns[1]


@pytest.mark.parametrize(("reason", "words"), [
    ("cannot open input device default: Error opening InputStream", "The microphone is unplugged"),
    ("no usable input device (mic: no devices); is a sound card connected?", "The microphone is unplugged"),
    ("cannot open output device default: busy", "The speaker is not working"),
    ("DependencyMissing: the tesseract program is not installed", "Sign reading is not set up"),
    ("EngineBusy: all 1 slots are busy and the queue is full", "The kiosk is busy"),
    ("KeyError: 'x'", GENERIC_ERROR),
])
def test_visitor_messages(reason: str, words: str) -> None:
    message = visitor_message(reason)
    assert message is not None and message.startswith(words)
    assert visitor_message(None) is None


def test_screen_status_only_shows_failures() -> None:
    screen = Screen()
    screen.status("failed", "cannot open input device default: no such device")
    assert screen.snapshot()["error"] == "The microphone is unplugged or not working."
    screen.status("starting")  # the service retries: the visitor still needs to know
    assert screen.snapshot()["error"] == "The microphone is unplugged or not working."
    screen.status("running")
    assert screen.snapshot()["error"] is None


def test_frame_url_is_a_small_jpeg() -> None:
    import base64

    image = np.zeros((1080, 1920, 3), np.uint8)
    url = frame_url(image)
    assert url.startswith("data:image/jpeg;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 60_000


def _scope(path: str, client: str = "192.0.2.7", method: str = "GET", query: bytes = b"",
           cookie: str | None = None) -> dict[str, Any]:
    headers = [(b"cookie", cookie.encode())] if cookie is not None else []
    return {"type": "http", "path": path, "method": method, "client": (client, 5000), "query_string": query,
            "headers": headers}


def test_screen_access_rule() -> None:
    strict, public = screen_access("k3y", False), screen_access("k3y", True)
    token = screen_token("k3y")
    assert token != "k3y" and len(token) == 64
    # Never anything outside /kiosk, whatever is presented.
    assert not public(_scope("/v1/chat/completions", client="127.0.0.1", cookie=f"{COOKIE}={token}"))
    assert not public(_scope("/kiosker", client="127.0.0.1"))
    # screen_public: browsers on this machine only.
    assert public(_scope("/kiosk/events", client="127.0.0.1")) and public(_scope("/kiosk", client="::1"))
    assert public(_scope("/kiosk/stop", client="::ffff:127.0.0.1", method="POST"))
    assert not public(_scope("/kiosk/events")) and not strict(_scope("/kiosk/events", client="127.0.0.1"))
    # The cookie opens every screen route; a wrong one, or the raw key as a cookie, does not.
    assert strict(_scope("/kiosk/events", cookie=f"other=1; {COOKIE}={token}"))
    assert not strict(_scope("/kiosk/events", cookie=f"{COOKIE}=k3y"))
    wrong = token[:-1] + ("1" if token[-1] == "0" else "0")
    assert not strict(_scope("/kiosk/events", cookie=f"{COOKIE}={wrong}"))
    # ?key= only on the page (which turns it into the cookie), not on the stream or the buttons.
    assert strict(_scope("/kiosk", query=b"key=k3y")) and not strict(_scope("/kiosk", query=b"key=nope"))
    assert not strict(_scope("/kiosk/events", query=b"key=k3y"))
    assert not strict(_scope("/kiosk", method="POST", query=b"key=k3y"))
