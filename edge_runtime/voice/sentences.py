"""Cut a stream of text deltas (LLM tokens) into complete sentences, so speech starts before generation ends."""
from __future__ import annotations

import re

# Sentence-final punctuation (Latin, CJK, ellipsis), then closing quotes/brackets, then whitespace.
_END = re.compile(r"[.!?…。！？]+[\"'”’)\]」』]*(?=\s)")
_NEWLINES = re.compile(r"\n\s*\n|\n")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "approx", "fig", "inc",
})
DEFAULT_MAX_CHARS = 250


class SentenceSplitter:
    """`feed(delta)` returns the sentences completed so far; `flush()` returns the rest at the end.

    A boundary is only trusted once the character after the punctuation has arrived (so "3.14" and
    "e.g." are not cut), and a run-on text longer than `max_chars` is cut at its last comma or space so
    the speaker is never starved for long.
    """

    def __init__(self, *, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.max_chars = max_chars
        self._buffer = ""

    def _boundary(self, text: str) -> int | None:
        """Index just past the first sentence end in `text`, if a real one is there."""
        candidates: list[int] = []
        newline = _NEWLINES.search(text)
        if newline is not None and text[:newline.start()].strip():
            candidates.append(newline.end())
        for match in _END.finditer(text):
            word = text[:match.start()].split()[-1:] or [""]
            last = word[0].lower().lstrip("(\"'")
            if match.group().startswith(".") and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
                continue  # "Dr. Smith", "e.g. this", "J. Doe": not the end of a sentence
            candidates.append(match.end())
            break
        return min(candidates) if candidates else None

    def _too_long(self) -> int | None:
        if len(self._buffer) <= self.max_chars:
            return None
        window = self._buffer[:self.max_chars]
        cut = max(window.rfind(", "), window.rfind("; "), window.rfind("، "), window.rfind("、"))
        if cut <= 0:
            cut = window.rfind(" ")
        return cut + 1 if cut > 0 else self.max_chars

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        sentences: list[str] = []
        while True:
            end = self._boundary(self._buffer)
            if end is None:
                end = self._too_long()
            if end is None:
                return sentences
            sentence, self._buffer = self._buffer[:end].strip(), self._buffer[end:].lstrip()
            if sentence:
                sentences.append(sentence)

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []
