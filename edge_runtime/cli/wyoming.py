"""`clawd-edge wyoming`: the Wyoming server alone (no HTTP API), with its own engine and voice module."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import click

from ..engine.ready import wait_ready
from . import state

if TYPE_CHECKING:
    from ..config import Settings
    from ..wyoming.options import WyomingOptions

log = logging.getLogger("edge_runtime.wyoming")


async def _run(settings: Settings, options: WyomingOptions) -> None:
    from ..engine import create_engine
    from ..sdnotify import Notifier
    from ..store import resolve_model
    from ..wyoming.server import WyomingServer, shared_voice

    voice, _ = shared_voice(settings, ())  # validated before the model loads: a typo fails at once
    resolved = resolve_model(settings)
    engine = create_engine(settings, resolved if resolved.entry is not None else resolved.path)
    server = WyomingServer(settings, options, engine, voice, owns_voice=True)
    notifier = Notifier()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()  # describe is answered while the model loads
        if settings.keep_alive != 0:
            await wait_ready(engine)
        ready = f"wyoming: serving {engine.status().model} on {options.uri}"
        log.info("%s", ready)
        notifier.ready(ready)
        await stopping.wait()
        notifier.stopping("wyoming stopping")
    finally:
        await server.stop(max(0.0, settings.server.shutdown_timeout - 2.0))
        await engine.close()


@click.command()
@click.option("--model", "-m", default=None, help="Registry name or GGUF path (default: config model_path).")
@click.option("--uri", default=None, metavar="URI",
              help="Where to listen: tcp://HOST:PORT or unix:///PATH (default: wyoming.uri, tcp://127.0.0.1:10300).")
@click.option("--zeroconf/--no-zeroconf", default=None,
              help="Announce the server over mDNS for Home Assistant (default: wyoming.zeroconf).")
@click.pass_context
def wyoming(ctx: click.Context, model: str | None, uri: str | None, zeroconf: bool | None) -> None:
    """Serve Home Assistant's Wyoming protocol: speech to text, text to speech and the LLM as an agent."""
    from ..wyoming.options import check_uri, parse_options

    settings = state(ctx).settings.replace(model_path=model)
    options = parse_options(dict(settings.wyoming)).replace(
        uri=check_uri(uri, "--uri") if uri is not None else None, zeroconf=zeroconf)
    runtime_log = logging.getLogger("edge_runtime")
    if runtime_log.getEffectiveLevel() > logging.INFO:
        runtime_log.setLevel(logging.INFO)
    asyncio.run(_run(settings, options))
