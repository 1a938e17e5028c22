"""Timing taps on the voice module's audio path: when speech really ended, when the first reply audio left."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..voice.audio import SAMPLE_RATE, SAMPLE_WIDTH, Audio
from ..voice.player import Player
from ..voice.sources import AudioSource


class TimedSource:
    """Wraps an AudioSource: remembers when the last chunk louder than `threshold` (RMS) arrived.

    That arrival time is the end of speech: the recogniser needs more silence before it calls the utterance
    final, and that wait is part of the latency a visitor feels. With `realtime`, chunks are released no faster
    than a microphone would deliver them (a file or an unpaced virtual device standing in for a live mic), so
    the timestamps mean what they would mean live.
    """

    def __init__(self, source: AudioSource, *, threshold: int, realtime: bool = False) -> None:
        self.source = source
        self.sample_rate = source.sample_rate
        self.threshold = threshold
        self.realtime = realtime
        self._lock = threading.Lock()
        self._last_voiced: float | None = None

    def last_voiced(self) -> float | None:
        """time.time() at which the most recent voiced chunk was delivered."""
        with self._lock:
            return self._last_voiced

    def chunks(self) -> Iterator[bytes]:
        started = time.monotonic()
        delivered = 0.0  # seconds of audio handed on
        for chunk in self.source.chunks():
            delivered += len(chunk) / (SAMPLE_RATE * SAMPLE_WIDTH)
            if self.realtime:
                delay = started + delivered - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            samples = np.frombuffer(chunk, dtype="<i2").astype(np.float32)
            if samples.size and float(np.sqrt(np.mean(samples * samples))) >= self.threshold:
                with self._lock:
                    self._last_voiced = time.time()
            yield chunk

    def close(self) -> None:
        self.source.close()


class TimedPlayer(Player):
    """A Player that reports the moment the first clip of each reply is handed to the output device."""

    def __init__(self, device: str | int | None = None) -> None:
        super().__init__(device)
        self.on_first_audio: Callable[[], None] | None = None

    def play(self, audio: Audio | Iterable[Audio], cancel: threading.Event | None = None) -> bool:
        callback = self.on_first_audio

        def tapped(clips: Iterable[Audio]) -> Iterator[Audio]:
            first = True
            for clip in clips:
                if first and callback is not None:
                    callback()
                first = False
                yield clip

        return super().play(tapped([audio] if isinstance(audio, Audio) else audio), cancel)
