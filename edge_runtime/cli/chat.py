"""`clawd-edge chat`: one-shot prompt or interactive REPL on the engine, with the model's own chat template."""
from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidRequest
from ..store import resolve_model
from . import state

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine import LlamaEngine
    from ..engine.types import ChatMessage, SamplingParams


async def _answer(engine: LlamaEngine, messages: list[ChatMessage], sampling: SamplingParams,
                  parts: list[str]) -> str:
    """Stream the answer to stdout; `parts` keeps what was shown even when the answer is stopped."""
    from ..engine.types import GenerationRequest

    async for chunk in engine.generate(GenerationRequest(messages=tuple(messages), sampling=sampling)):
        parts.append(chunk.text)
        click.echo(chunk.text, nl=False)
        sys.stdout.flush()
    click.echo("")
    return "".join(parts)


class _StopAnswer:
    """Ctrl-C while an answer streams stops that answer (its slot is freed); at the prompt it clears the line."""

    def __init__(self) -> None:
        self.answer: asyncio.Task[str] | None = None
        self.previous: Any = None

    def __enter__(self) -> _StopAnswer:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.cancel()
        else:
            raise KeyboardInterrupt


def _read_line() -> str | None:
    """One line from the user with readline editing and history (arrow keys); None at end of input."""
    while True:
        try:
            return input(">>> ")
        except EOFError:
            click.echo("", err=True)
            return None
        except KeyboardInterrupt:  # like a shell: Ctrl-C drops the line, Ctrl-D or /bye quits
            click.echo("", err=True)


async def _repl(engine: LlamaEngine, history: list[ChatMessage], sampling: SamplingParams) -> None:
    import readline  # noqa: F401 - imported for its side effect: line editing and history for input()

    from ..engine.types import ChatMessage

    click.echo("chat with the model; /reset clears the conversation, Ctrl-C stops an answer, /bye or Ctrl-D "
               "quits", err=True)
    base = list(history)
    with _StopAnswer() as stop:
        while (line := _read_line()) is not None:
            command = line.strip()
            if command in ("/bye", "/exit", "/quit"):
                return
            if command == "/reset":
                history = list(base)
                continue
            if not command:
                continue
            turn = [*history, ChatMessage("user", line)]
            parts: list[str] = []
            stop.answer = asyncio.ensure_future(_answer(engine, turn, sampling, parts))
            try:
                reply = await stop.answer
            except asyncio.CancelledError:
                click.echo("\n[stopped]", err=True)
                reply = "".join(parts)
            except InvalidRequest as exc:  # e.g. the conversation outgrew the context: say so, keep chatting
                click.echo(f"error: {exc} (use /reset to start over)", err=True)
                continue
            finally:
                stop.answer = None
            history = [*turn, ChatMessage("assistant", reply)]


async def _session(settings: Settings, model: str | None, prompt: str | None, system: str | None,
                   sampling: SamplingParams) -> None:
    from ..engine import create_engine
    from ..engine.types import ChatMessage

    # One conversation needs one slot: no KV cache for idle parallel slots.
    engine = create_engine(settings.replace(parallel=1), resolve_model(settings, model))
    try:
        history: list[ChatMessage] = [ChatMessage("system", system)] if system else []
        if prompt is not None:
            await _answer(engine, [*history, ChatMessage("user", prompt)], sampling, [])
        else:
            await _repl(engine, history, sampling)
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
