"""PCM audio values: WAV decoding/encoding, band-limited resampling to the recognisers' 16 kHz mono S16."""
from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import AudioError

SAMPLE_RATE = 16000
SAMPLE_WIDTH = 2
# Rates a WAV upload or file may have; anything else is refused rather than guessed at.
SUPPORTED_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
MAX_CHANNELS = 8

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_HALF_TAPS = 16  # kernel half-width in output-band samples: ~-60 dB aliasing, fast enough on 2 cores
_BLOCK = 4096
# Source audio converted per step when streaming a WAV: the working set is this much audio (a few MB of float64
# at most), never the whole file; uploads used to become several full-length float64 copies (1.4 GB for 53 min).
_DECODE_SECONDS = 1


@dataclass(frozen=True)
class Audio:
    """Mono signed 16-bit little-endian PCM at `sample_rate`."""

    pcm: bytes
    sample_rate: int

    @property
    def frames(self) -> int:
        return len(self.pcm) // SAMPLE_WIDTH

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype="<i2")

    def at_rate(self, rate: int) -> Audio:
        if rate == self.sample_rate:
            return self
        return Audio(resample(self.samples(), self.sample_rate, rate).astype("<i2").tobytes(), rate)

    def rms(self) -> float:
        """Root mean square level in S16 units (0 for digital silence)."""
        if self.frames == 0:
            return 0.0
        return float(np.sqrt(np.mean(self.samples().astype(np.float64) ** 2)))


@dataclass(frozen=True)
class WavFormat:
    """What a WAV header says, before any conversion."""

    sample_rate: int
    channels: int
    bits: int
    float_samples: bool
    data_offset: int
    data_size: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8


def parse_wav_header(data: bytes, name: str = "audio") -> WavFormat:
    """Read RIFF/WAVE chunks up to `data`; streaming writers (espeak-ng, arecord) put a bogus size there."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{name}: not a WAV file (expected RIFF/WAVE PCM audio)")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioError(f"{name}: truncated WAV format chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAVE_FORMAT_EXTENSIBLE and size >= 40 and body + 26 <= len(data):
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioError(f"{name}: WAV data chunk comes before its format chunk")
            tag, channels, rate, bits = fmt
            if tag == _WAVE_FORMAT_FLOAT and bits == 32:
                floats = True
            elif tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32):
                floats = False
            else:
                raise AudioError(f"{name}: unsupported WAV encoding (format tag {tag}, {bits} bits); "
                                 "use PCM 8/16/24/32-bit or 32-bit float")
            if not 1 <= channels <= MAX_CHANNELS:
                raise AudioError(f"{name}: {channels} channels is not supported (1 to {MAX_CHANNELS})")
            if rate not in SUPPORTED_RATES:
                raise AudioError(f"{name}: sample rate {rate} Hz is not supported; use one of "
                                 + ", ".join(str(r) for r in SUPPORTED_RATES) + " Hz (16000 preferred)")
            return WavFormat(rate, channels, bits, floats, body, size)
        pos = body + size + (size & 1)
    raise AudioError(f"{name}: truncated WAV file (no data chunk)")


def pcm_to_mono16(raw: bytes, fmt: WavFormat) -> np.ndarray:
    """Interleaved samples in the header's encoding -> mono int16 (channels averaged)."""
    width = fmt.bits // 8
    usable = len(raw) - len(raw) % (width * fmt.channels)
    raw = raw[:usable]
    if fmt.float_samples:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float64) * 32767.0
    elif fmt.bits == 8:
        values = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif fmt.bits == 16:
        values = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    elif fmt.bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        values = (np.where(ints >= 1 << 23, ints - (1 << 24), ints) / 256.0).astype(np.float64)
    else:
        values = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    if fmt.channels > 1:
        values = values.reshape(-1, fmt.channels).mean(axis=1)
    return np.clip(np.round(values), -32768, 32767).astype(np.int16)


def wav_body(data: bytes, name: str = "audio") -> tuple[WavFormat, memoryview]:
    """A whole WAV file's format and its whole sample frames (a view, no copy), checked before any decoding.

    The data chunk's size is trusted only up to the bytes present (streaming writers put a bogus one there), so
    `len(body) // fmt.frame_bytes / fmt.sample_rate` is the real duration.
    """
    if not data:
        raise AudioError(f"{name}: the file is empty")
    fmt = parse_wav_header(data, name)
    available = min(fmt.data_size, len(data) - fmt.data_offset)
    usable = available - available % fmt.frame_bytes
    if usable <= 0:
        raise AudioError(f"{name}: the WAV file contains no audio samples")
    return fmt, memoryview(data)[fmt.data_offset:fmt.data_offset + usable]


def decode_wav(data: bytes, name: str = "audio") -> Audio:
    """A whole WAV file -> mono S16 at its own rate; empty, non-WAV or unsupported input is an AudioError."""
    fmt, body = wav_body(data, name)
    return Audio(pcm_to_mono16(bytes(body), fmt).astype("<i2").tobytes(), fmt.sample_rate)


def decode_chunks(fmt: WavFormat, body: memoryview, chunk_bytes: int) -> Iterator[bytes]:
    """`body` (whole frames in `fmt`) as 16 kHz mono S16 chunks of exactly `chunk_bytes` (the last may be
    shorter), converted one block at a time: memory does not grow with the duration. The chunks are the same
    bytes as slicing `decode_wav(...).at_rate(SAMPLE_RATE)`, so a streamed upload is recognised identically."""
    decoder = WavDecoder(fmt)
    step = fmt.sample_rate * _DECODE_SECONDS * fmt.frame_bytes
    pending = b""
    for start in range(0, len(body), step):
        pending += decoder.push(body[start:start + step])
        usable = len(pending) - len(pending) % chunk_bytes
        for offset in range(0, usable, chunk_bytes):
            yield pending[offset:offset + chunk_bytes]
        pending = pending[usable:]
    pending += decoder.flush()
    for offset in range(0, len(pending), chunk_bytes):
        yield pending[offset:offset + chunk_bytes]


def encode_wav(audio: Audio) -> bytes:
    """Mono S16 PCM in a canonical 44-byte-header WAV container."""
    out = io.BytesIO()
    size = len(audio.pcm)
    out.write(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE")
    out.write(b"fmt " + struct.pack("<IHHIIHH", 16, _WAVE_FORMAT_PCM, 1, audio.sample_rate,
                                    audio.sample_rate * SAMPLE_WIDTH, SAMPLE_WIDTH, 16))
    out.write(b"data" + struct.pack("<I", size) + audio.pcm)
    return out.getvalue()


class Resampler:
    """Streaming windowed-sinc sample-rate converter (int16 in, int16 out); state carries across pushes."""

    def __init__(self, src: int, dst: int) -> None:
        if src <= 0 or dst <= 0:
            raise AudioError(f"cannot resample {src} Hz to {dst} Hz")
        self.src, self.dst = src, dst
        self.step = src / dst  # source samples per output sample
        self.cutoff = min(1.0, dst / src) * 0.95  # fraction of the source Nyquist kept
        self.half = math.ceil(_HALF_TAPS / self.cutoff)
        self.offsets = np.arange(-self.half + 1, self.half + 1)
        # Buffer of source samples; index 0 of the buffer is absolute source index `self.start`.
        self.buffer = np.zeros(self.half, dtype=np.float64)
        self.start = -self.half
        self.consumed = 0  # source samples pushed so far
        self.produced = 0  # output samples emitted so far

    def _emit(self, limit: int) -> np.ndarray:
        """Outputs whose whole kernel lies inside the buffer, up to output index `limit` (exclusive)."""
        last_source = self.start + len(self.buffer) - 1
        available = math.floor((last_source - self.half) / self.step) + 1
        end = min(limit, available)
        if end <= self.produced:
            return np.zeros(0, dtype=np.int16)
        out = np.empty(end - self.produced, dtype=np.float64)
        for first in range(self.produced, end, _BLOCK):
            n = np.arange(first, min(end, first + _BLOCK))
            t = n * self.step
            base = np.floor(t).astype(np.int64)
            distance = (t - base)[:, None] - self.offsets[None, :]
            u = distance / self.half
            window = 0.42 + 0.5 * np.cos(np.pi * u) + 0.08 * np.cos(2 * np.pi * u)
            kernel = self.cutoff * np.sinc(self.cutoff * distance) * window
            taps = self.buffer[(base - self.start)[:, None] + self.offsets[None, :]]
            out[first - self.produced:first - self.produced + len(n)] = (taps * kernel).sum(axis=1)
        self.produced = end
        keep_from = math.floor(self.produced * self.step) - self.half
        if keep_from > self.start:
            self.buffer = self.buffer[keep_from - self.start:]
            self.start = keep_from
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float64)])
        self.consumed += len(samples)
        return self._emit(math.floor(self.consumed / self.step))

    def flush(self) -> np.ndarray:
        """The remaining outputs, treating the signal as silent after its end."""
        total = round(self.consumed / self.step)
        self.buffer = np.concatenate([self.buffer, np.zeros(self.half + 1)])
        return self._emit(total)


class WavDecoder:
    """Converts a WAV's sample bytes, block by block, to 16 kHz mono S16 (resampler state carries across blocks)."""

    def __init__(self, fmt: WavFormat) -> None:
        self.fmt = fmt
        self.passthrough = (fmt.sample_rate == SAMPLE_RATE and fmt.channels == 1 and fmt.bits == 16
                            and not fmt.float_samples)
        self.resampler = None if fmt.sample_rate == SAMPLE_RATE else Resampler(fmt.sample_rate, SAMPLE_RATE)

    def push(self, raw: bytes | memoryview) -> bytes:
        """Whole frames in -> whatever output they complete (a resampler holds back its kernel's width)."""
        if self.passthrough:
            return bytes(raw)
        mono = pcm_to_mono16(bytes(raw), self.fmt)
        out = self.resampler.push(mono) if self.resampler is not None else mono
        return out.astype("<i2").tobytes()

    def flush(self) -> bytes:
        return self.resampler.flush().astype("<i2").tobytes() if self.resampler is not None else b""


def resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """A whole int16 signal from `src` Hz to `dst` Hz (band-limited, so no aliasing when downsampling)."""
    if src == dst:
        return samples.astype(np.int16)
    resampler = Resampler(src, dst)
    return np.concatenate([resampler.push(samples), resampler.flush()])
