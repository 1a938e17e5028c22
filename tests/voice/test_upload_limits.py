"""One small upload must never kill, brick or exhaust the daemon: /v1/audio/transcriptions on a real daemon.

The WAVs are made here (numpy + wave, espeak-ng speech); the daemon is `clawd-edge serve` as a subprocess
(tests/server/conftest.py) with the voice module on pocketsphinx and its default limits.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.voice.audio import SAMPLE_RATE, Audio, encode_wav
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import Recognizer, Transcript, transcribe
from tests.server.conftest import Daemon, start_daemon

VOICE = {"enabled": True, "input": "mic:unused", "language": "en", "stt": "pocketsphinx"}
SENTENCE = "the quick brown fox jumps over the lazy dog and runs far away into the forest"
LONG_SPEECH_SECONDS = 100  # under the 120 s default; pocketsphinx needs ~45 s of CPU for it here
BOUNDARY = "clawdvoiceboundary"
QUESTION = "what is the capital of france answer in one sentence"


def wav_bytes(samples: np.ndarray, rate: int, width: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def sentence() -> Audio:
    from edge_runtime.voice.tts import EspeakTTS

    return EspeakTTS("en-us", rate=160).synthesize(SENTENCE).at_rate(SAMPLE_RATE)


@pytest.fixture(scope="module")
def question(piper_question: Audio) -> bytes:
    """A short WAV that pocketsphinx (LM mode) transcribes exactly as QUESTION."""
    return encode_wav(piper_question)


@pytest.fixture(scope="module")
def long_speech(sentence: Audio) -> bytes:
    """~100 s of continuous speech (the sentence over and over): a long, CPU-heavy but allowed upload."""
    repeats = int(LONG_SPEECH_SECONDS / sentence.duration)
    return encode_wav(Audio(sentence.pcm * repeats, SAMPLE_RATE))


@pytest.fixture(scope="module")
def voice_daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_daemon(tmp_path_factory.mktemp("voice-limits"), smollm2_path, api_key=None,
                           extra={"modules": {"voice": VOICE}})
    yield running
    assert running.terminate() == 0, running.log()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15, after the parenthesised name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def cpu_growth(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def post_wav(daemon: Daemon, wav: bytes, timeout: float) -> httpx.Response:
    with httpx.Client(base_url=daemon.url, timeout=timeout) as client:
        return client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                           files={"file": ("speech.wav", wav, "audio/wav")})


def send_and_hang_up(daemon: Daemon, wav: bytes, after: float) -> None:
    """Upload `wav` over a raw socket, wait `after` seconds without reading an answer, then disconnect."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()
    body = head + wav + f"\r\n--{BOUNDARY}--\r\n".encode()
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode() + body)
        time.sleep(after)


def wait_until_busy(pid: int, timeout: float = 10.0) -> None:
    """Until the daemon burns CPU (the transcription has started)."""
    deadline = time.monotonic() + timeout
    while cpu_growth(pid, 0.5) < 0.25:
        assert time.monotonic() < deadline, "the transcription never started"


def test_a_53_minute_wav_is_refused_from_its_header(voice_daemon: Daemon) -> None:
    """24.5 MiB of 8 kHz 8-bit audio is under the upload limit but 53 minutes long: a quick 400 naming the setting,
    without decoding it (it used to take the daemon from ~0.6 to 2 GB, then ~16 minutes of CPU)."""
    samples = np.random.default_rng(0).integers(0, 256, int(24.5 * 1024 * 1024) - 44, dtype=np.uint8)
    wav = wav_bytes(samples, 8000, 1)
    pid = voice_daemon.proc.pid
    rss_before, cpu_before = peak_rss_mb(pid), cpu_seconds(pid)
    began = time.monotonic()
    response = post_wav(voice_daemon, wav, timeout=15)
    elapsed = time.monotonic() - began
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and "modules.voice.max_audio_seconds" in error["message"], error
    assert "3211" in error["message"], error  # the duration it found
    assert elapsed < 5, elapsed
    assert cpu_seconds(pid) - cpu_before < 3  # reading the multipart body, not decoding it
    assert peak_rss_mb(pid) - rss_before < 200, (rss_before, peak_rss_mb(pid))  # upload copies, nothing decoded
    assert cpu_growth(pid, 1.0) < 0.2  # and nothing goes on afterwards


def test_a_client_that_hangs_up_stops_its_transcription(voice_daemon: Daemon, long_speech: bytes,
                                                        question: bytes) -> None:
    pid = voice_daemon.proc.pid
    hang_up = threading.Thread(target=send_and_hang_up, args=(voice_daemon, long_speech, 2.0))
    hang_up.start()
    wait_until_busy(pid)
    hang_up.join()
    time.sleep(0.5)  # cancellation lands within one 100 ms chunk
    burnt = cpu_growth(pid, 2.0)
    assert burnt < 0.3, f"{burnt:.2f} s of CPU in 2 s after the client left"
    # The place it held is free again: the next upload is transcribed.
    response = post_wav(voice_daemon, question, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == QUESTION
    assert "client_disconnected" in voice_daemon.log()


def test_a_second_concurrent_transcription_gets_503_with_retry_after(voice_daemon: Daemon, long_speech: bytes,
                                                                     question: bytes) -> None:
    pid = voice_daemon.proc.pid
    first = threading.Thread(target=send_and_hang_up, args=(voice_daemon, long_speech, 4.0))
    first.start()
    try:
        wait_until_busy(pid)
        began = time.monotonic()
        second = post_wav(voice_daemon, question, timeout=10)
        assert time.monotonic() - began < 2  # refused at once, not queued behind a long transcription
    finally:
        first.join()
    assert second.status_code == 503, second.text
    assert second.headers["Retry-After"] == "1"
    error = second.json()["error"]
    assert error["code"] == "server_busy" and "modules.voice.max_concurrent_transcriptions" in error["message"]
    time.sleep(0.5)
    assert cpu_growth(pid, 1.0) < 0.3  # the first one stopped when its client left


def test_sigterm_during_a_transcription_exits_promptly_with_0(smollm2_path: Path, tmp_path: Path,
                                                              long_speech: bytes) -> None:
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, extra={"modules": {"voice": VOICE}})
    try:
        outcome: list[object] = []

        def upload() -> None:
            try:
                response = post_wav(daemon, long_speech, timeout=30)
                outcome.append((response.status_code, response.json()["error"]["message"]))
            except (httpx.HTTPError, ValueError) as exc:  # no answer, or not JSON (uvicorn's text/plain 500)
                outcome.append(repr(exc))

        client = threading.Thread(target=upload)
        client.start()
        wait_until_busy(daemon.proc.pid)
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        # The conftest's server.shutdown_timeout (5 s) is the graceful drain; the module halts just before its end.
        try:
            code = daemon.proc.wait(12)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon was still running 12 s after SIGTERM:\n{daemon.log()[-3000:]}")
        elapsed = time.monotonic() - began
        client.join(30)
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    assert elapsed < 9, elapsed
    # Just before the shutdown bound the module ends the transcription: a 503 the client can retry elsewhere.
    assert outcome == [(503, "the transcription was cancelled because the server is shutting down")], outcome


class OverlapCounter:
    """Wraps a real engine: counts recognisers inside accept()/finish() at the same moment."""

    def __init__(self, engine: SphinxEngine) -> None:
        self.engine = engine
        self.name, self.language = engine.name, engine.language
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.calls = 0

    def load(self) -> None:
        self.engine.load()

    def recognizer(self, grammar: Any = None, *, endpointing: bool = True) -> Recognizer:
        counter, inner = self, self.engine.recognizer(grammar, endpointing=endpointing)

        class Counted:
            sample_rate = inner.sample_rate

            def _call(self, method: Callable[[], Transcript | None]) -> Transcript | None:
                with counter.lock:
                    counter.inside += 1
                    counter.calls += 1
                    counter.most = max(counter.most, counter.inside)
                try:
                    time.sleep(0.002)  # widen the window: an unlimited second recogniser would step in here
                    return method()
                finally:
                    with counter.lock:
                        counter.inside -= 1

            def accept(self, chunk: bytes) -> Transcript | None:
                return self._call(lambda: inner.accept(chunk))

            def finish(self) -> Transcript | None:
                return self._call(inner.finish)

            def finalize(self) -> Transcript | None:
                return self._call(inner.finalize)

            def close(self) -> None:
                inner.close()

        return Counted()


def test_uploads_and_the_kiosk_listener_share_one_recognition_turn(sphinx_engine: SphinxEngine, question: bytes,
                                                                   tmp_path: Path) -> None:
    """The voice module's limit covers the kiosk too: its microphone recogniser and an HTTP upload never
    recognise at the same moment (max_concurrent_transcriptions: 1, the default)."""
    import uvicorn
    from fastapi import FastAPI

    from edge_runtime.server.errors import install_handlers

    recording = tmp_path / "kiosk.wav"
    recording.write_bytes(question)
    counter = OverlapCounter(sphinx_engine)
    module = VoiceModule(parse_options({"language": "en", "stt": "pocketsphinx", "input": f"file:{recording}"}),
                         Settings(), stt=counter)
    app = FastAPI()
    install_handlers(app)
    for router in module.routers():
        app.include_router(router)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    heard: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and serving.is_alive()
            time.sleep(0.02)
        listener = threading.Thread(target=lambda: heard.extend(module.listen()))
        listener.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            response = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                                   files={"file": ("question.wav", question)})
        listener.join(60)
    finally:
        server.should_exit = True
        serving.join(10)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == QUESTION and heard == [QUESTION], (response.text, heard)
    assert counter.calls > 50
    assert counter.most == 1, f"{counter.most} recognisers ran at once"


def test_pocketsphinx_audio_ending_mid_speech_on_a_frame_boundary(sphinx_engine: SphinxEngine,
                                                                  sentence: Audio) -> None:
    """Audio a whole number of 30 ms endpointer frames long that ends while someone speaks: a transcript, not the
    IndexError a 10-minute upload got as a 500."""
    frame = 480  # samples in one 30 ms frame at 16 kHz
    cut = int(sentence.frames * 0.6) // frame * frame
    text = transcribe(sphinx_engine, Audio(sentence.pcm[:cut * 2], SAMPLE_RATE))
    assert len(text.split()) >= 3, text
