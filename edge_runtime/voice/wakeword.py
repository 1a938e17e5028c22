"""Wake word (microWakeWord models bundled in pymicro-wakeword): the recogniser hears nothing until it is said."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import AudioError
from ..extras import optional_import
from .audio import SAMPLE_RATE, SAMPLE_WIDTH
from .stt import Recognizer, Transcript

BUILTIN_WAKE_WORDS = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")


class WakeWordDetector:
    """One stream's microWakeWord model and feature frontend (both stateful). `wake_word` is a built-in model
    name or the path of a microWakeWord JSON config (its .tflite beside it), the format Home Assistant's voice
    satellites use."""

    def __init__(self, wake_word: str) -> None:
        mww = optional_import("pymicro_wakeword", what="pymicro-wakeword", extra="wakeword")
        try:
            if wake_word in BUILTIN_WAKE_WORDS:
                self._model: Any = mww.MicroWakeWord.from_builtin(mww.Model(wake_word))
            else:
                self._model = mww.MicroWakeWord.from_config(Path(wake_word).expanduser())
        except (OSError, ValueError, KeyError) as exc:
            raise AudioError(f"wake word {wake_word}: not a built-in one ({', '.join(BUILTIN_WAKE_WORDS)}) or a "
                             f"microWakeWord JSON config with its model ({exc})") from None
        self._features: Any = mww.MicroWakeWordFeatures()
        self.name = str(self._model.wake_word)

    def heard(self, chunk: bytes) -> bool:
        """True once the wake word ends in the audio so far (16 kHz mono S16LE)."""
        found = False
        for features in self._features.process_streaming(chunk):
            if self._model.process_streaming(features):
                found = True
        return found

    def reset(self) -> None:
        self._model.reset()
        self._features.reset()


class WakeWordRecognizer:
    """Nothing reaches `inner` until the wake word is heard; then the next `window` seconds of audio do (an
    utterance started within them is heard to its end), and after its final transcript it sleeps again.

    Times are counted in audio, not on the clock, so a file or a late thread behaves like a live microphone.
    """

    def __init__(self, inner: Recognizer, detector: WakeWordDetector, *, window: float = 8.0,
                 restart: Callable[[], None] | None = None, on_wake: Callable[[], None] | None = None) -> None:
        """`restart` makes `inner` forget what it was fed before it slept (a VAD's pre-roll and state)."""
        self.sample_rate = SAMPLE_RATE
        self._inner = inner
        self._detector = detector
        self._window = int(window * SAMPLE_RATE * SAMPLE_WIDTH)
        self._restart = restart
        self._on_wake = on_wake
        self._awake_bytes: int | None = None  # audio fed since the wake word while awake
        self._heard_speech = False

    def accept(self, chunk: bytes) -> Transcript | None:
        if self._awake_bytes is None:
            if self._detector.heard(chunk):
                self._awake_bytes, self._heard_speech = 0, False
                if self._restart is not None:
                    self._restart()
                if self._on_wake is not None:
                    self._on_wake()
            return None
        self._awake_bytes += len(chunk)
        result = self._inner.accept(chunk)
        if result is not None and not result.final:
            self._heard_speech = True
        if result is not None and result.final:
            self._sleep()
        elif not self._heard_speech and self._awake_bytes >= self._window:
            self._sleep()  # woken, but nobody went on
        return result

    def _sleep(self) -> None:
        self._awake_bytes = None
        self._detector.reset()  # the words just heard must not wake it again

    def finish(self) -> Transcript | None:
        return self._inner.finish() if self._awake_bytes is not None else None

    def finalize(self) -> Transcript | None:
        result = self._inner.finalize()
        self._sleep()
        return result

    def close(self) -> None:
        self._inner.close()
