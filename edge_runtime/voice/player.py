"""Playback through sounddevice in short blocks, so stop() (barge-in) cuts the sound within one block."""
from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import AudioError
from .audio import SAMPLE_WIDTH, Audio, Resampler
from .sources import find_device, import_sounddevice, native_rate

DEFAULT_BLOCK_MS = 50


class Player:
    """Plays Audio on an output device (name, index or None = default); play() blocks, stop() may come
    from any thread and interrupts the current play() within about one block."""

    def __init__(self, device: str | int | None = None, *, block_ms: int = DEFAULT_BLOCK_MS) -> None:
        self.device = device
        self.block_ms = block_ms
        self.frames_played = 0  # frames written by the last play()
        self._stop = threading.Event()
        self._playing = threading.Event()

    @property
    def playing(self) -> bool:
        return self._playing.is_set()

    def stop(self) -> None:
        self._stop.set()

    def _open(self, sd: Any, index: int | None, rate: int) -> tuple[Any, int]:
        """An int16 mono stream at `rate`, or at the device's native rate when it refuses ours."""
        try:
            return sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16", device=index), rate
        except sd.PortAudioError as first:
            native = native_rate(sd, index, "output")
            if native == rate:
                raise AudioError(f"cannot open output device {self.device or 'default'}: {first}") from None
            try:
                return sd.RawOutputStream(samplerate=native, channels=1, dtype="int16", device=index), native
            except sd.PortAudioError as exc:
                raise AudioError(f"cannot open output device {self.device or 'default'}: {exc}") from None

    def play(self, audio: Audio | Iterable[Audio], cancel: threading.Event | None = None) -> bool:
        """Play one clip or a stream of clips (same sample rate); False if stop() or `cancel` cut it short."""
        self._stop.clear()
        self.frames_played = 0
        clips = iter([audio] if isinstance(audio, Audio) else audio)
        first = next(clips, None)
        if first is None:
            return True
        sd = import_sounddevice()
        index = find_device(self.device, "output")
        stream, rate = self._open(sd, index, first.sample_rate)
        resampler = Resampler(first.sample_rate, rate) if rate != first.sample_rate else None
        self._playing.set()
        stopped = False
        try:
            stream.start()
            clip: Audio | None = first
            while clip is not None and not stopped:
                if clip.sample_rate != first.sample_rate:
                    raise AudioError(f"cannot mix {first.sample_rate} Hz and {clip.sample_rate} Hz clips in one "
                                     "play() call")
                stopped = not self._write(stream, clip, resampler, cancel)
                clip = None if stopped else next(clips, None)
            # The clip iterator may have ended because the caller cancelled while it waited for a clip.
            stopped = stopped or self._cancelled(cancel)
            if resampler is not None and not stopped:
                stream.write(resampler.flush().astype("<i2").tobytes())
        except sd.PortAudioError as exc:  # e.g. the device was unplugged while playing
            stopped = True
            raise AudioError(f"output device {self.device or 'default'} failed: {exc}") from None
        finally:
            self._playing.clear()
            if stopped:
                stream.abort()  # drop what is still buffered: barge-in must be silent at once
            else:
                stream.stop()  # let the buffered tail play out
            stream.close()
        return not stopped

    def _cancelled(self, cancel: threading.Event | None) -> bool:
        return self._stop.is_set() or (cancel is not None and cancel.is_set())

    def _write(self, stream: Any, clip: Audio, resampler: Resampler | None, cancel: threading.Event | None) -> bool:
        block = clip.sample_rate * self.block_ms // 1000 * SAMPLE_WIDTH
        for start in range(0, len(clip.pcm), block):
            if self._cancelled(cancel):
                return False
            data = clip.pcm[start:start + block]
            if resampler is not None:
                data = resampler.push(np.frombuffer(data, dtype="<i2")).astype("<i2").tobytes()
            stream.write(data)
            self.frames_played += len(clip.pcm[start:start + block]) // SAMPLE_WIDTH
        return not self._cancelled(cancel)
