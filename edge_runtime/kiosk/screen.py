"""Screen: the kiosk's event hub; the loop publishes, /kiosk viewers subscribe (bounded queues, snapshot first)."""
from __future__ import annotations

import asyncio
import base64
import collections
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import OcrError

QUEUE_EVENTS = 256  # per viewer: a whole answer's deltas; a viewer further behind gets a fresh snapshot instead
LAST_TURNS = 6
FRAME_SIDE = 640  # the frame is shown at most ~half of a 800×480 screen: more pixels only cost every viewer
FRAME_QUALITY = 75
# Visitor words for what went wrong, by the first matching fragment of the technical reason (lower case).
# Order matters: a reason naming the microphone says so even when it is also an AudioError.
_VISITOR_WORDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("input device", "capture", "microphone", "mic:", "speech input ended", "audio input"),
     "The microphone is unplugged or not working."),
    (("output device", "playback"), "The speaker is not working. Answers are shown here only."),
    (("camera",), "The camera is not working right now, so signs cannot be read."),
    (("tesseract",), "Sign reading is not set up on this kiosk. Please ask a member of staff."),
    (("busy", "queue"), "The kiosk is busy right now. Please try again in a moment."),
    (("shutting down",), "The kiosk is restarting. Please wait a moment."),
    (("dependencymissing", "not installed", "install"), "Part of the kiosk is not installed. Please ask a member of "
                                                          "staff."),
    (("model",), "The kiosk is not ready yet. Please try again shortly."),
)
GENERIC_ERROR = "Something went wrong. Please try again, or ask a member of staff."


def visitor_message(reason: str | None) -> str | None:
    """Words a visitor understands for a technical error (a ClawdError's text, the service's reason)."""
    if not reason:
        return None
    lowered = reason.lower()
    for fragments, words in _VISITOR_WORDS:
        if any(fragment in lowered for fragment in fragments):
            return words
    return GENERIC_ERROR


def frame_url(image: Any) -> str:
    """A camera frame (BGR array) as a small JPEG data: URL; the boxes keep the original pixel coordinates."""
    from ..ocr.camera import import_cv2

    cv2 = import_cv2()
    height, width = image.shape[:2]
    scale = FRAME_SIDE / max(width, height, 1)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, FRAME_QUALITY])
    if not ok:
        raise OcrError("OpenCV could not encode the camera frame as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


@dataclass(frozen=True)
class Event:
    """One update for the page: `kind` names it (see Screen), `data` is its JSON body, `seq` orders them."""

    kind: str
    data: Mapping[str, Any]
    seq: int

    def sse(self) -> str:
        """The Server-Sent Events frame."""
        return f"id: {self.seq}\nevent: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


class _Viewer:
    """One subscriber's queue; when it fills up it is cleared and the viewer is owed a snapshot (never blocks)."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size)
        self.behind = False

    def put(self, event: Event | None) -> None:
        """`event`, or None: the screen closed (the daemon is stopping), end the stream."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.behind = True
            self.queue.put_nowait(event)  # wakes the reader, which sends the snapshot first


class Screen:
    """What the kiosk screen shows, kept current, and the viewers to tell. Use from the event loop only.

    Event kinds: `snapshot` (everything below, sent first), `status` (service status + visitor error),
    `state` (idle/listening/thinking/speaking), `partial` (the recogniser's hypothesis while someone speaks),
    `turn` (a turn started: who said what), `delta` (answer text), `frame` (the camera frame read, with word
    boxes), `done` (a turn ended: its record, added to the last turns).
    """

    def __init__(self, *, queue_events: int = QUEUE_EVENTS, last_turns: int = LAST_TURNS) -> None:
        self.queue_events = queue_events
        self._seq = 0
        self._viewers: set[_Viewer] = set()
        self._status: dict[str, Any] = {"status": "starting", "error": None}
        self._state = "idle"
        self._partial = ""
        self._turn: dict[str, Any] | None = None
        self._frame: dict[str, Any] | None = None
        self._turns: collections.deque[dict[str, Any]] = collections.deque(maxlen=last_turns)
        self._closed = False

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def snapshot(self) -> dict[str, Any]:
        """Everything a viewer that arrives now needs, including a turn in progress."""
        return {**self._status, "state": self._state, "partial": self._partial,
                "turn": dict(self._turn) if self._turn is not None else None, "frame": self._frame,
                "turns": list(self._turns)}

    def _publish(self, kind: str, data: Mapping[str, Any]) -> None:
        self._seq += 1
        event = Event(kind, data, self._seq)
        for viewer in self._viewers:
            viewer.put(event)

    # --- what the kiosk reports -------------------------------------------------------------------
    def status(self, status: str, reason: str | None = None) -> None:
        """The service's status (running, failed, ...) and, if it failed, why, in a visitor's words."""
        if status in ("failed", "finished"):
            error = visitor_message(reason)
        else:  # a retry ("starting") keeps the last failure on screen until the kiosk runs again
            error = self._status["error"] if status == "starting" else None
        self._status = {"status": status, "error": error}
        self._publish("status", self._status)

    def state(self, state: str) -> None:
        if state == "listening" and self._turn is None:
            self._partial = ""
        self._state = state
        self._publish("state", {"state": state})

    def partial(self, text: str) -> None:
        self._partial = text
        self._publish("partial", {"text": text})

    def turn(self, number: int, source: str, user: str, read: bool) -> None:
        self._partial = ""
        self._turn = {"turn": number, "source": source, "user": user, "read": read, "answer": ""}
        self._publish("turn", {"turn": number, "source": source, "user": user, "read": read})

    def delta(self, text: str) -> None:
        if self._turn is not None:
            self._turn["answer"] += text
        self._publish("delta", {"text": text})

    def frame(self, image: str, width: int, height: int, words: list[dict[str, Any]], text: str) -> None:
        """`image`: a data: URL of the frame (scaled down); word boxes are in the original `width`×`height`."""
        self._frame = {"image": image, "width": width, "height": height, "words": words, "text": text}
        self._publish("frame", self._frame)

    def done(self, record: Mapping[str, Any]) -> None:
        """A turn ended; `record` has turn, source, user, answer, interrupted and error (technical)."""
        read = bool(self._turn is not None and self._turn.get("read"))
        entry = {**record, "read": read, "error": visitor_message(record.get("error"))}
        self._turns.append(entry)
        self._turn = None
        self._publish("done", entry)

    # --- viewers --------------------------------------------------------------------------------------
    def close(self) -> None:
        """End every viewer's stream (the daemon is stopping: open streams must not hold up its shutdown)."""
        self._closed = True
        for viewer in self._viewers:
            viewer.put(None)

    async def events(self, heartbeat: float | None = None) -> AsyncIterator[Event | None]:
        """A snapshot, then each event as it happens, until close() or the consumer stops iterating; None after
        `heartbeat` seconds without one (the stream writes a keep-alive, which also finds viewers gone)."""
        viewer = _Viewer(self.queue_events)
        self._viewers.add(viewer)
        try:
            yield Event("snapshot", self.snapshot(), self._seq)
            while not self._closed:
                try:
                    event = await asyncio.wait_for(viewer.queue.get(), heartbeat)
                except TimeoutError:
                    yield None
                    continue
                if event is None:
                    return
                if viewer.behind:
                    # It missed events: the state now, which already holds everything still queued.
                    viewer.behind = False
                    while not viewer.queue.empty():
                        viewer.queue.get_nowait()
                    yield Event("snapshot", self.snapshot(), self._seq)
                    continue
                yield event
        finally:
            self._viewers.discard(viewer)
