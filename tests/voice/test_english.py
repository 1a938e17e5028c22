"""English offline: Piper / espeak-ng speech recognised by pocketsphinx (its wheel ships the model)."""
from __future__ import annotations

import pytest

from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.sources import MicSource
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import finals, normalize, transcribe
from edge_runtime.voice.tts import EspeakTTS, PiperTTS

from .conftest import VirtualAudio

QUESTION = "What is the capital of France? Answer in one sentence."


def test_piper_question_recognised_exactly(sphinx_engine: SphinxEngine, piper_question: Audio) -> None:
    """The kiosk end-to-end question: Piper (deterministic) -> pocketsphinx language model -> exact words."""
    assert transcribe(sphinx_engine, piper_question) == normalize(QUESTION)


def test_piper_question_through_the_virtual_microphone(virtual_audio: VirtualAudio, sphinx_engine: SphinxEngine,
                                                       piper_question: Audio) -> None:
    virtual_audio.feed(piper_question.pcm)
    source = MicSource("fakein", queue_chunks=300)
    recognizer = sphinx_engine.recognizer()
    try:
        heard = next(iter(finals(source.chunks(), recognizer)))
    finally:
        source.close()
        recognizer.close()
    assert heard == normalize(QUESTION)


def test_piper_is_deterministic_when_asked_and_natural_otherwise() -> None:
    fixed = PiperTTS("joe", deterministic=True)
    assert fixed.synthesize("Thank you.") == fixed.synthesize("Thank you.")
    natural = PiperTTS("joe")
    assert natural.synthesize("Thank you.").sample_rate == 22050


@pytest.mark.parametrize("phrase", ["open the door", "thank you very much", "call the manager"])
def test_espeak_english_in_grammar_mode(sphinx_engine: SphinxEngine, phrase: str) -> None:
    """espeak-ng's robotic English is poorly recognised by the free language model (README: ~30-60% words)
    but a kiosk command grammar recognises it."""
    grammar = ["open the door", "close the door", "thank you very much", "call the manager", "what time is it"]
    audio = EspeakTTS("en-us", rate=140).synthesize(phrase).at_rate(SAMPLE_RATE)
    assert transcribe(sphinx_engine, audio, grammar) == phrase


def test_unknown_grammar_word_is_a_clear_error(sphinx_engine: SphinxEngine) -> None:
    from edge_runtime.errors import AudioError

    with pytest.raises(AudioError, match="xyzzyq not in the pronunciation dictionary"):
        sphinx_engine.recognizer(["open the xyzzyq"])
