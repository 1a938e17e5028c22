"""Control-token text inside chat messages is tokenized as text, so a caller cannot forge the template's turns."""
from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .types import ChatMessage

# Private-use code points around a placeholder: no template writes them and no tokenizer treats them specially.
OPEN, CLOSE = "\ue000", "\ue001"


@dataclass(frozen=True)
class Part:
    """A run of prompt text, and whether llama.cpp may read control tokens in it."""

    text: str
    parse_special: bool


def _texts(message: ChatMessage) -> list[str]:
    """The caller-written text of a message that reaches the template."""
    return [message.content, *(c.arguments for c in message.tool_calls)]


class SpecialText:
    """The control-token strings of one vocabulary (`<|im_end|>`, `<start_of_turn>`, ...).

    `render` renders messages with each such string in their content replaced by a placeholder: the template
    still sees the rest of the content (so `| trim` and friends still apply) and its own markers stay special,
    while the forged ones become `Part(text, parse_special=False)`. The placeholders carry a per-render random
    number, so content cannot smuggle in a placeholder of its own.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        # Longest first: "<|im_start|>" must win over a shorter token that is its prefix.
        unique = sorted({t for t in texts if t}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def present(self, messages: Sequence[ChatMessage]) -> bool:
        pattern = self._pattern
        return pattern is not None and any(pattern.search(text) for m in messages for text in _texts(m))

    def render(self, messages: Sequence[ChatMessage], render: Callable[[list[ChatMessage]], str]) -> list[Part]:
        """`render(messages)` split into parts, the control-token text that came from the messages as text."""
        pattern = self._pattern
        if pattern is None or not self.present(messages):
            return [Part(render(list(messages)), True)]
        nonce = f"{secrets.randbelow(10**12):012d}"
        forged: list[str] = []

        def hide(match: re.Match[str]) -> str:
            forged.append(match.group(0))
            return f"{OPEN}{nonce}:{len(forged) - 1}{CLOSE}"

        masked = [dataclasses.replace(m, content=pattern.sub(hide, m.content), tool_calls=tuple(
            dataclasses.replace(c, arguments=pattern.sub(hide, c.arguments)) for c in m.tool_calls))
            for m in messages]
        rendered = render(masked)
        parts: list[Part] = []
        at = 0
        for match in re.finditer(re.escape(OPEN + nonce + ":") + r"(\d+)" + re.escape(CLOSE), rendered):
            if match.start() > at:
                parts.append(Part(rendered[at:match.start()], True))
            parts.append(Part(forged[int(match.group(1))], False))
            at = match.end()
        if at < len(rendered):
            parts.append(Part(rendered[at:], True))
        return parts
