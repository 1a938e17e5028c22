"""The speech-to-text contract (engine -> per-stream Recognizer -> partial/final Transcripts) and its pipelines."""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import AudioError
from .audio import SAMPLE_RATE, SAMPLE_WIDTH, Audio

CHUNK_BYTES = SAMPLE_RATE * SAMPLE_WIDTH // 10  # 100 ms


@dataclass(frozen=True)
class Transcript:
    """A recogniser result: a partial hypothesis while someone speaks, a final one at the endpoint.

    A tentative one is the hypothesis at a short pause (a VAD endpointer's): probably the final text, so work
    on it may start; the final or a new partial (speech resumed) follows.
    """

    text: str
    final: bool
    tentative: bool = False


class Recognizer(Protocol):
    """One audio stream's decoder state; not thread-safe, use one per stream."""

    sample_rate: int

    def accept(self, chunk: bytes) -> Transcript | None:
        """Feed 16 kHz mono S16LE; a final at an endpoint, a partial when the hypothesis changed, else None."""
        ...

    def finish(self) -> Transcript | None:
        """The audio ended: the final result of a pending utterance (None if nothing was said)."""
        ...

    def finalize(self) -> Transcript | None:
        """An endpointer outside says the utterance ended: its final now; the stream goes on (next utterance)."""
        ...

    def close(self) -> None: ...


class SpeechToText(Protocol):
    """An engine holding a loaded model, shared by all its recognisers."""

    name: str
    language: str | None

    def recognizer(self, grammar: Sequence[str] | None = None, *, endpointing: bool = True) -> Recognizer:
        """`endpointing=False`: the caller ends utterances with finalize() (a VAD); the engine decodes all audio
        it is given as speech."""
        ...

    def load(self) -> None:
        """Load the model now (it is otherwise loaded by the first recognizer())."""
        ...


def normalize(text: str) -> str:
    """Lower case, punctuation removed, single spaces: how transcripts and phrases are compared."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def load_grammar(value: str | Sequence[str] | None, *, where: str = "grammar") -> tuple[str, ...] | None:
    """A phrase list, or a text file of one phrase per line (blank lines and `#` comments skipped)."""
    if value is None:
        return None
    if isinstance(value, str):
        path = Path(value).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AudioError(f"{where}: cannot read grammar file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise AudioError(f"{where}: grammar file {path} is not UTF-8 text") from None
        phrases = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        phrases = [str(p).strip() for p in value if str(p).strip()]
    if not phrases:
        raise AudioError(f"{where}: the grammar has no phrases")
    return tuple(phrases)


class WakeGate:
    """Lets a final transcript through only after the wake phrase (in the same utterance or the one before)."""

    def __init__(self, phrase: str, *, window: float = 8.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.phrase = normalize(phrase)
        if not self.phrase:
            raise AudioError("wake phrase is empty")
        self.window = window
        self.clock = clock
        self._awake_until: float | None = None

    def peek(self, text: str) -> str | None:
        """What __call__ would let through for `text`, without changing the gate (for tentative transcripts)."""
        words = normalize(text)
        if self._awake_until is not None and self.clock() <= self._awake_until:
            return text
        index = f" {words} ".find(f" {self.phrase} ")
        rest = words[index + len(self.phrase):].strip() if index >= 0 else ""
        return rest or None

    def __call__(self, text: str) -> str | None:
        words = normalize(text)
        now = self.clock()
        if self._awake_until is not None and now <= self._awake_until:
            self._awake_until = None
            return text
        self._awake_until = None
        index = f" {words} ".find(f" {self.phrase} ")
        if index < 0:
            return None
        rest = words[index + len(self.phrase):].strip()
        if rest:
            return rest
        self._awake_until = now + self.window
        return None


def recognize(chunks: Iterable[bytes], recognizer: Recognizer,
              on_speech: Callable[[], None] | None = None) -> Iterator[Transcript]:
    """Partials and finals for a chunk stream; `on_speech` fires at each utterance's first partial (barge-in), and
    again when speech goes on after a tentative pause."""
    speaking = False
    for chunk in chunks:
        result = recognizer.accept(chunk)
        if result is None:
            continue
        if not result.final and not result.tentative and not speaking:
            speaking = True
            if on_speech is not None:
                on_speech()
        if result.final or result.tentative:
            speaking = False  # after a pause, speech that goes on is news too (what was started on it is stale)
        yield result
    last = recognizer.finish()
    if last is not None:
        yield last


def finals(chunks: Iterable[bytes], recognizer: Recognizer, *, wake: WakeGate | None = None,
           on_speech: Callable[[], None] | None = None, on_partial: Callable[[str], None] | None = None,
           on_tentative: Callable[[str], None] | None = None) -> Iterator[str]:
    """Non-empty final transcripts (after the wake gate, if any); `on_partial` sees each changed hypothesis,
    `on_tentative` each tentative one (wake-gated without moving the gate)."""
    for result in recognize(chunks, recognizer, on_speech):
        if result.tentative:
            text = wake.peek(result.text) if wake is not None else result.text
            if on_tentative is not None and text and text.strip():
                on_tentative(text)
            continue
        if not result.final and on_partial is not None and result.text.strip():
            on_partial(result.text)
        if not result.final or not result.text.strip():
            continue
        text = wake(result.text) if wake is not None else result.text
        if text:
            yield text


def audio_chunks(audio: Audio, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    pcm = audio.at_rate(SAMPLE_RATE).pcm
    for start in range(0, len(pcm), chunk_bytes):
        yield pcm[start:start + chunk_bytes]


def transcribe(engine: SpeechToText, audio: Audio | Iterable[bytes], grammar: Sequence[str] | None = None, *,
               wrap: Callable[[Recognizer], Recognizer] | None = None,
               on_final: Callable[[str], None] | None = None) -> str:
    """The whole text of a recording (or of 16 kHz chunks): its final transcripts joined by spaces.

    `wrap` puts the recogniser behind a limiter (a CPU turn per chunk, a cancel flag): see voice/limits.py.
    `on_final` sees each final transcript as soon as it is recognised (a streaming client shows it at once).
    """
    chunks = audio_chunks(audio) if isinstance(audio, Audio) else audio
    recognizer = engine.recognizer(grammar)
    texts: list[str] = []
    try:
        for text in finals(chunks, wrap(recognizer) if wrap is not None else recognizer):
            texts.append(text)
            if on_final is not None:
                on_final(text)
        return " ".join(texts)
    finally:
        recognizer.close()
