"""Audio sources yielding 16 kHz mono S16 chunks: microphone (bounded queue), WAV/raw file, stdin."""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..errors import AudioError
from ..extras import optional_import
from .audio import SAMPLE_RATE, SAMPLE_WIDTH, Resampler, WavDecoder, parse_wav_header

log = logging.getLogger(__name__)

DEFAULT_CHUNK_MS = 100
DEFAULT_QUEUE_CHUNKS = 50
_HEADER_PEEK = 4096
_OVERFLOW_LOG_INTERVAL = 5.0
RAW_SUFFIXES = (".raw", ".pcm")


class AudioSource(Protocol):
    """Yields 16 kHz mono S16LE chunks until the audio ends or `close()` is called (from any thread)."""

    sample_rate: int

    def chunks(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


def import_sounddevice() -> Any:
    return optional_import("sounddevice", library="libportaudio2")


def native_rate(sd: Any, index: int | None, kind: str) -> int:
    """A device's default sample rate; AudioError (one line) when there is no such device, e.g. no sound card."""
    try:
        return int(sd.query_devices(index, kind)["default_samplerate"])
    except (sd.PortAudioError, ValueError) as exc:
        which = "default" if index is None else str(index)
        raise AudioError(f"no usable {kind} device ({which}: {exc}); is a sound card connected? "
                         "`clawd-edge doctor` lists the audio devices") from None


def find_device(spec: str | int | None, kind: str) -> int | None:
    """A PortAudio device index from an index or a (unique, case-insensitive, substring) name; None = default."""
    if spec is None or spec in ("", "default"):
        return None
    sd = import_sounddevice()
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = [(i, d) for i, d in enumerate(sd.query_devices()) if d[channels_key] > 0]
    listing = ", ".join(f"{i}: {d['name']}" for i, d in devices) or "none"
    if isinstance(spec, int) or str(spec).isdigit():
        index = int(spec)
        if any(i == index for i, _ in devices):
            return index
        raise AudioError(f"no {kind} device with index {index}; {kind} devices are: {listing}")
    wanted = str(spec).lower()
    exact = [i for i, d in devices if str(d["name"]).lower() == wanted]
    if exact:
        return exact[0]
    partial = [i for i, d in devices if wanted in str(d["name"]).lower()]
    if len(partial) == 1:
        return partial[0]
    why = "matches several" if partial else "matches no"
    raise AudioError(f"{kind} device {spec!r} {why} {kind} device; {kind} devices are: {listing}")


class MicSource:
    """A microphone through `sounddevice.RawInputStream`; the callback only enqueues, never blocks.

    When the consumer falls behind, new chunks are dropped (counted in `overflows`, logged from the
    consumer side because logging inside the audio callback could block it).
    """

    def __init__(self, device: str | int | None = None, *, chunk_ms: int = DEFAULT_CHUNK_MS,
                 queue_chunks: int = DEFAULT_QUEUE_CHUNKS, capture_rate: int | None = None) -> None:
        self.sample_rate = SAMPLE_RATE
        self.device = device
        self.chunk_ms = chunk_ms
        self.capture_rate = capture_rate
        self.overflows = 0  # chunks dropped because the queue was full
        self.device_overflows = 0  # PortAudio's own input-overflow flags
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_chunks)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status and status.input_overflow:
            self.device_overflows += 1
        try:
            self._queue.put_nowait(bytes(indata))
        except queue.Full:
            self.overflows += 1

    def _open(self) -> int:
        sd = import_sounddevice()
        index = find_device(self.device, "input")
        rates = [self.capture_rate] if self.capture_rate else [SAMPLE_RATE]
        if not self.capture_rate:
            # Some hardware only captures at its native rate; then we resample ourselves.
            native = native_rate(sd, index, "input")
            if native != SAMPLE_RATE:
                rates.append(native)
        error: Exception | None = None
        for rate in rates:
            try:
                stream = sd.RawInputStream(samplerate=rate, channels=1, dtype="int16", device=index,
                                           blocksize=rate * self.chunk_ms // 1000, callback=self._callback)
            except sd.PortAudioError as exc:
                error = exc
                continue
            with self._lock:
                self._stream = stream
            try:
                stream.start()
            except sd.PortAudioError as exc:
                raise AudioError(f"cannot start input device {self.device or 'default'}: {exc}") from None
            return rate
        raise AudioError(f"cannot open input device {self.device or 'default'}: {error}")

    def chunks(self) -> Iterator[bytes]:
        rate = self._open()
        resampler = Resampler(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None
        reported, last_report = 0, 0.0
        try:
            while not self._closed.is_set():
                try:
                    data = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if self.overflows != reported and time.monotonic() - last_report > _OVERFLOW_LOG_INTERVAL:
                    log.warning("microphone queue full: %d chunks of %d ms dropped so far (recogniser too slow)",
                                self.overflows, self.chunk_ms)
                    reported, last_report = self.overflows, time.monotonic()
                if resampler is not None:
                    data = resampler.push(np.frombuffer(data, dtype="<i2")).astype("<i2").tobytes()
                if data:
                    yield data
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()

    def close(self) -> None:
        """Stop capturing now, even if the consumer never resumes chunks() (its generator may just be dropped)."""
        self._closed.set()
        self._shutdown()


class StreamSource:
    """WAV or raw PCM (16 kHz mono S16LE) from a binary stream: a file or stdin.

    A 16 kHz mono 16-bit WAV or raw stream is passed through chunk by chunk, so a live pipe
    (`arecord -f S16_LE -r 16000 | clawd-edge listen --input -`) works; other WAV formats are converted
    on the fly (channels averaged, band-limited resampling).
    """

    def __init__(self, stream: BinaryIO, *, name: str = "stdin", chunk_ms: int = DEFAULT_CHUNK_MS,
                 close_stream: bool = False, allow_raw: bool = True) -> None:
        self.sample_rate = SAMPLE_RATE
        self.name = name
        self.allow_raw = allow_raw
        self.chunk_bytes = SAMPLE_RATE * SAMPLE_WIDTH * chunk_ms // 1000
        self._stream = stream
        self._close_stream = close_stream
        self._closed = threading.Event()

    def _read(self, size: int) -> bytes:
        """Up to `size` bytes; short only at the end of the stream (pipes return partial reads)."""
        parts: list[bytes] = []
        remaining = size
        while remaining > 0 and not self._closed.is_set():
            block = self._stream.read(remaining)
            if not block:
                break
            parts.append(block)
            remaining -= len(block)
        return b"".join(parts)

    def chunks(self) -> Iterator[bytes]:
        try:
            head = self._read(12)
            if head[:4] == b"RIFF":
                yield from self._wav(head)
            elif not head:
                raise AudioError(f"{self.name}: no audio (the input is empty)")
            elif not self.allow_raw:
                raise AudioError(f"{self.name}: not a WAV file; raw 16 kHz mono S16LE PCM files must be named "
                                 f"{' or '.join(RAW_SUFFIXES)}")
            else:
                if head and len(head) % SAMPLE_WIDTH and not self._closed.is_set():
                    head += self._read(1)
                yield from self._raw(head)
        finally:
            if self._close_stream:
                self._stream.close()

    def _raw(self, pending: bytes) -> Iterator[bytes]:
        while not self._closed.is_set():
            block = self._read(self.chunk_bytes - len(pending))
            data = pending + block
            pending = b""
            usable = len(data) - len(data) % SAMPLE_WIDTH
            if usable:
                yield data[:usable]
            if len(data) < self.chunk_bytes:
                return

    def _wav(self, head: bytes) -> Iterator[bytes]:
        header = head + self._read(_HEADER_PEEK)
        fmt = parse_wav_header(header, self.name)
        body = header[fmt.data_offset:]
        remaining = fmt.data_size - len(body)
        decoder = WavDecoder(fmt)
        frame = fmt.frame_bytes
        in_chunk = max(frame, fmt.sample_rate * frame * self.chunk_bytes // (SAMPLE_RATE * SAMPLE_WIDTH))
        in_chunk -= in_chunk % frame
        pending = body if remaining >= 0 else body[:fmt.data_size]
        remaining = max(0, remaining)
        while True:
            while len(pending) < in_chunk and remaining > 0 and not self._closed.is_set():
                block = self._read(min(in_chunk - len(pending), remaining))
                if not block:
                    remaining = 0
                    break
                remaining -= len(block)
                pending += block
            take = in_chunk if len(pending) >= in_chunk else len(pending) - len(pending) % frame
            if take == 0:
                break
            data, pending = pending[:take], pending[take:]
            out = decoder.push(data)
            if out:
                yield out
        tail = decoder.flush()
        if tail:
            yield tail

    def close(self) -> None:
        self._closed.set()


def open_source(spec: str | None, *, chunk_ms: int = DEFAULT_CHUNK_MS, queue_chunks: int = DEFAULT_QUEUE_CHUNKS,
                stdin: BinaryIO | None = None) -> AudioSource:
    """`mic`, `mic:NAME|INDEX`, `file:PATH` (or a bare path), `-` (stdin): WAV or raw 16 kHz mono S16LE."""
    if spec is None or spec == "mic":
        return MicSource(None, chunk_ms=chunk_ms, queue_chunks=queue_chunks)
    if spec.startswith("mic:"):
        return MicSource(spec[4:] or None, chunk_ms=chunk_ms, queue_chunks=queue_chunks)
    if spec == "-":
        return StreamSource(stdin if stdin is not None else sys.stdin.buffer, name="stdin", chunk_ms=chunk_ms)
    path = Path(spec[5:] if spec.startswith("file:") else spec).expanduser()
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AudioError(f"{path}: cannot open audio input: {exc.strerror or exc}") from None
    return StreamSource(fh, name=str(path), chunk_ms=chunk_ms, close_stream=True,
                        allow_raw=path.suffix.lower() in RAW_SUFFIXES)
