"""Wyoming latency, as Home Assistant sees it: `synthesize` -> first audio chunk, and a spoken answer's turn.

    python scripts/bench_wyoming.py [--rounds 7] [--peer-python /tmp/peer-venv/bin/python]

Starts `clawd-edge serve --wyoming` (SmolLM2, Piper's en_US-joe-medium voice) and, when --peer-python names a
Python with `wyoming-piper` installed, the Wyoming project's own Piper server on the same voice file as the peer.
Rounds alternate between the servers (these machines are noisy, so each ratio comes from one run). Measured:

- tts: `synthesize` of a two-sentence answer -> first `audio-chunk` (ours and the peer's).
- turn: `transcript` (with a conversation_id) -> `handled` -> `synthesize` of its text -> first `audio-chunk`:
  what Home Assistant's pipeline does with a Wyoming conversation agent and a Wyoming TTS.
- turn-streamed: the same, but TTS starts on the first sentence of the streamed answer (`handled-chunk` ->
  `synthesize-start`/`synthesize-chunk`), what a streaming pipeline does.

Prints one JSON object: medians and maxima in milliseconds, and the ours/peer ratio for tts.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStop, NotHandled
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

VOICE = "en_US-joe-medium"
ANSWER = "The capital of France is Paris. It is known for the Eiffel Tower."
QUESTION = "What is the capital of France? Answer in one sentence."  # the kiosk benchmark's question


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_info(port: int, timeout: float = 180.0) -> Info:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Describe().event())
                event = await asyncio.wait_for(client.read_event(), 1.0)
                if event is not None and Info.is_type(event.type):
                    return Info.from_event(event)
        except (OSError, asyncio.TimeoutError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"no Wyoming server answered describe on port {port}")
        await asyncio.sleep(0.2)


async def read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), 60.0)
    if event is None:
        raise RuntimeError("the server closed the connection")
    if Error.is_type(event.type):
        raise RuntimeError(f"error event: {Error.from_event(event).text}")
    return event


async def first_audio(client: AsyncTcpClient) -> None:
    while not AudioChunk.is_type((await read(client)).type):
        pass


async def drain_audio(client: AsyncTcpClient, stop_types: tuple[str, ...]) -> None:
    while (await read(client)).type not in stop_types:
        pass


async def tts_ms(port: int, text: str) -> float:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        start = time.perf_counter()
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=VOICE)).event())
        await first_audio(client)
        took = (time.perf_counter() - start) * 1000
        await drain_audio(client, ("audio-stop",))
    return took


async def turn_ms(port: int) -> tuple[float, str]:
    """Home Assistant's sequence: the whole answer (`handled`), then TTS of it."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        start = time.perf_counter()
        await client.write_event(Transcript(text=QUESTION, context={"conversation_id": uuid.uuid4().hex},
                                            language="en").event())
        while True:
            event = await read(client)
            if Handled.is_type(event.type):
                answer = Handled.from_event(event).text or ""
                break
            if NotHandled.is_type(event.type):
                raise RuntimeError(f"not handled: {NotHandled.from_event(event).text}")
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=answer, voice=SynthesizeVoice(name=VOICE)).event())
        await first_audio(client)
        took = (time.perf_counter() - start) * 1000
        await drain_audio(client, ("audio-stop",))
    return took, answer


async def streamed_turn_ms(port: int) -> float:
    """A streaming pipeline: the answer's text is forwarded to TTS as it is written; timed to the first audio."""
    async with AsyncTcpClient("127.0.0.1", port) as chat, AsyncTcpClient("127.0.0.1", port) as tts:
        start = time.perf_counter()
        await chat.write_event(Transcript(text=QUESTION, context={"conversation_id": uuid.uuid4().hex},
                                          language="en").event())
        await tts.write_event(SynthesizeStart(voice=SynthesizeVoice(name=VOICE)).event())

        async def forward() -> None:
            while True:
                event = await read(chat)
                if HandledChunk.is_type(event.type):
                    await tts.write_event(SynthesizeChunk(text=HandledChunk.from_event(event).text).event())
                elif HandledStop.is_type(event.type) or Handled.is_type(event.type):
                    await tts.write_event(SynthesizeStop().event())
                    return
                elif NotHandled.is_type(event.type):
                    raise RuntimeError(f"not handled: {NotHandled.from_event(event).text}")

        forwarding = asyncio.ensure_future(forward())
        await first_audio(tts)
        took = (time.perf_counter() - start) * 1000
        await forwarding
        await drain_audio(tts, ("synthesize-stopped",))
    return took


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1), "max_ms": round(max(values), 1)}


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def measure(args: argparse.Namespace, ours: int, peer: int | None) -> dict[str, object]:
    info = await wait_info(ours)
    if peer is not None:
        await wait_info(peer)
    # Warm-up: the first synthesis loads the voice, the first turn fills the prefix cache with the system prompt.
    await tts_ms(ours, ANSWER)
    await turn_ms(ours)
    if peer is not None:
        await tts_ms(peer, ANSWER)
    results: dict[str, list[float]] = {"tts": [], "tts_peer": [], "turn": [], "turn_streamed": []}
    answers = set()
    for _ in range(args.rounds):
        if peer is not None:
            results["tts_peer"].append(await tts_ms(peer, ANSWER))
        results["tts"].append(await tts_ms(ours, ANSWER))
        took, answer = await turn_ms(ours)
        results["turn"].append(took)
        answers.add(answer)
        results["turn_streamed"].append(await streamed_turn_ms(ours))
    report: dict[str, object] = {name: summary(v) for name, v in results.items() if v}
    if results["tts_peer"]:
        report["tts_ratio_ours_over_peer"] = round(statistics.median(results["tts"])
                                                   / statistics.median(results["tts_peer"]), 3)
    report["answers"] = sorted(answers)
    report["rounds"] = args.rounds
    report["server"] = [p.name for p in (*info.asr, *info.tts, *info.handle)]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--peer-python", default=None, help="a Python with wyoming-piper installed")
    args = parser.parse_args()
    exe = shutil.which("clawd-edge") or sys.exit("clawd-edge is not on PATH")
    import yaml

    from edge_runtime.voice.tts import PiperTTS

    voice_file = PiperTTS(VOICE).model_path
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "threads": 2, "keep_alive": float("inf"),
            "modules": {"voice": {"enabled": False, "tts": "piper", "voice": VOICE, "language": "en"}},
        }))
        env = {**os.environ, "CLAWD_EDGE_CONFIG": str(config)}
        ours = free_port()
        cmd = [exe, "serve", "--model", args.model, "--port", str(free_port()),
               "--wyoming", f"tcp://127.0.0.1:{ours}"]
        with contextlib.ExitStack() as stack:
            stack.enter_context(process(cmd, env, work / "ours.log"))
            peer: int | None = None
            if args.peer_python:
                peer = free_port()
                stack.enter_context(process(
                    [args.peer_python, "-m", "wyoming_piper", "--voice", VOICE, "--data-dir",
                     str(voice_file.parent), "--uri", f"tcp://127.0.0.1:{peer}"], env, work / "peer.log"))
            try:
                report = asyncio.run(measure(args, ours, peer))
            except BaseException:
                for log in work.glob("*.log"):
                    sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
                raise
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
