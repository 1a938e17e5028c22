"""Streaming text helpers: UTF-8 safe incremental detokenization and stop strings that are never emitted."""
from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Stream:
    """Turns token pieces (raw bytes) into text, holding back an incomplete multi-byte character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """At the end of a stream a dangling partial character becomes U+FFFD rather than vanishing."""
        return self._decoder.decode(b"", final=True)


def partial_tail(text: str, markers: Sequence[str]) -> int:
    """The length of the longest end of `text` that is a proper beginning of one of `markers` (text to hold back
    until the next piece shows whether the marker follows)."""
    for k in range(min(len(text), max(len(m) for m in markers) - 1), 0, -1):
        tail = text[-k:]
        if any(k < len(m) and m.startswith(tail) for m in markers):
            return k
    return 0


class StopMatcher:
    """Cuts the stream at the first stop string; holds back any tail that could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[:min(hits)], True
        keep = partial_tail(buf, self.stops)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """The held-back tail once the stream ends without reaching a stop string."""
        held, self._held = self._held, ""
        return held
