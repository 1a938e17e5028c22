"""Kiosk turns with the real engine: camera "read this" turns, history bounds and prefix reuse, typed CLI."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime.config import Settings
from edge_runtime.engine.types import ChatMessage
from edge_runtime.errors import ConfigError
from edge_runtime.kiosk.history import Conversation
from edge_runtime.kiosk.loop import Kiosk, KioskInput
from edge_runtime.kiosk.options import KioskOptions, parse_options
from edge_runtime.ocr.module import create as create_ocr

from .conftest import VirtualAudio, speech_rms


def _sign_video(path: Path, text: str) -> Path:
    """A 640×480 MJPG clip of a wall with a sign on it (fresh sensor noise per frame)."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 44)
    sign = Image.new("L", (int(font.getbbox(text)[2]) + 60, 100), 240)
    ImageDraw.Draw(sign).text((30, 22), text, font=font, fill=15)
    sign_pixels = np.asarray(sign.rotate(1.5, expand=True, fillcolor=240))
    rng = np.random.default_rng(3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (640, 480))
    for _ in range(8):
        frame = np.full((480, 640, 3), (70, 90, 110), np.float32)
        h, w = sign_pixels.shape
        y, x = (480 - h) // 2, (640 - w) // 2
        frame[y:y + h, x:x + w] = sign_pixels[..., None]
        frame += rng.normal(0, 5, frame.shape).astype(np.float32)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()
    return path


@pytest.mark.slow
def test_read_this_turn_answers_with_the_sign_text(virtual_audio: VirtualAudio, kiosk_settings: Settings,
                                                   engine: Any, tmp_path: Path) -> None:
    from edge_runtime.voice.module import create as create_voice

    video = _sign_video(tmp_path / "sign.avi", "NO PARKING")
    ocr = create_ocr({"camera": f"file:{video}"}, kiosk_settings)
    voice = create_voice({"input": "mic:fakein", "language": "en", "stt": "pocketsphinx", "preload": False},
                         kiosk_settings)
    kiosk = Kiosk(kiosk_settings, engine, voice, ocr, KioskOptions())
    record = asyncio.run(kiosk.turn(KioskInput("Please read this.", "text")))
    assert record.error is None and not record.interrupted
    assert record.ocr_text == "NO PARKING"
    assert "no parking" in record.answer.lower()
    order = ["input", "ocr_start", "ocr_done", "request", "first_token", "first_audio", "done"]
    assert set(record.marks) == {*order, "generated"}
    assert [record.marks[s] for s in order] == sorted(record.marks[s] for s in order)
    assert speech_rms(virtual_audio.played()) > 300


def test_key_trigger_without_camera_is_a_logged_error(kiosk_settings: Settings, engine: Any) -> None:
    kiosk = Kiosk(kiosk_settings, engine, None, None, KioskOptions(speak=False))
    record = asyncio.run(kiosk.turn(KioskInput("", "text", read=True)))
    assert record.error is not None and "ocr module" in record.error
    assert kiosk.state.value == "idle"


def test_history_reuses_the_cached_prefix_and_stays_bounded(kiosk_settings: Settings, engine: Any) -> None:
    kiosk = Kiosk(kiosk_settings, engine, None, None, KioskOptions(speak=False, history_turns=2, max_tokens=24))

    async def three() -> list[Any]:
        return [await kiosk.turn(KioskInput(q, "text")) for q in ("Hello!", "What is two plus two?",
                                                                   "Name a colour.")]

    records = asyncio.run(three())
    assert all(r.error is None and r.answer for r in records)
    # Turn 2 starts with turn 1's whole prompt (system prompt + question): the engine reuses those KV cells.
    assert records[1].usage["cached_prompt_tokens"] >= records[0].usage["prompt_tokens"] - 1
    assert len(kiosk.history.turns) == 2
    messages = kiosk.history.messages("Next?")
    assert messages[0] == ChatMessage("system", KioskOptions().system_prompt)
    assert [m.role for m in messages[1:]] == ["user", "assistant", "user", "assistant", "user"]


def test_conversation_drops_oldest_turns_to_fit_the_budget() -> None:
    talk = Conversation("Be brief.", max_turns=10, budget=120)
    for i in range(6):
        talk.add(f"question {i} " + "x" * 40, f"answer {i} " + "y" * 40)
    messages = talk.messages("last question")
    assert messages[0].role == "system" and messages[-1].content == "last question"
    kept = [m.content for m in messages if m.role == "user"][:-1]
    assert kept and kept[-1].startswith("question 5")  # the newest turns survive
    assert talk.dropped >= 3
    talk.calibrate(messages, prompt_tokens=200)
    assert talk.tokens_per_char > 0.5  # learned from the engine's count: fewer turns fit next time


def test_options_validation() -> None:
    assert parse_options({"read_triggers": ["Read It"], "max_tokens": 10}).read_triggers == ("read it",)
    for bad in ({"max_tokens": 0}, {"speak": "yes"}, {"read_triggers": "read"}, {"wat": 1}):
        with pytest.raises(ConfigError, match=r"^kiosk\.(max_tokens|speak|read_triggers|wat): "):
            parse_options(bad)


def test_typed_kiosk_command(tmp_path: Path, smollm2_path: Path) -> None:
    from edge_runtime.cli import cli

    log = tmp_path / "turns.jsonl"
    result = CliRunner().invoke(cli, ["kiosk", "--text", "--mute", "--model", str(smollm2_path), "--log", str(log)],
                                input="What is the capital of France? Answer in one sentence.\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    record = json.loads(log.read_text(encoding="utf-8"))
    assert record["source"] == "text" and "Paris" in record["answer"]
    assert {"input", "request", "first_token", "done"} <= set(record["t"])
    bad = CliRunner().invoke(cli, ["kiosk", "--text", "--input", "x.wav"])
    assert bad.exit_code == 2 and "cannot be combined" in bad.stderr
