"""`clawd-edge kiosk`: the voice/OCR dialogue loop on the local microphone, camera and speaker (or typed text)."""
from __future__ import annotations

import asyncio
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from ..engine.ready import wait_ready
from ..errors import UsageError
from . import state

if TYPE_CHECKING:
    from ..config import Settings
    from ..kiosk.loop import Kiosk


def _read_typed(kiosk: Kiosk) -> None:
    """stdin lines become turns; `/read` (the "read this" key) asks for the camera, `/quit` ends."""
    from ..kiosk.loop import KioskInput

    try:
        for line in sys.stdin:
            text = line.strip()
            if text == "/quit":
                break
            if text == "/read":
                kiosk.submit(KioskInput("", "text", read=True))
            elif text:
                kiosk.submit(KioskInput(text, "text"))
    finally:
        kiosk.submit(None)


@click.command()
@click.option("--model", "-m", help="Registry name or GGUF path (default: config model_path).")
@click.option("--input", "input_spec", metavar="mic[:DEV]|FILE.wav|-",
              help="Speech input (default: modules.voice.input, the microphone).")
@click.option("--text", "typed", is_flag=True,
              help="Read questions typed on stdin instead of listening (/read = read the camera, /quit).")
@click.option("--camera", metavar="URI", help="Camera for 'read this' turns (default: modules.ocr.camera).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Append one JSON line per turn here.")
@click.option("--turns", type=click.IntRange(min=1), help="Exit after this many turns.")
@click.option("--mute", is_flag=True, help="Print answers only; do not speak them.")
@click.option("--realtime", is_flag=True, help="Pace file input like a live microphone (for latency numbers).")
@click.option("--language", help="Speech language, e.g. en or ko (default: modules.voice.language).")
@click.option("--stt-model", metavar="NAME|PATH", help="Speech model (default: modules.voice.stt_model).")
@click.pass_context
def kiosk(ctx: click.Context, model: str | None, input_spec: str | None, typed: bool, camera: str | None,
          log_path: str | None, turns: int | None, mute: bool, realtime: bool, language: str | None,
          stt_model: str | None) -> None:
    """Answer visitors: speech (or typed text) in, the camera read on "read this", answers spoken."""
    if typed and input_spec is not None:
        raise UsageError("--text reads typed questions from stdin; it cannot be combined with --input")
    settings = state(ctx).settings.replace(model_path=model, parallel=1)
    from ..kiosk.options import parse_options
    from ..kiosk.service import build_parts, module_options
    from ..kiosk.turnlog import TurnLog

    options = parse_options(module_options(settings, "kiosk", camera=camera, log=log_path,
                                           speak=False if mute else None,
                                           realtime_input=True if realtime else None))
    parts = build_parts(settings, options, need_voice=options.speak or not typed,
                        voice_changes={"input": input_spec, "language": language, "stt_model": stt_model})
    turn_log = TurnLog(options.log)
    try:
        asyncio.run(_run(settings, options, parts.voice, parts.ocr, turn_log, typed=typed, turns=turns))
    finally:
        turn_log.close()


async def _run(settings: Settings, options: Any, voice: Any, ocr: Any, turn_log: Any, *, typed: bool,
               turns: int | None) -> None:
    from ..engine import create_engine
    from ..kiosk.loop import Kiosk, KioskInput, State
    from ..sdnotify import Notifier
    from ..store import resolve_model

    resolved = resolve_model(settings)
    engine = create_engine(settings, resolved if resolved.entry is not None else resolved.path)
    try:
        for module in (voice, ocr):
            if module is not None:
                await module.start()  # loads the speech model / checks Tesseract before the first visitor
        await wait_ready(engine)

        def show(delta: str) -> None:
            click.echo(delta, nl=False)

        def on_state(new: State) -> None:
            if new is State.IDLE:
                click.echo()

        def heard(item: KioskInput) -> None:
            if item.source == "voice":
                click.echo(f"> {item.text}")

        kiosk_loop = Kiosk(settings, engine, voice, ocr, options, log_to=turn_log, on_text=show,
                           on_state=on_state, on_input=heard)
        if typed:
            threading.Thread(target=_read_typed, args=(kiosk_loop,), name="kiosk-stdin", daemon=True).start()
        else:
            kiosk_loop.listen()
        ready = f"kiosk ready ({engine.status().model}); " + ("type a question, /read or /quit" if typed
                                                               else "listening")
        click.echo(ready, err=True)
        notifier = Notifier()
        notifier.ready(ready)  # systemd Type=notify: up once the models are loaded and the mic is open
        try:
            await kiosk_loop.run(max_turns=turns)
        finally:
            notifier.stopping("kiosk stopping")
    finally:
        for module in (voice, ocr):
            if module is not None:
                await module.stop()
        await engine.close()
