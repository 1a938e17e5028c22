"""Silero VAD (ONNX, onnxruntime) and VadRecognizer: utterances end on measured silence, not a recogniser's rule."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AudioError
from ..extras import optional_import
from .audio import SAMPLE_RATE, SAMPLE_WIDTH
from .stt import Recognizer, Transcript
from .stt_models import package_data_dir

if TYPE_CHECKING:
    from ..config import Settings

VAD_MODEL = "silero-vad"  # registry name; the file is silero_vad.onnx (v6, MIT) from the silero-vad wheel
FRAME_SAMPLES = 512  # what the 16 kHz Silero model takes per call: 32 ms
FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
_CONTEXT = 64  # samples of the previous frame the model sees before each new one
# Below threshold - _HYSTERESIS counts as silence, above threshold as speech, between keeps the last state:
# the decision does not flicker on a soft syllable end (silero's own get_speech_timestamps does the same).
_HYSTERESIS = 0.15


class SileroVad:
    """Speech probability per 32 ms frame. One instance per stream (the model carries recurrent state); the
    onnxruntime session runs on one thread, so it never competes with llama.cpp for the other core."""

    def __init__(self, model: Path) -> None:
        ort = optional_import("onnxruntime", extra="voice")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise AudioError(f"{model}: not a Silero VAD model onnxruntime can load ({exc})") from None
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def probability(self, frame: bytes) -> float:
        """P(speech) for exactly FRAME_BYTES of 16 kHz mono S16LE."""
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
        window = np.concatenate([self._context, samples])[None, :]
        out, self._state = self._session.run(None, {"input": window, "state": self._state, "sr": self._rate})
        self._context = samples[-_CONTEXT:]
        return float(out[0][0])


@dataclass(frozen=True)
class VadSettings:
    """How speech is cut into utterances; seconds are rounded to whole 32 ms frames."""

    threshold: float = 0.5
    silence: float = 0.3  # trailing silence that ends an utterance (the final transcript)
    tentative: float | None = 0.1  # silence after which listeners get a tentative transcript (None: never)
    preroll: float = 0.3  # audio before the detected onset handed to the recogniser (onsets are detected late)


def _frames(seconds: float) -> int:
    return max(1, round(seconds / FRAME_SECONDS))


class VadRecognizer:
    """A Recognizer that feeds `inner` only the speech the VAD finds (plus pre-roll and trailing silence) and
    finalises it after `settings.silence` of silence.

    Events, one per accept(): the inner recogniser's partials; a tentative transcript (the last partial, marked
    `tentative`) once per pause of `settings.tentative`; a partial repeating the hypothesis when speech resumes
    after one (listeners drop what they started on the tentative text); the final at the end of the silence.
    """

    def __init__(self, inner: Recognizer, vad: SileroVad, settings: VadSettings) -> None:
        self.sample_rate = SAMPLE_RATE
        self._inner = inner
        self._vad = vad
        self._settings = settings
        self._preroll: collections.deque[bytes] = collections.deque(maxlen=_frames(settings.preroll))
        self._silence_frames = _frames(settings.silence)
        self._tentative_frames = _frames(settings.tentative) if settings.tentative is not None else None
        self._buffer = b""
        self._speech = False  # inside an utterance
        self._voiced = False  # the last frame's decision (with hysteresis)
        self._silent = 0  # frames of silence since the last voiced one
        self._partial = ""
        self._tentative_sent = False

    def _feed(self, frame: bytes) -> Transcript | None:
        result = self._inner.accept(frame)
        if result is None:
            return None
        if result.final:  # the inner recogniser's own endpoint (a long pause inside our window): pass it on
            self._partial = ""
            return result
        self._partial = result.text
        return result

    def _frame(self, frame: bytes) -> Transcript | None:
        p = self._vad.probability(frame)
        threshold = self._settings.threshold
        if p >= threshold:
            self._voiced = True
        elif p < threshold - _HYSTERESIS:
            self._voiced = False
        if not self._speech:
            self._preroll.append(frame)
            if not self._voiced:
                return None
            self._speech, self._silent, self._tentative_sent = True, 0, False
            event: Transcript | None = None
            for earlier in self._preroll:
                event = self._feed(earlier) or event
            self._preroll.clear()
            return event
        event = self._feed(frame)
        if self._tentative_sent and event is not None and not event.final and not self._voiced:
            event = None  # the hypothesis moving in the pause is not speech: only a resumption may follow a tentative
        if self._voiced:
            self._silent = 0
            if self._tentative_sent:
                self._tentative_sent = False
                return event or Transcript(self._partial, final=False)  # resumed: what was started is stale
            return event
        self._silent += 1
        if self._silent >= self._silence_frames:
            self._speech, self._tentative_sent = False, False
            final = self._inner.finalize()
            self._partial = ""
            return final if final is not None and final.text else None
        if (self._tentative_frames is not None and not self._tentative_sent and self._partial
                and self._silent >= self._tentative_frames):
            self._tentative_sent = True
            return Transcript(self._partial, final=False, tentative=True)
        return event

    def accept(self, chunk: bytes) -> Transcript | None:
        self._buffer += chunk
        best: Transcript | None = None
        while len(self._buffer) >= FRAME_BYTES:
            frame, self._buffer = self._buffer[:FRAME_BYTES], self._buffer[FRAME_BYTES:]
            event = self._frame(frame)
            # One event per call: a final outranks a tentative, which outranks a partial.
            if event is not None and (best is None or _rank(event) >= _rank(best)):
                best = event
        return best

    def finish(self) -> Transcript | None:
        if not self._speech:
            return None
        self._speech = False
        if self._buffer:
            self._inner.accept(self._buffer)
            self._buffer = b""
        return self._inner.finish()

    def finalize(self) -> Transcript | None:
        self._speech, self._tentative_sent, self._silent, self._partial = False, False, 0, ""
        return self._inner.finalize()

    def restart(self) -> None:
        """Forget the audio before now (pre-roll, the model's state): the stream was paused (a wake word gate)."""
        self._preroll.clear()
        self._buffer = b""
        self._vad.reset()
        self._voiced = False

    def close(self) -> None:
        self._inner.close()


def _rank(event: Transcript) -> int:
    return 2 if event.final else 1 if event.tentative else 0


def resolve_vad_model(settings: Settings, *, pull: bool = True) -> Path:
    """The Silero model file: pulled into the models dir, or the installed silero-vad wheel's copy."""
    from ..store import ModelStore

    store = ModelStore.from_settings(settings)
    entry = store.registry.find(VAD_MODEL)
    if entry is None:
        raise AudioError(f"the model registry has no {VAD_MODEL} entry")
    local = store.path_for(entry)
    if local.is_file():
        return local
    installed = _installed_model()
    if installed is not None:
        return installed
    if not pull:
        raise AudioError(f"the voice activity model is not pulled yet; run `clawd-edge models pull {VAD_MODEL}`")
    return store.pull(entry)


def _installed_model() -> Path | None:
    folder = package_data_dir("silero_vad", "data")
    path = folder / "silero_vad.onnx" if folder is not None else None
    return path if path is not None and path.is_file() else None
