"""`clawd-edge chat`: one-shot prompt or interactive REPL on the engine, with the model's own chat template."""
from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from ..errors import InvalidRequest
from ..store import resolve_model
from . import state

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import LlamaEngine
    from ..engine.types import ChatMessage, SamplingParams


async def _answer(engine: LlamaEngine, messages: list[ChatMessage], sampling: SamplingParams) -> str:
    from ..engine.types import GenerationRequest

    parts = []
    async for chunk in engine.generate(GenerationRequest(messages=tuple(messages), sampling=sampling)):
        parts.append(chunk.text)
        click.echo(chunk.text, nl=False)
        sys.stdout.flush()
    click.echo("")
    return "".join(parts)


async def _session(settings: Settings, model: str | None, prompt: str | None, system: str | None,
                   sampling: SamplingParams) -> None:
    from ..engine import create_engine
    from ..engine.types import ChatMessage

    # One conversation needs one slot: no KV cache for idle parallel slots.
    engine = create_engine(settings.replace(parallel=1), resolve_model(settings, model))
    try:
        history: list[ChatMessage] = [ChatMessage("system", system)] if system else []
        if prompt is not None:
            await _answer(engine, [*history, ChatMessage("user", prompt)], sampling)
            return
        click.echo("chat with the model; /reset clears the conversation, /bye or Ctrl-D quits", err=True)
        base = list(history)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                click.echo("", err=True)
                return
            command = line.strip()
            if command in ("/bye", "/exit", "/quit"):
                return
            if command == "/reset":
                history = list(base)
                continue
            if not command:
                continue
            turn = [*history, ChatMessage("user", line)]
            try:
                reply = await _answer(engine, turn, sampling)
            except InvalidRequest as exc:  # e.g. the conversation outgrew the context: say so, keep chatting
                click.echo(f"error: {exc} (use /reset to start over)", err=True)
                continue
            history = [*turn, ChatMessage("assistant", reply)]
    finally:
        await engine.close()


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "-m", default=None, help="Registry name or GGUF path (default: config model_path).")
@click.option("--max-tokens", "-n", type=click.IntRange(1), default=256, show_default=True)
# Greedy by default: a 135M model at temperature 0.7 answers "the capital of France" wrongly for some seeds.
@click.option("--temperature", "-t", type=click.FloatRange(0), default=0.0, show_default=True,
              help="0 = greedy (deterministic); e.g. 0.7 for more varied answers.")
@click.option("--seed", type=int, default=None)
@click.option("--system", default=None, help="System prompt (default: config system_prompt).")
@click.pass_context
def chat(ctx: click.Context, prompt: str | None, model: str | None, max_tokens: int, temperature: float,
         seed: int | None, system: str | None) -> None:
    """Answer PROMPT (streamed to stdout), or start an interactive chat when no PROMPT is given."""
    from ..engine.types import SamplingParams

    settings = state(ctx).settings
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    try:
        asyncio.run(_session(settings, model, prompt, system, sampling))
    except KeyboardInterrupt:
        click.echo("", err=True)
        ctx.exit(130)
