"""Chat templates: the GGUF's `tokenizer.chat_template` (or the configured one) rendered in a jinja2 sandbox."""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidRequest, ModelError
from .types import ChatMessage


class TemplateRaised(Exception):
    """A template called raise_exception(): the messages break its rules (e.g. roles must alternate)."""


def _raise(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Transformers renders tojson without ASCII escaping; templates rely on that for non-English text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template; `origin` says where it came from for error messages."""

    def __init__(self, source: str, origin: str) -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.origin = origin
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            message = f"chat template from {origin} is not valid jinja2 (line {exc.lineno}): {exc.message}"
            if origin == "config chat_template":
                raise ConfigError(message, key="chat_template") from None
            raise ModelError(message) from None

    def render(self, messages: Sequence[ChatMessage], *, bos_token: str, eos_token: str,
               add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> str:
        """`tools` (OpenAI's tool objects) are given only to a template that renders them itself."""
        from .tools import template_messages

        extra = {} if tools is None else {"tools": tools}
        try:
            return self._template.render(
                messages=template_messages(messages), add_generation_prompt=add_generation_prompt,
                bos_token=bos_token, eos_token=eos_token, **extra,
            )
        except TemplateRaised as exc:
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}",
                                 param="messages") from None
        except Exception as exc:  # noqa: BLE001 - any failure of the template (jinja2 errors, 1 // 0, ...)
            # is this request's problem: a 400 for it, never an exception that could stop the engine worker.
            raise InvalidRequest(f"the chat template from {self.origin} failed on these messages: "
                                 f"{type(exc).__name__}: {exc}", param="messages") from None


def load_template(configured: str | None, from_model: str | None) -> ChatTemplate | None:
    """The configured template (inline jinja2 or a file path) wins; else the model's; None when neither exists."""
    if configured:
        if "{{" in configured or "{%" in configured:
            return ChatTemplate(configured, "config chat_template")
        path = Path(configured).expanduser()
        try:
            return ChatTemplate(path.read_text(encoding="utf-8"), "config chat_template")
        except OSError as exc:
            raise ConfigError(f"{configured!r} is neither a jinja2 template nor a readable file ({exc.strerror})",
                              key="chat_template") from None
    if from_model:
        return ChatTemplate(from_model, "the model's tokenizer.chat_template")
    return None
