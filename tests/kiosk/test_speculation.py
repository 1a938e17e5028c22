"""The answer started at a pause: kept when the final transcript agrees, dropped when the visitor goes on, and the
turn's answer is the one the kiosk gives without speculating (real SmolLM2, pocketsphinx, Silero, paced input)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.config import Settings
from edge_runtime.engine.types import Chunk, GenerationRequest
from edge_runtime.kiosk.options import KioskOptions
from edge_runtime.kiosk.speculate import PrimedTTS
from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.tts import EspeakTTS, PiperTTS

from .conftest import VirtualAudio, run_voice_turn


class Recorder:
    """The real engine, with the user text of every request it was asked for noted (a seam, not a fake)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.asked: list[str] = []

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.asked.append(request.messages[-1].content if request.messages else "")
        stream: AsyncIterator[Chunk] = self.engine.generate(request)
        return stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def _turn(settings: Settings, engine: Any, pcm: bytes, tmp_path: Path, *, speculate: bool,
          **voice: Any) -> dict[str, Any]:
    recording = tmp_path / f"visitor-{speculate}.raw"
    recording.write_bytes(b"\0\0" * 8000 + pcm + b"\0\0" * 32000)
    return run_voice_turn(settings, engine, {"input": f"file:{recording}", "language": "en", "stt": "pocketsphinx",
                                             "chunk_ms": 32, **voice}, tmp_path / f"turns-{speculate}.jsonl",
                          KioskOptions(realtime_input=True, speculate=speculate))


@pytest.mark.slow
def test_the_answer_started_at_the_pause_is_the_answer(virtual_audio: VirtualAudio, kiosk_settings: Settings,
                                                       engine: Any, piper_question: Audio, tmp_path: Path) -> None:
    plain = _turn(kiosk_settings, engine, piper_question.pcm, tmp_path, speculate=False)
    recorder = Recorder(engine)
    fast = _turn(kiosk_settings, recorder, piper_question.pcm, tmp_path, speculate=True)
    assert plain["user"] == fast["user"] == "what is the capital of france answer in one sentence"
    assert fast["answer"] == plain["answer"] and "paris" in fast["answer"].lower()
    assert plain["speculation"] is None and fast["speculation"] == "taken"
    assert fast["t"]["speculation"] <= fast["t"]["request"]
    # The question's own pause ("France? | Answer") started an answer to its first half, dropped on resumption.
    assert recorder.asked[-1] == fast["user"]
    assert fast["states"][0][0] == "thinking" and [s for s, _ in fast["states"]][-1] == "idle"


@pytest.mark.slow
def test_speech_after_the_pause_drops_what_was_started(virtual_audio: VirtualAudio, kiosk_settings: Settings,
                                                       engine: Any, tmp_path: Path) -> None:
    piper = PiperTTS("en_US-joe-medium", deterministic=True)
    first = piper.synthesize("What is the capital of France?").at_rate(SAMPLE_RATE).pcm
    second = piper.synthesize("Answer in one word.").at_rate(SAMPLE_RATE).pcm
    pcm = first + b"\0\0" * int(0.3 * SAMPLE_RATE) + second  # a pause > tentative_window, < endpoint_window
    recorder = Recorder(engine)
    record = _turn(kiosk_settings, recorder, pcm, tmp_path, speculate=True, endpoint_window=0.7)
    assert record["user"] == "what is the capital of france answer in one word"
    assert recorder.asked[0] == "what is the capital of france"  # started at the pause ...
    assert recorder.asked[-1] == record["user"]  # ... and the turn answered the whole question
    plain = _turn(kiosk_settings, engine, pcm, tmp_path, speculate=False, endpoint_window=0.7)
    assert record["answer"] == plain["answer"]


def test_primed_sentences_are_synthesised_once_and_ahead() -> None:
    import threading

    calls: list[tuple[str, bool]] = []  # (text, in the caller's thread)
    caller = threading.current_thread()

    class Counting(EspeakTTS):
        def synthesize(self, text: str) -> Audio:
            calls.append((text, threading.current_thread() is caller))
            return super().synthesize(text)

    tts = PrimedTTS(Counting("en-us"))
    tts.prime("Hello there.")
    assert tts.synthesize("Hello there.").pcm
    assert calls == [("Hello there.", False)]  # made ahead, in the priming thread, and not again
    tts.synthesize("Hello there.")
    assert calls[-1] == ("Hello there.", True)  # a primed sentence is taken once
    tts.prime("Dropped.")
    tts.discard()
    tts.synthesize("Dropped.")
    assert ("Dropped.", True) in calls  # discarded: synthesised again by the caller
