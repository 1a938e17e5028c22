"""`clawd-edge serve` with the kiosk enabled: one process, one engine for a spoken turn and an HTTP chat.

The microphone and speaker are ALSA's userspace `file` plugin (tests/asoundrc.template) in a temporary HOME
given to the daemon: no sound hardware exists here. Everything above ALSA is the production path.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import Daemon, start_daemon

REPO = Path(__file__).resolve().parents[2]
GRAMMAR = ["what is the capital of france", "thank you very much", "hello"]


@pytest.fixture(scope="module")
def kiosk_daemon(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path]]:
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import EspeakTTS

    workdir = tmp_path_factory.mktemp("kiosk-daemon")
    home, mic, speaker = workdir / "home", workdir / "mic.raw", workdir / "speaker.raw"
    home.mkdir()
    rc = (REPO / "tests" / "asoundrc.template").read_text(encoding="utf-8")
    (home / ".asoundrc").write_text(rc.replace("IN_RAW", str(mic)).replace("OUT_RAW", str(speaker)),
                                    encoding="utf-8")
    # README: espeak-ng en-us at 140 wpm is recognised exactly by pocketsphinx in grammar mode.
    question = EspeakTTS("en-us", rate=140).synthesize("What is the capital of France?").at_rate(SAMPLE_RATE)
    silence = b"\0\0"
    # Lead silence: after its input ends the file plugin keeps replaying an early stretch of it (0.05-0.25 s).
    mic.write_bytes(silence * SAMPLE_RATE + question.pcm + silence * 2 * SAMPLE_RATE)
    turns = workdir / "turns.jsonl"
    extra: dict[str, Any] = {
        # The voice module is enabled for its HTTP routes too: the kiosk shares it (one recogniser loaded).
        "modules": {"voice": {"enabled": True, "input": "mic:fakein", "language": "en", "stt": "pocketsphinx",
                              "grammar": GRAMMAR, "queue_size": 600}},
        # realtime_input: the unpaced virtual mic is consumed at a live microphone's pace (no busy recogniser).
        "kiosk": {"enabled": True, "log": str(turns), "max_tokens": 24, "realtime_input": True},
        # The virtual mic's capture thread spins a core (the file plugin is unpaced; real hardware is paced by
        # its clock): llama.cpp gets the other one, as its two threads' spin barrier stalls when one is starved.
        "threads": 1,
    }
    running = start_daemon(workdir, smollm2_path, api_key=None, extra=extra, env={"HOME": str(home)})
    yield running, workdir
    running.terminate()


def test_spoken_turn_and_http_chat_share_one_engine(kiosk_daemon: tuple[Daemon, Path]) -> None:
    daemon, workdir = kiosk_daemon
    turns, speaker = workdir / "turns.jsonl", workdir / "speaker.raw"
    chats: list[int] = []
    done = threading.Event()

    def chat() -> None:  # HTTP clients keep chatting while the kiosk hears, thinks and speaks
        with daemon.client() as client:
            while not done.is_set() or not chats:
                reply = client.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16})
                chats.append(reply.status_code)

    client_thread = threading.Thread(target=chat)
    client_thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (turns.exists() and turns.read_text(encoding="utf-8").strip()):
            assert time.monotonic() < deadline, daemon.log()
            assert daemon.proc.poll() is None, daemon.log()
            time.sleep(0.1)
    finally:
        done.set()
        client_thread.join(120)
    assert chats and set(chats) == {200}, chats

    records = [json.loads(line) for line in turns.read_text(encoding="utf-8").splitlines()]
    record = records[0]
    assert record["source"] == "voice" and record["user"] == "what is the capital of france", record
    assert record["error"] is None and not record["interrupted"] and record["answer"].strip(), record
    assert "first_audio" in record["t"]
    played = np.fromfile(speaker, dtype="<i2")
    assert played.size > 11025  # more than half a second of espeak-ng (22 kHz) reply
    assert float(np.sqrt(np.mean(played.astype(np.float64) ** 2))) > 300

    with daemon.client() as client:
        health = client.get("/health").json()
    assert health["status"] == "ok" and health["kiosk"]["status"] == "running", health
    assert health["kiosk"]["turns"] >= 1 and health["kiosk"]["failures"] == 0
    metrics = daemon.metrics()
    http_chats = metrics["clawd_edge_http_requests_total{method=POST,route=/v1/chat/completions,status=200}"]
    assert http_chats == len(chats)
    # The engine counted both callers: the HTTP chat and the kiosk's turn(s) ran on this one model.
    assert metrics["clawd_edge_engine_requests_finished_total"] >= http_chats + len(records)
    assert metrics["clawd_edge_kiosk_turns_total"] == len(records)
    assert metrics["clawd_edge_kiosk_up"] == 1
    assert metrics["clawd_edge_engine_model_loads_total"] == 1  # one model load for both

    assert daemon.terminate() == 0, daemon.log()  # SIGTERM: kiosk stopped, then the engine closed, exit 0
    lines = daemon.log().splitlines()
    kiosk_stopped = next(i for i, line in enumerate(lines) if "kiosk stopped after" in line)
    daemon_stopped = max(i for i, line in enumerate(lines) if line.rstrip().endswith(" stopped"))
    assert kiosk_stopped < daemon_stopped, lines[-20:]


def test_kiosk_enabled_key_and_flag() -> None:
    from edge_runtime.config import Settings
    from edge_runtime.errors import ConfigError
    from edge_runtime.kiosk.service import daemon_kiosk_options

    assert not daemon_kiosk_options(Settings()).enabled  # old configs: no kiosk in the daemon
    on = Settings(kiosk={"enabled": True, "max_tokens": 32})
    assert daemon_kiosk_options(on).enabled and daemon_kiosk_options(on).max_tokens == 32
    assert not daemon_kiosk_options(on, False).enabled  # serve --no-kiosk
    assert daemon_kiosk_options(Settings(), True).enabled  # serve --kiosk
    with pytest.raises(ConfigError, match=r"kiosk\.enabled"):
        daemon_kiosk_options(Settings(kiosk={"enabled": "yes"}))
