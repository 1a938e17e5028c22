"""`clawd-edge chat`: one-shot prompt or interactive REPL with the model's own chat template."""
from __future__ import annotations

import sys
from typing import Any

import click

from ..store import resolve_model
from . import state


def _load(settings: Any, model: str | None) -> Any:
    from llama_cpp import Llama  # heavy: only when a command really runs a model

    resolved = resolve_model(settings, model)
    return Llama(model_path=str(resolved.path), n_ctx=settings.max_sequence_length,
                 n_threads=settings.threads, n_batch=settings.batch_size, verbose=False)


def _answer(llm: Any, messages: list[dict[str, str]], max_tokens: int, temperature: float,
            seed: int | None) -> str:
    parts = []
    for event in llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=temperature,
                                            seed=seed, stream=True):
        text = event["choices"][0]["delta"].get("content") or ""
        parts.append(text)
        click.echo(text, nl=False)
        sys.stdout.flush()
    click.echo("")
    return "".join(parts)


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "-m", default=None, help="Registry name or GGUF path (default: config model_path).")
@click.option("--max-tokens", "-n", type=click.IntRange(1), default=256, show_default=True)
@click.option("--temperature", "-t", type=click.FloatRange(0), default=0.7, show_default=True,
              help="0 = greedy.")
@click.option("--seed", type=int, default=None)
@click.option("--system", default=None, help="System prompt (default: config system_prompt).")
@click.pass_context
def chat(ctx: click.Context, prompt: str | None, model: str | None, max_tokens: int, temperature: float,
         seed: int | None, system: str | None) -> None:
    """Answer PROMPT (streamed to stdout), or start an interactive chat when no PROMPT is given."""
    settings = state(ctx).settings
    llm = _load(settings, model)
    history: list[dict[str, str]] = []
    system = system or settings.system_prompt
    if system:
        history.append({"role": "system", "content": system})
    if prompt is not None:
        _answer(llm, [*history, {"role": "user", "content": prompt}], max_tokens, temperature, seed)
        return
    click.echo("chat with the model; /reset clears the conversation, /bye or Ctrl-D quits", err=True)
    base = list(history)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo("", err=True)
            return
        if line.strip() in ("/bye", "/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = list(base)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        history.append({"role": "assistant",
                        "content": _answer(llm, history, max_tokens, temperature, seed)})
