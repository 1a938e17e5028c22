"""Kiosk fixtures: a virtual ALSA mic/speaker per test (file plugin), the real SmolLM2 engine, a sign video.

No sound hardware or camera exists here. The substitutes are the layers below our code only: ALSA's
userspace `file` plugin (tests/asoundrc.template, after ../shared/audio/asoundrc.example) behind PortAudio,
and an MJPG video file opened by OpenCV in place of /dev/video0.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.kiosk.loop import Kiosk
from edge_runtime.kiosk.options import KioskOptions
from edge_runtime.kiosk.turnlog import TurnLog
from edge_runtime.voice.module import create as create_voice

REPO = Path(__file__).resolve().parents[2]
ASOUNDRC_EXAMPLE = REPO / "tests" / "asoundrc.template"


def _reinit_portaudio() -> None:
    """PortAudio reads ~/.asoundrc in Pa_Initialize; re-run it after HOME changes."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@dataclass(frozen=True)
class VirtualAudio:
    mic: Path
    speaker: Path

    def feed(self, pcm: bytes, *, lead: float = 0.5, tail: float = 45.0) -> None:
        """16 kHz S16LE for the mic. The file plugin loops its input, so a long silent tail keeps the
        question from coming round again while the kiosk answers."""
        silence = b"\0\0"
        self.mic.write_bytes(silence * int(lead * 16000) + pcm + silence * int(tail * 16000))

    def played(self) -> np.ndarray:
        return np.fromfile(self.speaker, dtype="<i2") if self.speaker.exists() else np.zeros(0, np.int16)


@pytest.fixture
def virtual_audio(tmp_path: Path) -> Iterator[VirtualAudio]:
    home = tmp_path / "home"
    home.mkdir()
    audio = VirtualAudio(mic=tmp_path / "mic.raw", speaker=tmp_path / "speaker.raw")
    audio.mic.write_bytes(b"")
    rc = ASOUNDRC_EXAMPLE.read_text(encoding="utf-8")
    (home / ".asoundrc").write_text(rc.replace("IN_RAW", str(audio.mic)).replace("OUT_RAW", str(audio.speaker)),
                                    encoding="utf-8")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    _reinit_portaudio()
    try:
        yield audio
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old
        _reinit_portaudio()


@pytest.fixture(scope="module")
def kiosk_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(models_dir=tmp_path_factory.mktemp("models"), parallel=1, max_sequence_length=1024,
                    threads=2, keep_alive=math.inf)


@pytest.fixture(scope="module")
def engine(kiosk_settings: Settings, smollm2_path: Path) -> Iterator[object]:
    """The real SmolLM2-135M Q4_1 (the default model) on llama.cpp, one slot, loaded once per module."""
    from edge_runtime.engine import create_engine
    from edge_runtime.engine.types import EngineState

    llama = create_engine(kiosk_settings, smollm2_path)
    deadline = time.monotonic() + 120
    while llama.status().state != EngineState.READY:
        assert llama.status().state != EngineState.FAILED, llama.status().reason
        assert time.monotonic() < deadline, "model did not load"
        time.sleep(0.05)
    yield llama
    asyncio.run(llama.close())


def speech_rms(pcm: np.ndarray) -> float:
    samples = pcm.astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def run_voice_turn(settings: Settings, engine: Any, voice_options: dict[str, Any], log: Path,
                   options: KioskOptions | None = None) -> dict[str, Any]:
    """One spoken turn (from the virtual mic unless voice_options names an input); its turn-log record."""
    voice = create_voice({"input": "mic:fakein", "queue_size": 600, **voice_options}, settings)
    turn_log = TurnLog(str(log))
    kiosk = Kiosk(settings, engine, voice, None, options or KioskOptions(realtime_input=True), log_to=turn_log)

    async def run() -> None:
        await voice.start()
        kiosk.listen()
        await asyncio.wait_for(kiosk.run(max_turns=1), timeout=180)
        await voice.stop()

    try:
        asyncio.run(run())
    finally:
        turn_log.close()
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    return dict(json.loads(lines[0]))
