"""A request's prompt tokens: the chat template (tools rendered natively or as a system section), or a raw prompt."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest
from .specials import Part, SpecialText
from .template import ChatTemplate
from .tools import FORMATS, CallFormat, native_format, openai_tools, plain_history, tool_prompt
from .types import ChatMessage, GenerationRequest

if TYPE_CHECKING:
    from .native import Runtime


def call_format(template: ChatTemplate | None) -> tuple[CallFormat, bool]:
    """How the model is taught to call tools, and whether its own template teaches it (else a system section)."""
    native = native_format(template.source if template is not None else None)
    return (native, True) if native is not None else (FORMATS["hermes"], False)


class PromptBuilder:
    """Turns a request into the tokens a slot evaluates; runs on the engine's worker thread."""

    def __init__(self, rt: Runtime, template: ChatTemplate | None, system_prompt: str | None,
                 specials: SpecialText | None) -> None:
        """With `specials`, control-token text inside chat messages is tokenized as plain text."""
        self.rt = rt
        self.template = template
        self.system_prompt = system_prompt
        self.specials = specials
        self.call_format, self.native_tools = call_format(template)

    def _messages(self, request: GenerationRequest) -> tuple[list[ChatMessage], list[dict[str, Any]] | None]:
        """The messages to render and, for a template that renders tools itself, the tools it gets."""
        assert request.messages is not None
        use = request.tools
        # History with tool calls and results is rendered as text for a template that knows no tools.
        messages = list(request.messages) if self.native_tools else plain_history(request.messages, self.call_format)
        section = tool_prompt(use, self.call_format) if use is not None and not self.native_tools else ""
        system = next((i for i, m in enumerate(messages) if m.role == "system"), None)
        if system is None and (self.system_prompt or section):
            messages.insert(0, ChatMessage("system", "\n\n".join(t for t in (self.system_prompt, section) if t)))
        elif system is not None and section:
            first = messages[system]
            messages[system] = dataclasses.replace(first, content=f"{first.content}\n\n{section}")
        return messages, openai_tools(use.tools) if use is not None and self.native_tools else None

    def _parts(self, request: GenerationRequest) -> tuple[list[Part], str]:
        rt = self.rt
        if request.messages is None:
            # A raw prompt is the caller's own template: its control tokens are meant (as in llama-server).
            return [Part(request.prompt or "", True)], "prompt"
        template = self.template
        if template is None:
            raise InvalidRequest(
                f"{rt.plan.model_path.name} has no chat template (no tokenizer.chat_template in the GGUF) and "
                "none is configured; set chat_template in config.yaml or send a plain prompt", param="messages")
        messages, tools = self._messages(request)

        def render(shown: list[ChatMessage]) -> str:
            return template.render(shown, bos_token=rt.bos_text, eos_token=rt.eos_text, tools=tools)

        if self.specials is None:
            return [Part(render(messages), True)], "messages"
        return self.specials.render(messages, render), "messages"

    def tokens(self, request: GenerationRequest, limit: int) -> list[int]:
        """The prompt's tokens; InvalidRequest if it is empty or does not fit a slot of `limit` tokens."""
        rt = self.rt
        parts, param = self._parts(request)
        tokens = [t for i, part in enumerate(parts)
                  for t in rt.tokenize(part.text, add_special=i == 0, parse_special=part.parse_special)]
        if rt.add_bos and len(tokens) >= 2 and tokens[0] == tokens[1] == rt.bos:
            del tokens[0]  # the template wrote bos_token itself; llama.cpp added another
        if not tokens:
            raise InvalidRequest("the prompt is empty", param=param)
        if len(tokens) >= limit:
            raise InvalidRequest(
                f"the prompt is {len(tokens)} tokens but a slot's context holds {limit} "
                f"(max_sequence_length); shorten it", param=param)
        return tokens
