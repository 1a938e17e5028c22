"""WAV decoding/encoding, resampling and file/stdin sources (pure data, no devices)."""
from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import AudioError
from edge_runtime.voice.audio import SAMPLE_RATE, Audio, Resampler, decode_wav, encode_wav, resample
from edge_runtime.voice.sources import StreamSource, open_source


def tone(freq: float, rate: int, seconds: float, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int, *, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    """A WAV written by hand (independent of encode_wav) in any PCM/float layout."""
    data = samples.tobytes()
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
            + b"data" + struct.pack("<I", len(data)) + data)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def test_encode_decode_roundtrip() -> None:
    audio = Audio(tone(440, SAMPLE_RATE, 0.5).tobytes(), SAMPLE_RATE)
    assert decode_wav(encode_wav(audio)) == audio


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_decode_integer_widths_and_stereo(bits: int) -> None:
    mono = tone(1000, 16000, 0.2).astype(np.int32)
    stereo = np.stack([mono, mono], axis=1).reshape(-1)
    if bits == 8:
        raw = ((stereo >> 8) + 128).astype(np.uint8)
    elif bits == 16:
        raw = stereo.astype("<i2")
    elif bits == 24:
        as32 = (stereo << 8).astype("<i4").view(np.uint8).reshape(-1, 4)
        raw = as32[:, :3].copy()
    else:
        raw = (stereo << 16).astype("<i4")
    audio = decode_wav(wav_bytes(raw, 16000, channels=2, bits=bits))
    assert audio.sample_rate == 16000 and audio.frames == len(mono)
    tolerance = 256 if bits == 8 else 1
    assert np.max(np.abs(audio.samples().astype(np.int32) - mono)) <= tolerance


def test_decode_float32() -> None:
    samples = (tone(500, 22050, 0.1) / 32767.0).astype("<f4")
    audio = decode_wav(wav_bytes(samples, 22050, bits=32, tag=3))
    assert np.max(np.abs(audio.samples().astype(np.int32) - tone(500, 22050, 0.1))) <= 1


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"hello, this is not audio at all" * 10, "not a WAV file"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "no data chunk"),
    (wav_bytes(tone(100, 16000, 0.1), 6000), "sample rate 6000 Hz is not supported"),
    (wav_bytes(np.zeros(0, np.int16), 16000), "no audio samples"),
    (wav_bytes(tone(100, 16000, 0.1), 16000, tag=2), "unsupported WAV encoding"),
])
def test_decode_rejects_bad_input(data: bytes, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        decode_wav(data, "upload.wav")


@pytest.mark.parametrize("src", [8000, 22050, 44100, 48000])
def test_resample_keeps_frequency_and_length(src: int) -> None:
    out = resample(tone(1000, src, 1.0), src, SAMPLE_RATE)
    assert len(out) == SAMPLE_RATE
    assert abs(dominant_hz(out, SAMPLE_RATE) - 1000) < 2
    # Amplitude survives (pass band), no clicks at the edges beyond the tone's own level.
    assert 0.9 * 8000 < np.max(np.abs(out[100:-100])) < 1.05 * 8000


def test_resample_removes_what_the_target_cannot_carry() -> None:
    out = resample(tone(10000, 44100, 1.0), 44100, SAMPLE_RATE)  # above the 8 kHz Nyquist of 16 kHz
    assert np.sqrt(np.mean(out[200:-200].astype(np.float64) ** 2)) < 0.01 * 8000


def test_streaming_resampler_matches_whole_signal() -> None:
    signal = tone(700, 22050, 1.3)
    whole = resample(signal, 22050, SAMPLE_RATE)
    stream = Resampler(22050, SAMPLE_RATE)
    parts = [stream.push(signal[i:i + 777]) for i in range(0, len(signal), 777)] + [stream.flush()]
    assert np.array_equal(np.concatenate(parts), whole)


def test_file_source_resamples_a_44k_stereo_wav(tmp_path: Path) -> None:
    mono = tone(1000, 44100, 1.0)
    path = tmp_path / "in.wav"
    path.write_bytes(wav_bytes(np.stack([mono, mono], axis=1).reshape(-1), 44100, channels=2))
    source = open_source(f"file:{path}")
    chunks = list(source.chunks())
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2")
    assert abs(len(pcm) - SAMPLE_RATE) <= 1
    assert abs(dominant_hz(pcm, SAMPLE_RATE) - 1000) < 2
    assert max(len(c) for c in chunks) <= 2 * SAMPLE_RATE // 10 + 64  # ~100 ms chunks


def test_file_source_raw_needs_a_raw_suffix(tmp_path: Path) -> None:
    pcm = tone(300, SAMPLE_RATE, 0.35).tobytes()
    raw = tmp_path / "speech.raw"
    raw.write_bytes(pcm)
    assert b"".join(open_source(str(raw)).chunks()) == pcm
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n" * 100)
    with pytest.raises(AudioError, match="not a WAV file"):
        list(open_source(str(text)).chunks())
    with pytest.raises(AudioError, match="cannot open"):
        open_source(str(tmp_path / "missing.wav"))


def test_stdin_source_streams_a_pipe_as_it_arrives() -> None:
    """A 16 kHz WAV arriving over a pipe is yielded chunk by chunk, before the writer sends the rest."""
    read_fd, write_fd = os.pipe()
    audio = Audio(tone(440, SAMPLE_RATE, 1.0).tobytes(), SAMPLE_RATE)
    data = encode_wav(audio)
    release = threading.Event()
    writer_waited_too_long: list[bool] = []

    def writer() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data[:len(data) // 2])
            out.flush()
            # A source that waited for the end of the stream would leave us here until the timeout.
            writer_waited_too_long.append(not release.wait(10))
            out.write(data[len(data) // 2:])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        chunks = StreamSource(stream).chunks()  # type: ignore[arg-type]
        got = [next(chunks)]
        release.set()
        got.extend(chunks)
    thread.join()
    assert writer_waited_too_long == [False]
    assert b"".join(got) == audio.pcm


def test_stdin_source_rejects_empty_input() -> None:
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream, pytest.raises(AudioError, match="empty"):
        list(StreamSource(stream).chunks())
