"""`clawd-edge listen` (print final transcripts) and `clawd-edge say` (speak or write a WAV)."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..errors import AudioError, UsageError
from . import state


def _voice_module(settings: Settings, uses: frozenset[str] | None = None, **changes: Any) -> Any:
    """The voice module built from `modules.voice` options (enabled or not) plus command-line overrides."""
    from ..voice.module import EVERYTHING, create

    configured = settings.modules.get("voice")
    options: dict[str, Any] = dict(configured.options) if configured is not None else {}
    options.update({k: v for k, v in changes.items() if v is not None})
    return create(options, settings, uses=uses or EVERYTHING)


@click.command()
@click.option("--input", "input_spec", metavar="FILE.wav|-",
              help="WAV or raw 16 kHz mono S16LE file, or - for stdin (default: the configured microphone).")
@click.option("--grammar", type=click.Path(dir_okay=False, path_type=Path),
              help="Text file, one phrase per line: recognise only these phrases.")
@click.option("--stt-model", metavar="NAME|PATH", help="Speech model: registry name or model directory.")
@click.option("--device", metavar="NAME|INDEX", help="Microphone (when no --input): device name or index.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many transcripts.")
@click.pass_context
def listen(ctx: click.Context, input_spec: str | None, grammar: Path | None, stt_model: str | None,
           device: str | None, count: int | None) -> None:
    """Print each final transcript on its own line (Ctrl-C to stop the microphone)."""
    if input_spec and device:
        raise UsageError("--device selects a microphone; it cannot be combined with --input")
    spec = input_spec if input_spec else (f"mic:{device}" if device else None)
    if grammar is not None and not grammar.is_file():
        raise UsageError(f"--grammar: {grammar}: no such file")
    from ..voice.module import MIC, STT

    module = _voice_module(state(ctx).settings, frozenset({STT, MIC}), input=spec, stt_model=stt_model,
                           grammar=str(grammar) if grammar else None)
    transcripts = module.listen(module.open_source())
    with contextlib.suppress(KeyboardInterrupt):
        for heard, text in enumerate(transcripts, start=1):
            click.echo(text)
            if count is not None and heard >= count:
                break
    transcripts.close()  # stops the microphone


@click.command()
@click.argument("text")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a WAV file instead of playing through the output device.")
@click.option("--voice", help="espeak-ng voice (e.g. ko, en-us) or Piper voice.")
@click.option("--tts", type=click.Choice(["espeak", "piper"]), help="Speech engine (default: configured).")
@click.option("--rate", type=int, help="Speaking rate in words per minute.")
@click.pass_context
def say(ctx: click.Context, text: str, output: Path | None, voice: str | None, tts: str | None,
        rate: int | None) -> None:
    """Speak TEXT (sentence by sentence) or write it to --output as WAV."""
    if not text.strip():
        raise UsageError("TEXT is empty")
    from ..voice.module import PLAYBACK, TTS_ONLY

    changes: Mapping[str, Any] = {"voice": voice, "tts": tts, "rate": rate}
    module = _voice_module(state(ctx).settings, frozenset({TTS_ONLY} if output else {TTS_ONLY, PLAYBACK}),
                           **changes)
    if output is not None:
        from ..voice.audio import encode_wav

        audio = module.tts().synthesize(text)
        try:
            output.write_bytes(encode_wav(audio))
        except OSError as exc:
            raise AudioError(f"{output}: cannot write: {exc.strerror or exc}") from None
        click.echo(f"{output}: {audio.duration:.2f} s at {audio.sample_rate} Hz", err=True)
        return
    with contextlib.suppress(KeyboardInterrupt):
        module.speaker().say(text)
