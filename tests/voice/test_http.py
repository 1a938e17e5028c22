"""The audio endpoints on a real uvicorn server (loopback), driven by the official `openai` client."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import pytest

from edge_runtime.config import Settings
from edge_runtime.voice.audio import SAMPLE_RATE, Audio, decode_wav, encode_wav
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options
from edge_runtime.voice.stt import transcribe
from edge_runtime.voice.vosk_stt import VoskEngine

from ..speech import KO_GRAMMAR, KO_PHRASES, KO_PITCH, KO_RATE

UPLOAD_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Server:
    base_url: str
    client: openai.OpenAI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(ko_engine: VoskEngine) -> Iterator[Server]:
    """The voice router on a plain FastAPI app with the daemon's error handlers (edge_runtime.server.errors)."""
    import uvicorn
    from fastapi import FastAPI

    from edge_runtime.server.errors import install_handlers

    options = parse_options({"language": "ko", "grammar": list(KO_GRAMMAR), "voice": "ko", "rate": KO_RATE,
                             "pitch": KO_PITCH, "max_upload_bytes": UPLOAD_LIMIT, "input": "-"})
    module = VoiceModule(options, Settings(), stt=ko_engine)
    app = FastAPI()
    install_handlers(app)
    for router in module.routers():
        app.include_router(router)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        yield Server(base, openai.OpenAI(base_url=base, api_key="unused", max_retries=0))
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("phrase", KO_PHRASES)
def test_transcription_matches_the_microphone_path(server: Server, phrase: str,
                                                   ko_speech: Callable[..., Audio]) -> None:
    wav = encode_wav(ko_speech(phrase))
    result = server.client.audio.transcriptions.create(model="whisper-1", file=("phrase.wav", wav, "audio/wav"))
    assert result.text == phrase


def test_transcription_resamples_a_22k_upload_and_speaks_text(server: Server) -> None:
    from edge_runtime.voice.tts import EspeakTTS

    native = EspeakTTS("ko", rate=KO_RATE, pitch=KO_PITCH).synthesize("안녕하세요")  # 22050 Hz
    assert native.sample_rate != SAMPLE_RATE
    text = server.client.audio.transcriptions.create(model="whisper-1", file=("a.wav", encode_wav(native)),
                                                     response_format="text", language="ko")
    assert str(text).strip() == "안녕하세요"


def test_speech_returns_wav_that_says_the_input(server: Server, ko_engine: VoskEngine) -> None:
    response = server.client.audio.speech.create(model="tts-1", voice="alloy", input="문을 열어 주세요",
                                                 response_format="wav")
    audio = decode_wav(response.content)
    assert 0.8 < audio.duration < 5.0
    assert audio.rms() > 500
    assert transcribe(ko_engine, audio, KO_GRAMMAR) == "문을 열어 주세요"


def test_speech_pcm_and_voice_and_speed(server: Server) -> None:
    slow = server.client.audio.speech.create(model="espeak", voice="en-us", input="Hello there.",
                                             response_format="pcm", speed=0.5)
    fast = server.client.audio.speech.create(model="espeak", voice="en-us", input="Hello there.",
                                             response_format="pcm", speed=2.0)
    assert len(slow.content) > 1.5 * len(fast.content) > 0  # raw 24 kHz S16LE, no header
    assert not slow.content.startswith(b"RIFF")


def error_of(call: Callable[[], object]) -> tuple[int, dict[str, object]]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return info.value.status_code, body["error"]


@pytest.mark.parametrize(("name", "payload", "status", "param", "message"), [
    ("notes.txt", b"this is a text file, not audio\n" * 20, 400, "file", "not a WAV file"),
    ("empty.wav", b"", 400, "file", "empty"),
    ("low.wav", encode_wav(Audio(np.zeros(6000, np.int16).tobytes(), 6000)), 400, "file",
     "sample rate 6000 Hz is not supported"),
    ("big.wav", encode_wav(Audio(np.zeros(UPLOAD_LIMIT, np.int16).tobytes(), 16000)), 413, None,
     "larger than the 262144-byte limit"),
])
def test_transcription_rejects_bad_uploads(server: Server, name: str, payload: bytes, status: int,
                                           param: str | None, message: str) -> None:
    code, error = error_of(lambda: server.client.audio.transcriptions.create(model="whisper-1",
                                                                             file=(name, payload)))
    assert code == status
    assert error["param"] == param
    assert message in str(error["message"])


def test_transcription_rejects_bad_fields(server: Server, ko_speech: Callable[..., Audio]) -> None:
    wav = encode_wav(ko_speech("안녕하세요"))
    transcriptions = server.client.audio.transcriptions
    code, error = error_of(lambda: transcriptions.create(model="whisper-1", file=("a.wav", wav),
                                                         response_format="srt"))
    assert (code, error["param"]) == (400, "response_format")
    code, error = error_of(lambda: transcriptions.create(model="whisper-1", file=("a.wav", wav), language="en"))
    assert (code, error["param"]) == (400, "language")
    code, error = error_of(lambda: transcriptions.create(model="no-such-model", file=("a.wav", wav)))
    assert (code, error["code"]) == (404, "model_not_found")
    code, error = error_of(lambda: transcriptions.create(model="../../etc", file=("a.wav", wav)))
    assert (code, error["param"]) == (400, "model")
    # Not multipart at all: FastAPI's validation error becomes an OpenAI-style 400 naming the field.
    response = httpx.post(f"{server.base_url}/audio/transcriptions", json={"model": "whisper-1"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"input": "   "}, "input"),
    ({"input": "x" * 5000}, "input"),
    ({"input": "hi", "response_format": "mp3"}, "response_format"),
    ({"input": "hi", "voice": "no-such-voice"}, "voice"),
    ({"input": "hi", "speed": 9.0}, "speed"),
])
def test_speech_rejects_bad_requests(server: Server, kwargs: dict[str, object], param: str) -> None:
    request = {"model": "tts-1", "voice": "alloy", **kwargs}
    response = httpx.post(f"{server.base_url}/audio/speech", json=request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_speech_unknown_model_is_404(server: Server) -> None:
    response = httpx.post(f"{server.base_url}/audio/speech", json={"model": "nope", "input": "hi", "voice": "alloy"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_transcription_with_another_named_model(server: Server, piper_question: Audio) -> None:
    """`model` picks another installed recogniser (English pocketsphinx next to the configured Korean Vosk)."""
    result = server.client.audio.transcriptions.create(model="pocketsphinx", language="en",
                                                       file=("q.wav", encode_wav(piper_question)))
    assert result.text == "what is the capital of france answer in one sentence"
