"""A bounded conversation: system prompt first (so the engine's prefix cache keeps it), oldest turns dropped."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..engine.types import ChatMessage

# Before the first answer tells us the real ratio: a conservative guess (English runs ~4 characters per token,
# Korean and digits fewer), so the first prompt is never over-filled.
_INITIAL_TOKENS_PER_CHAR = 0.5
_TEMPLATE_TOKENS_PER_MESSAGE = 8


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


class Conversation:
    """History that always fits `budget` tokens (the slot context minus the answer's max_tokens).

    Token counts are estimated from characters with the ratio the engine actually reported for the last
    prompt (usage.prompt_tokens), so the estimate tracks the model's tokenizer without tokenizing twice.
    Dropped turns are gone; a 135M-parameter model summarises too poorly for a summary to be worth its tokens.
    """

    def __init__(self, system_prompt: str, *, max_turns: int, budget: int) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.budget = budget
        self.turns: deque[Turn] = deque()
        self.tokens_per_char = _INITIAL_TOKENS_PER_CHAR
        self.dropped = 0

    def _estimate(self, messages: list[ChatMessage]) -> int:
        chars = sum(len(m.content) for m in messages)
        return int(chars * self.tokens_per_char) + _TEMPLATE_TOKENS_PER_MESSAGE * len(messages)

    def messages(self, user: str) -> tuple[ChatMessage, ...]:
        """The request for a new user message, dropping the oldest turns until it fits."""
        while len(self.turns) > self.max_turns:
            self.turns.popleft()
            self.dropped += 1
        while True:
            out = [ChatMessage("system", self.system_prompt)]
            for turn in self.turns:
                out += [ChatMessage("user", turn.user), ChatMessage("assistant", turn.assistant)]
            out.append(ChatMessage("user", user))
            if not self.turns or self._estimate(out) <= self.budget:
                return tuple(out)
            self.turns.popleft()
            self.dropped += 1

    def add(self, user: str, assistant: str) -> None:
        if self.max_turns > 0 and assistant.strip():
            self.turns.append(Turn(user, assistant.strip()))
        while len(self.turns) > self.max_turns:
            self.turns.popleft()
            self.dropped += 1

    def calibrate(self, messages: tuple[ChatMessage, ...], prompt_tokens: int) -> None:
        """Learn the tokens-per-character ratio from what the engine reported for `messages`."""
        chars = sum(len(m.content) for m in messages)
        template = _TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
        if chars > 0 and prompt_tokens > template:
            # Keep 10 % headroom: the next message may tokenize worse than the average so far.
            self.tokens_per_char = 1.1 * (prompt_tokens - template) / chars
