"""The wake word (pymicro-wakeword's bundled microWakeWord models) in front of the VAD and pocketsphinx: speech
is recognised only after it, in the same breath or within the window, and never without it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime.config import Settings
from edge_runtime.errors import AudioError, ConfigError
from edge_runtime.voice.audio import SAMPLE_RATE
from edge_runtime.voice.module import create as create_voice
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import finals, normalize
from edge_runtime.voice.tts import PiperTTS
from edge_runtime.voice.vad import SileroVad, VadRecognizer, VadSettings, resolve_vad_model
from edge_runtime.voice.wakeword import WakeWordDetector, WakeWordRecognizer


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    return PiperTTS("en_US-joe-medium", deterministic=True)


@pytest.fixture(scope="module")
def vad_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_vad_model(Settings(models_dir=tmp_path_factory.mktemp("models")), pull=False)


def _say(piper: PiperTTS, *parts: str | float) -> bytes:
    return b"".join(b"\0\0" * int(p * SAMPLE_RATE) if isinstance(p, float)
                    else piper.synthesize(p).at_rate(SAMPLE_RATE).pcm for p in parts)


def _chunks(pcm: bytes) -> Iterator[bytes]:
    return (pcm[i:i + 1024] for i in range(0, len(pcm), 1024))


def _heard(sphinx: SphinxEngine, vad_model: Path, pcm: bytes, wake_word: str = "okay_nabu",
           window: float = 8.0) -> list[str]:
    vad = VadRecognizer(sphinx.recognizer(None, endpointing=False), SileroVad(vad_model), VadSettings())
    woken: list[int] = []
    gate = WakeWordRecognizer(vad, WakeWordDetector(wake_word), window=window, restart=vad.restart,
                              on_wake=lambda: woken.append(1))
    return [normalize(t) for t in finals(_chunks(pcm), gate)]


def test_speech_after_the_wake_word_is_heard_and_without_it_is_not(sphinx_engine: SphinxEngine, vad_model: Path,
                                                                   piper: PiperTTS) -> None:
    got = _heard(sphinx_engine, vad_model, _say(piper, 0.5, "Okay Nabu, open the door please.", 1.0))
    assert len(got) == 1 and got[0].endswith("open the door please")
    assert _heard(sphinx_engine, vad_model, _say(piper, 0.5, "Open the door please.", 1.0)) == []
    # Another built-in word does not answer to this one.
    assert _heard(sphinx_engine, vad_model, _say(piper, 0.5, "Hey Jarvis, open the door please.", 1.0)) == []
    got = _heard(sphinx_engine, vad_model, _say(piper, 0.5, "Hey Jarvis, open the door please.", 1.0), "hey_jarvis")
    assert len(got) == 1 and got[0].endswith("open the door please")


def test_the_window_after_the_wake_word_and_sleeping_again(sphinx_engine: SphinxEngine, vad_model: Path,
                                                           piper: PiperTTS) -> None:
    # Said alone, then the question within the window: heard. The next question without the word: not heard.
    pcm = _say(piper, 0.5, "Okay Nabu.", 1.5, "Thank you very much.", 1.5, "Please call the manager.", 1.0)
    assert _heard(sphinx_engine, vad_model, pcm) == ["thank you very much"]
    # Past the window, nothing.
    pcm = _say(piper, 0.5, "Okay Nabu.", 3.0, "Thank you very much.", 1.0)
    assert _heard(sphinx_engine, vad_model, pcm, window=2.0) == []
    # Said again: heard again.
    pcm = _say(piper, 0.5, "Okay Nabu, thank you very much.", 1.5, "Okay Nabu, please call the manager.", 1.0)
    got = _heard(sphinx_engine, vad_model, pcm)
    assert len(got) == 2 and got[0].endswith("thank you very much") and got[1].endswith("please call the manager")


def test_the_voice_module_puts_the_wake_word_in_front(tmp_path: Path, piper: PiperTTS) -> None:
    recording = tmp_path / "visitor.raw"
    recording.write_bytes(_say(piper, 0.5, "Open the door please.", 1.0, "Okay Nabu, thank you very much.", 1.0))
    voice = create_voice({"input": f"file:{recording}", "stt": "pocketsphinx", "wake_word": "okay_nabu"},
                         Settings(models_dir=tmp_path / "models"))
    got = [normalize(t) for t in voice.listen()]
    assert len(got) == 1 and got[0].endswith("thank you very much")


def test_bad_wake_words_are_one_line_errors(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"modules\.voice\.wake_word.*okay_nabu"):
        create_voice({"wake_word": "hey_kiosk", "input": "file:/dev/null"}, settings)
    with pytest.raises(ConfigError, match="not both"):
        create_voice({"wake_word": "alexa", "wake_phrase": "hello kiosk", "input": "file:/dev/null"}, settings)
    with pytest.raises(AudioError, match="microWakeWord JSON") as info:
        WakeWordDetector(str(tmp_path / "missing.json"))
    assert "\n" not in str(info.value)
