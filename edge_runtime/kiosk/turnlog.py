"""One JSON line per dialogue turn: what was heard/read/typed, the answer, and a timestamp per stage."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError

# The stages in the order they happen; a turn records those that apply to it (typed text has no speech).
# "speculation": the answer was started at a pause, before the final transcript (and taken over at "request").
STAGES = ("speech_start", "end_of_speech", "speculation", "transcript", "input", "ocr_start", "ocr_done", "request",
          "first_token", "first_audio", "generated", "done")


@dataclass
class TurnRecord:
    """Mutable while its turn runs (stages may be marked from the audio threads), then written once."""

    turn: int
    source: str  # voice, text, http
    user: str = ""
    prompt: str = ""
    ocr_text: str | None = None
    answer: str = ""
    interrupted: bool = False
    error: str | None = None
    speculation: str | None = None  # the answer started at a pause: "taken" by this turn, or "dropped"
    usage: dict[str, int] = field(default_factory=dict)
    states: list[tuple[str, float]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # stage -> time.time()

    def mark(self, stage: str, at: float | None = None) -> None:
        if stage not in self.marks:
            self.marks[stage] = time.time() if at is None else at

    def latency(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return round(self.marks[end] - self.marks[start], 4)
        return None

    def to_json(self) -> dict[str, Any]:
        first = min(self.marks.values()) if self.marks else time.time()
        latencies = {
            "end_of_speech_to_transcript": self.latency("end_of_speech", "transcript"),
            "transcript_to_first_token": self.latency("transcript", "first_token"),
            "request_to_first_token": self.latency("request", "first_token"),
            "first_token_to_first_audio": self.latency("first_token", "first_audio"),
            "end_of_speech_to_first_audio": self.latency("end_of_speech", "first_audio"),
            "ocr": self.latency("ocr_start", "ocr_done"),
            "input_to_first_token": self.latency("input", "first_token"),
            "total": self.latency(min(self.marks, key=self.marks.__getitem__), "done") if self.marks else None,
        }
        return {
            "turn": self.turn, "source": self.source, "user": self.user, "ocr_text": self.ocr_text,
            "answer": self.answer, "interrupted": self.interrupted, "error": self.error, "usage": self.usage,
            "speculation": self.speculation,
            "t": {stage: round(self.marks[stage], 4) for stage in STAGES if stage in self.marks},
            "since_start": {stage: round(self.marks[stage] - first, 4) for stage in STAGES if stage in self.marks},
            "latency": {k: v for k, v in latencies.items() if v is not None},
            "states": [[state, round(at - first, 4)] for state, at in self.states],
        }


class TurnLog:
    """Appends records to a JSON-lines file (and/or a text stream); each line is flushed at once."""

    def __init__(self, path: str | None, stream: TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._stream = stream
        self._file: TextIO | None = None
        if path:
            try:
                self._file = Path(path).expanduser().open("a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot open the turn log {path}: {exc.strerror or exc}",
                                  key="kiosk.log") from None

    def write(self, record: TurnRecord) -> None:
        line = json.dumps(record.to_json(), ensure_ascii=False)
        with self._lock:
            for out in (self._file, self._stream):
                if out is not None:
                    out.write(line + "\n")
                    out.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
