"""`clawd-edge serve --wyoming URI` end to end: the real daemon (subprocess) answers Wyoming next to HTTP, on the
same engine, and stops cleanly on SIGTERM."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from edge_runtime.voice.audio import Audio
from edge_runtime.voice.stt import normalize

from ..server.conftest import free_port, start_daemon
from .conftest import HA_INFO_TIMEOUT, exchange, types


async def session(port: int, piper_question: Audio) -> tuple[Info, list[Event], list[Event], list[Event]]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        async with asyncio.timeout(HA_INFO_TIMEOUT):
            info = Info.from_event((await exchange(client, Describe().event(), until=("info",)))[-1])
    async with AsyncTcpClient("127.0.0.1", port) as client:
        turn = await exchange(client, Transcript(text="What is the capital of France?",
                                                 context={"conversation_id": "daemon"}).event(),
                              until=("handled-stop", "not-handled", "error"))
    async with AsyncTcpClient("127.0.0.1", port) as client:
        speech = await exchange(client, Synthesize(text="Hello there.").event(), until=("audio-stop", "error"))
    async with AsyncTcpClient("127.0.0.1", port) as client:
        heard = await exchange(client, Transcribe(language="en").event(),
                               AudioStart(rate=16000, width=2, channels=1).event(),
                               AudioChunk(rate=16000, width=2, channels=1, audio=piper_question.pcm).event(),
                               AudioStop().event(), until=("transcript-stop", "error"))
    return info, turn, speech, heard


def test_serve_with_wyoming(tmp_path: Path, smollm2_path: Path, piper_question: Audio) -> None:
    port = free_port()
    daemon = start_daemon(tmp_path, smollm2_path, api_key=None, args=("--wyoming", f"tcp://127.0.0.1:{port}"),
                          extra={"modules": {"voice": {"enabled": True, "language": "en", "input": "-"}},
                                 "wyoming": {"max_tokens": 32}})
    try:
        info, turn, speech, heard = asyncio.run(session(port, piper_question))
        assert info.handle[0].models[0].name == daemon.model
        assert info.asr[0].models[0].languages == ["en"]
        assert types(turn)[-2:] == ["handled", "handled-stop"] and Handled.from_event(turn[-2]).text
        assert types(speech)[0] == "audio-start" and "audio-chunk" in types(speech)
        assert Transcript.from_event(heard[-2]).text == normalize("What is the capital of France? "
                                                                  "Answer in one sentence.")
        # One engine behind both: the HTTP daemon's metrics count the Wyoming turn (no HTTP generation ran).
        metrics = daemon.metrics()
        assert metrics["clawd_edge_engine_requests_finished_total"] == 1, metrics
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the Wyoming port is closed with the daemon


def test_bad_wyoming_config_fails_before_the_model_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("wyoming:\n  enabled: true\n  max_conections: 3\n")
    result = subprocess.run([sys.executable, "-m", "edge_runtime", "--config", str(config), "serve",
                             "--model", str(tmp_path / "missing.gguf")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "wyoming.max_conections: unknown option" in result.stderr
    result = subprocess.run([sys.executable, "-m", "edge_runtime", "serve", "--wyoming", "http://x",
                             "--model", str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--wyoming: 'http://x' is not allowed" in result.stderr


def test_wyoming_command_alone(tmp_path: Path, smollm2_path: Path) -> None:
    """`clawd-edge wyoming`: no HTTP, its own engine; describe while it starts, a turn, exit 0 on SIGTERM."""
    import os
    import signal
    import time

    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text("threads: 2\nparallel: 1\nmax_sequence_length: 512\nwyoming:\n  max_tokens: 16\n"
                      "modules:\n  voice:\n    language: en\n    input: '-'\n")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--config", str(config), "wyoming", "--model",
                             str(smollm2_path), "--uri", f"tcp://127.0.0.1:{port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def use() -> tuple[Info, list[Event]]:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with AsyncTcpClient("127.0.0.1", port) as client:
                    async with asyncio.timeout(HA_INFO_TIMEOUT):
                        info = Info.from_event((await exchange(client, Describe().event(), until=("info",)))[-1])
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not come up"
                await asyncio.sleep(0.05)
        async with AsyncTcpClient("127.0.0.1", port) as client:
            turn = await exchange(client, Transcript(text="Hi!").event(), until=("handled-stop", "not-handled"))
        return info, turn

    try:
        info, turn = asyncio.run(use())
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    assert info.handle[0].models[0].name == smollm2_path.stem
    assert types(turn)[-2:] == ["handled", "handled-stop"], output
