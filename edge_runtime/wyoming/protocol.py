"""Wyoming framing with bounds: one JSON header line, then optional JSON data and a binary payload."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from wyoming.error import Error
from wyoming.event import Event
from wyoming.version import __version__ as VERSION

# A header is a short JSON object (type, version, lengths); anything longer is not a Wyoming client.
MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The client broke the framing or sent something unanswerable; `code` is the wyoming error code.

    `fatal`: the stream cannot be resynchronised (a bad header, an oversized body): the connection closes
    after the error event.
    """

    def __init__(self, text: str, code: str, *, fatal: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.fatal = fatal


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{key} must be a non-negative integer", "bad-event", fatal=True)
    if value > limit:
        raise ProtocolError(f"{key} {value} is over the {limit}-byte limit (wyoming.max_event_bytes)",
                            "too-large", fatal=True)
    return value


async def read_event(reader: asyncio.StreamReader, max_bytes: int) -> Event | None:
    """The next event, None at end of stream; ProtocolError for malformed or oversized input.

    wyoming's own reader trusts `data_length` and `payload_length` (a client could make it buffer gigabytes) and
    returns None for bad JSON, which is indistinguishable from a clean disconnect.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ProtocolError("the connection ended inside an event header", "bad-event", fatal=True) from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"an event header is longer than {MAX_HEADER_BYTES} bytes", "too-large",
                            fatal=True) from None
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("an event header is not JSON", "bad-event", fatal=True) from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
        raise ProtocolError("an event header must be a JSON object with a string `type`", "bad-event", fatal=True)
    data_length = _length(header, "data_length", max_bytes)
    payload_length = _length(header, "payload_length", max_bytes)
    data = header.get("data") or {}
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise ProtocolError("event data must be a JSON object", "bad-event", fatal=True)
            data = {**data, **extra} if isinstance(data, dict) else extra
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None  # the client left in the middle of an event: same as leaving between events
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("event data is not JSON", "bad-event", fatal=True) from None
    if not isinstance(data, dict):
        raise ProtocolError("event data must be a JSON object", "bad-event", fatal=True)
    return Event(type=header["type"], data=data, payload=payload)


def error_event(text: str, code: str) -> Event:
    return Error(text=text, code=code).event()


def encode(event: Event) -> bytes:
    """An event's bytes on the wire (what wyoming's writer sends), for writes that must not wait."""
    header: dict[str, Any] = {"type": event.type, "version": VERSION}
    data = json.dumps(event.data, ensure_ascii=False).encode("utf-8") if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    return json.dumps(header, ensure_ascii=False).encode("utf-8") + b"\n" + data + (event.payload or b"")


def code_of(error: BaseException) -> str:
    """A wyoming error code from an exception class: EngineBusy -> engine-busy."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", type(error).__name__).lower()
