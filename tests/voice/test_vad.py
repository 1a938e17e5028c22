"""Silero VAD endpointing over the real recognisers: transcripts as exact as before, utterances cut on measured
silence (counted in audio, so the timing checks do not depend on the machine's load), tentative transcripts."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.errors import AudioError, ConfigError
from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.module import create as create_voice
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import Recognizer, Transcript, finals, normalize
from edge_runtime.voice.tts import PiperTTS
from edge_runtime.voice.vad import FRAME_SECONDS, SileroVad, VadRecognizer, VadSettings, resolve_vad_model
from edge_runtime.voice.vosk_stt import VoskEngine

SENTENCES = ("What is the capital of France? Answer in one sentence.", "Open the door please.",
             "How much does a coffee cost?", "Thank you very much.", "Please call the manager.")
CHUNK = 1024  # 32 ms


@pytest.fixture(scope="module")
def vad_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_vad_model(Settings(models_dir=tmp_path_factory.mktemp("models")), pull=False)


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    return PiperTTS("en_US-joe-medium", deterministic=True)


def _pcm(*parts: bytes | float) -> bytes:
    """Audio made of PCM parts and silences (floats, seconds)."""
    return b"".join(p if isinstance(p, bytes) else b"\0\0" * int(p * SAMPLE_RATE) for p in parts)


def _chunks(pcm: bytes) -> Iterator[bytes]:
    return (pcm[i:i + CHUNK] for i in range(0, len(pcm), CHUNK))


def _events(recognizer: Recognizer, pcm: bytes) -> list[tuple[float, Transcript]]:
    """(seconds of audio fed when it came, event) for every event, then the finish() one."""
    events = []
    fed = 0
    for chunk in _chunks(pcm):
        fed += len(chunk)
        event = recognizer.accept(chunk)
        if event is not None:
            events.append((fed / 2 / SAMPLE_RATE, event))
    last = recognizer.finish()
    if last is not None:
        events.append((fed / 2 / SAMPLE_RATE, last))
    recognizer.close()
    return events


def _speech_end(audio: Audio) -> float:
    loud = (np.abs(audio.samples().astype(int)) > 300).nonzero()[0]
    return float(loud[-1] + 1) / SAMPLE_RATE


def _vad(engine: SphinxEngine | VoskEngine, model: Path, **settings: float | None) -> VadRecognizer:
    return VadRecognizer(engine.recognizer(None, endpointing=False), SileroVad(model), VadSettings(**settings))


def test_sentences_are_recognised_as_exactly_as_with_the_recognisers_own_endpointer(
        sphinx_engine: SphinxEngine, vad_model: Path, piper: PiperTTS) -> None:
    exact = {"own": 0, "vad": 0}
    for sentence in SENTENCES:
        pcm = _pcm(0.5, piper.synthesize(sentence).at_rate(SAMPLE_RATE).pcm, 1.0)
        own = " ".join(finals(_chunks(pcm), sphinx_engine.recognizer(None)))
        vad = " ".join(finals(_chunks(pcm), _vad(sphinx_engine, vad_model)))
        exact["own"] += normalize(own) == normalize(sentence)
        exact["vad"] += normalize(vad) == normalize(sentence)
    assert exact["vad"] >= exact["own"] and exact["vad"] >= 4, exact


def test_the_final_comes_one_silence_window_after_the_speech_not_the_recognisers_wait(
        sphinx_engine: SphinxEngine, vad_model: Path, piper: PiperTTS) -> None:
    audio = piper.synthesize("Open the door please.").at_rate(SAMPLE_RATE)
    end = 0.5 + _speech_end(audio)
    pcm = _pcm(0.5, audio.pcm, 2.0)
    for silence in (0.2, 0.3, 0.6):
        events = _events(_vad(sphinx_engine, vad_model, silence=silence), pcm)
        finals_at = [at for at, e in events if e.final]
        assert len(finals_at) == 1 and events[-1][1].text == "open the door please", events
        # Silero hears the end within ~0.12 s of the last loud sample; then the window, then one chunk.
        assert silence <= finals_at[0] - end <= silence + 0.15 + 2 * FRAME_SECONDS, (silence, finals_at[0] - end)
    own = [at for at, e in _events(sphinx_engine.recognizer(None), pcm) if e.final]
    assert own[0] - end > 0.3 + 0.15 + 2 * FRAME_SECONDS  # what the recogniser's own rule costs on the same audio


def test_a_pause_gives_a_tentative_transcript_and_speech_after_it_a_resumption(
        sphinx_engine: SphinxEngine, vad_model: Path, piper: PiperTTS) -> None:
    first = piper.synthesize("Open the door.").at_rate(SAMPLE_RATE).pcm
    second = piper.synthesize("Please.").at_rate(SAMPLE_RATE).pcm
    events = _events(_vad(sphinx_engine, vad_model, silence=0.6, tentative=0.1), _pcm(0.5, first, 0.35, second, 1.5))
    kinds = ["final" if e.final else "tentative" if e.tentative else "partial" for _, e in events]
    tentative = kinds.index("tentative")
    assert "open the door" in events[tentative][1].text
    assert kinds[tentative + 1] == "partial"  # the resumption: what was started on the tentative text is stale
    assert kinds.count("final") == 1 and normalize(events[-1][1].text) == "open the door please"
    # The same pause longer than the window is two utterances.
    events = _events(_vad(sphinx_engine, vad_model, silence=0.3), _pcm(0.5, first, 0.8, second, 1.5))
    assert [e.text for _, e in events if e.final] == ["open the door", "please"]


def test_tentative_then_final_agree_for_a_clean_sentence(sphinx_engine: SphinxEngine, vad_model: Path,
                                                         piper: PiperTTS) -> None:
    heard: list[str] = []
    pcm = _pcm(0.5, piper.synthesize("Thank you very much.").at_rate(SAMPLE_RATE).pcm, 1.0)
    got = list(finals(_chunks(pcm), _vad(sphinx_engine, vad_model), on_tentative=heard.append))
    assert got == ["thank you very much"] and heard == got


def test_noise_is_not_speech_and_speech_in_noise_is_still_cut_right(sphinx_engine: SphinxEngine, vad_model: Path,
                                                                    piper: PiperTTS) -> None:
    rng = np.random.default_rng(7)

    def noisy(pcm: bytes, rms: float) -> bytes:
        x = np.frombuffer(pcm, "<i2").astype(np.float64) + rng.normal(0, rms, len(pcm) // 2)
        return np.clip(x, -32768, 32767).astype("<i2").tobytes()

    assert _events(_vad(sphinx_engine, vad_model), noisy(_pcm(3.0), 300)) == []  # ~ -40 dBFS hiss
    audio = piper.synthesize("Please call the manager.").at_rate(SAMPLE_RATE)
    events = _events(_vad(sphinx_engine, vad_model), noisy(_pcm(0.5, audio.pcm, 1.5), 100))
    assert [normalize(e.text) for _, e in events if e.final] == ["please call the manager"]
    assert events[-1][0] - (0.5 + _speech_end(audio)) < 0.3 + 0.15 + 2 * FRAME_SECONDS


def test_vosk_behind_the_vad(ko_engine: VoskEngine, vad_model: Path, ko_speech: Callable[..., Audio]) -> None:
    pcm = _pcm(0.5, ko_speech("안녕하세요").pcm, 1.0, ko_speech("감사합니다").pcm, 1.0)
    recognizer = VadRecognizer(ko_engine.recognizer(("안녕하세요", "감사합니다"), endpointing=False),
                               SileroVad(vad_model), VadSettings())
    assert list(finals(_chunks(pcm), recognizer)) == ["안녕하세요", "감사합니다"]


def test_options_and_missing_pieces_are_one_line_errors(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"modules\.voice\.vad"):
        create_voice({"vad": "webrtc", "input": "file:/dev/null"}, settings)
    with pytest.raises(ConfigError, match=r"modules\.voice\.vad_threshold"):
        create_voice({"vad_threshold": 1.5, "input": "file:/dev/null"}, settings)
    bad = tmp_path / "vad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(AudioError, match="not a Silero VAD model") as info:
        SileroVad(bad)
    assert "\n" not in str(info.value)


def test_the_voice_module_listens_through_the_vad_unless_told_otherwise(tmp_path: Path, piper: PiperTTS) -> None:
    question = tmp_path / "q.raw"
    question.write_bytes(_pcm(0.5, piper.synthesize("Open the door please.").at_rate(SAMPLE_RATE).pcm, 1.0))
    settings = Settings(models_dir=tmp_path / "models")
    for vad in ("silero", "recognizer"):
        voice = create_voice({"input": f"file:{question}", "stt": "pocketsphinx", "vad": vad}, settings)
        recognizer = voice.live_recognizer()
        assert isinstance(recognizer, VadRecognizer) == (vad == "silero")
        recognizer.close()
        assert list(voice.listen()) == ["open the door please"]
