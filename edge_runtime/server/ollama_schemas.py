"""Ollama request bodies as strict Pydantic models, and their translation into the engine's GenerationRequest."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from edge_runtime.engine.tools import ToolCall, parse_tools, tool_use
from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams
from edge_runtime.errors import InvalidRequest

from .schemas import MAX_STOP_STRINGS, NonEmpty, ToolDefinition

MAX_MESSAGES = 1024
FOREVER_SECONDS = float(2**31)
MAX_IMAGES = 16
# Go's time.ParseDuration units, which Ollama's keep_alive strings use.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?([0-9]*\.?[0-9]+)")


def _integral(value: object) -> object:
    """8192.0 is 8192: Ollama (Go) reads options as JSON numbers, and Home Assistant sends its number fields as
    floats. Anything else is left for strict validation to reject (3.5, "3", true)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    # strict: wrong types are 400s, never coerced; extra="ignore": clients send fields we do not act on (Ollama
    # itself ignores unknown ones too).
    model_config = ConfigDict(strict=True, extra="ignore")


class Options(_Strict):
    """The Modelfile parameters a request may override; load-time ones (num_gpu, num_thread...) are ignored."""

    num_predict: Annotated[Int, Field(ge=-2, lt=2**31)] | None = None
    num_ctx: Annotated[Int, Field(ge=1, lt=2**31)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_k: Annotated[Int, Field(ge=0, lt=2**31)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: Annotated[Int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: Annotated[list[NonEmpty], Field(max_length=MAX_STOP_STRINGS)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=10)] | None = None
    repeat_last_n: Annotated[Int, Field(ge=-1, lt=2**31)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    mirostat: Annotated[Int, Field(ge=0, le=2)] | None = None


Format = Literal["", "json"] | dict[str, Any]
KeepAlive = float | str
Think = bool | Literal["low", "medium", "high", "max"]


class _Generating(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class FunctionCall(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    # Ollama's shape is an object; a JSON string (as OpenAI-minded clients write it) is accepted too.
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class MessageToolCall(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: Annotated[list[str], Field(max_length=MAX_IMAGES)] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=64)] | None = None
    tool_name: Annotated[str, Field(max_length=256)] | None = None
    thinking: str | None = None


class ChatRequest(_Generating):
    # Empty (the python client's default): load, or with keep_alive 0 unload, the model (Ollama's convention).
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=64)] | None = None


class GenerateRequest(_Generating):
    # Empty: load, or with keep_alive 0 unload, the model. The python client sends "" for every unset string,
    # older LangChain null.
    prompt: str | None = None
    system: str | None = None
    suffix: str | None = None
    template: str | None = None
    context: Annotated[list[int], Field(max_length=1 << 20)] | None = None
    raw: bool | None = None
    images: Annotated[list[str], Field(max_length=MAX_IMAGES)] | None = None


class EmbedRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | list[str]
    truncate: bool | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsRequest(_Strict):
    """The legacy /api/embeddings: one prompt, one vector."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    prompt: Annotated[str, Field(min_length=1)]
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class ModelRequest(_Strict):
    """/api/show and /api/pull: `model`, or `name` as older clients send it."""

    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    verbose: bool | None = None
    insecure: bool | None = None
    stream: bool = True

    def wanted(self) -> str:
        wanted = self.model or self.name
        if wanted is None:
            raise InvalidRequest("model is required", param="model")
        return wanted


def keep_alive_seconds(value: KeepAlive | None, default: float) -> float:
    """Ollama's keep_alive as seconds: a number of seconds or a Go duration ("5m", "1h30m", "0"); negative, or past
    2**31 s, means for ever (math.inf). A unitless number in a string ("300", "-1") is seconds (Ollama would 400)."""
    if value is None:
        return default
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text[1:] if text[:1] in ("+", "-") else text
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif body and "".join(m.group(0) for m in _DURATION.finditer(body)) == body:
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(body))
        else:
            raise InvalidRequest(f"keep_alive {value[:40]!r} is not a duration (use seconds, or e.g. \"5m\", "
                                 "\"1h\", \"0\", \"-1\")", param="keep_alive")
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise InvalidRequest("keep_alive must be a number of seconds or a duration", param="keep_alive")
    # Beyond ~68 years is for ever: a timer that far out overflows the platform's time_t (and Go's Duration).
    return math.inf if seconds < 0 or seconds >= FOREVER_SECONDS else seconds


@dataclass
class Limits:
    """The server's bounds for one request, and what was clamped to fit them (reported to the client)."""

    max_tokens: int
    slot_context: int
    clamped: list[str] = field(default_factory=list)


def _max_tokens(options: Options, limits: Limits) -> int:
    """num_predict (<= 0: as many as the server allows, as Ollama's -1/-2) within server.max_tokens and num_ctx."""
    if options.num_ctx is not None and options.num_ctx > limits.slot_context:
        # Clamped, not refused: Home Assistant sends num_ctx 8192 by default, and a slot's context is fixed when
        # the daemon starts (max_sequence_length); a too-long prompt is still a 400 naming the real limit.
        limits.clamped.append(f"num_ctx={options.num_ctx}->{limits.slot_context}")
    window = min(options.num_ctx or limits.slot_context, limits.slot_context)
    wanted = options.num_predict if options.num_predict is not None and options.num_predict > 0 else None
    if wanted is not None and wanted > limits.max_tokens:
        limits.clamped.append(f"num_predict={wanted}->{limits.max_tokens}")
    # num_predict is an upper bound: stopping at the server's cap ends the answer with done_reason "length".
    return max(1, min(wanted or limits.max_tokens, limits.max_tokens, window))


def _format(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}  # Ollama's JSON mode: any JSON object
    assert isinstance(fmt, dict)
    return fmt


def _refuse_thinking(body: _Generating, model: str) -> None:
    if body.think is not None and body.think is not False:
        raise InvalidRequest(f"{model!r} does not support thinking", param="think")


def _images(images: list[str] | None, model: str, param: str) -> None:
    if images:
        raise InvalidRequest(f"images are not supported: {model!r} is a text-only model", param=param)


def sampling(body: _Generating, limits: Limits) -> SamplingParams:
    """Unset options keep the engine's defaults (llama-server's); set ones override."""
    options = body.options or Options()
    if options.mirostat:
        raise InvalidRequest("mirostat sampling is not supported; leave mirostat at 0", param="options.mirostat")
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    overrides: dict[str, Any] = {
        "temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k, "min_p": options.min_p,
        "repeat_penalty": options.repeat_penalty, "frequency_penalty": options.frequency_penalty,
        "presence_penalty": options.presence_penalty, "penalty_last_n": options.repeat_last_n,
    }
    seed = None if options.seed is None else options.seed % (2**32)  # llama.cpp seeds are uint32
    top = (body.top_logprobs or 0) if body.logprobs else None
    return SamplingParams(max_tokens=_max_tokens(options, limits), seed=seed, stop=tuple(options.stop or ()),
                          json_schema=_format(body.format), logprobs=top,
                          **{k: v for k, v in overrides.items() if v is not None})


def _arguments(call: MessageToolCall, param: str) -> str:
    args = call.function.arguments
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except ValueError:
            raise InvalidRequest(f"{param}: arguments must be a JSON object", param=param) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"{param}: arguments must be a JSON object", param=param)
        args = parsed
    return json.dumps(args, ensure_ascii=False)


def chat_messages(messages: list[Message], model: str) -> tuple[ChatMessage, ...]:
    """Ollama's history as engine messages. Its calls carry no ids: each gets one, and a tool result answers the
    open call named by its tool_name (else the oldest open call), as Ollama pairs them."""
    out: list[ChatMessage] = []
    open_calls: list[ToolCall] = []
    for i, m in enumerate(messages):
        _images(m.images, model, f"messages[{i}].images")
        if m.tool_calls and m.role != "assistant":
            raise InvalidRequest("only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")
        calls = tuple(ToolCall(c.id or f"call_{i}_{j}", c.function.name,
                               _arguments(c, f"messages[{i}].tool_calls[{j}].function.arguments"))
                      for j, c in enumerate(m.tool_calls or ()))
        call_id = None
        if m.role == "assistant":
            open_calls = list(calls)
        elif m.role == "tool":
            match = next((c for c in open_calls if c.name == m.tool_name), open_calls[0] if open_calls else None)
            if match is not None:
                open_calls.remove(match)
            call_id = match.id if match is not None else f"call_{i}"
        out.append(ChatMessage(role=m.role, content=m.content or "", tool_calls=calls, tool_call_id=call_id,
                               name=m.tool_name if m.role == "tool" else None))
    return tuple(out)


def chat_request(body: ChatRequest, model: str, limits: Limits) -> GenerationRequest:
    """/api/chat as a GenerationRequest; the model may call any of `tools` or answer in text (Ollama has no
    tool_choice)."""
    _refuse_thinking(body, model)
    tools = parse_tools([t.model_dump(exclude_none=True) for t in body.tools or ()])
    return GenerationRequest(sampling=sampling(body, limits), messages=chat_messages(body.messages or [], model),
                             tools=tool_use(tools, None, None))


def generate_request(body: GenerateRequest, model: str, limits: Limits) -> GenerationRequest:
    """/api/generate: the prompt through the chat template (as a user turn after `system`), or as is when raw."""
    _refuse_thinking(body, model)
    _images(body.images, model, "images")
    if body.suffix:
        raise InvalidRequest("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.template:
        raise InvalidRequest("template is not supported: the model's own chat template is used (or send raw: true "
                             "with a fully templated prompt)", param="template")
    if body.context:
        raise InvalidRequest("context (the deprecated token memory of /api/generate) is not supported; use "
                             "/api/chat with the message history", param="context")
    params = sampling(body, limits)
    if body.raw:
        return GenerationRequest(sampling=params, prompt=body.prompt or "")
    messages = [ChatMessage("system", body.system)] if body.system else []
    messages.append(ChatMessage("user", body.prompt or ""))
    return GenerationRequest(sampling=params, messages=tuple(messages))
