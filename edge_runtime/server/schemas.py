"""OpenAI request bodies as strict Pydantic models, and their translation into the engine's GenerationRequest."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.config import Settings
from edge_runtime.engine.tools import ToolCall, parse_tools, tool_use
from edge_runtime.engine.types import ChatMessage, GenerationRequest, SamplingParams
from edge_runtime.errors import InvalidRequest

MAX_STOP_STRINGS = 16
NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    # strict: "3" is not a number and 1 is not a bool (wrong types are 400s, not silent coercions);
    # extra="ignore": OpenAI clients send fields we do not act on (user, metadata, store...).
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class LoraEntry(_Strict):
    """llama-server's per-request adapter choice: `id` (its index in GET /lora-adapters) or `name`, and a scale
    (default: the adapter's default scale)."""

    id: Annotated[int, Field(ge=0)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    scale: float | None = None


class _Sampling(_Strict):
    """Fields shared by chat and text completions (plus llama.cpp's top_k, min_p, repeat_penalty, grammar)."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=10)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    response_format: ResponseFormat | None = None
    grammar: NonEmpty | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=300)] | None = None
    user: str | None = None
    lora: Annotated[list[LoraEntry], Field(max_length=64)] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    arguments: str


class MessageToolCall(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=64)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=64)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=20)] | None = None


def _unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by this server", param=param)


def _max_tokens(requested: int | None, param: str, settings: Settings) -> int:
    limit = settings.server.max_tokens
    if requested is None:
        return limit
    if requested > limit:
        raise InvalidRequest(f"{param}={requested} is larger than this server's limit of {limit} "
                             "(server.max_tokens)", param=param)
    return requested


def _structured(body: _Sampling) -> tuple[str | None, dict[str, Any] | None]:
    fmt = body.response_format
    if body.grammar is not None and fmt is not None and fmt.type != "text":
        raise InvalidRequest("use either grammar or response_format, not both", param="grammar")
    if fmt is None or fmt.type == "text":
        return body.grammar, None
    if fmt.type == "json_object":
        # OpenAI's JSON mode: any JSON object.
        return None, {"type": "object"}
    if fmt.json_schema is None:
        raise InvalidRequest("response_format.json_schema is required when type is json_schema",
                             param="response_format.json_schema")
    return None, fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}


def _logit_bias(body: _Sampling) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} as pairs; the engine checks the ids against the model's vocabulary."""
    pairs = []
    for key, bias in (body.logit_bias or {}).items():
        if not key.isdigit() or len(key) > 10:
            raise InvalidRequest(f"logit_bias keys must be token ids (non-negative integers), not {key[:40]!r}",
                                 param="logit_bias")
        pairs.append((int(key), bias))
    return tuple(pairs)


def sampling_params(body: _Sampling, max_tokens: int, logprobs: int | None = None) -> SamplingParams:
    """Unset fields keep the engine's defaults (llama-server's); set ones override."""
    grammar, schema = _structured(body)
    stop: tuple[str, ...] = () if body.stop is None else (body.stop,) if isinstance(body.stop, str) \
        else tuple(body.stop)
    overrides: dict[str, Any] = {
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k, "min_p": body.min_p,
        "repeat_penalty": body.repeat_penalty, "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
    }
    # llama.cpp seeds are uint32; OpenAI's are int64. Folding keeps "same seed -> same output".
    seed = None if body.seed is None else body.seed % (2**32)
    return SamplingParams(max_tokens=max_tokens, seed=seed, stop=stop, grammar=grammar, json_schema=schema,
                          logit_bias=_logit_bias(body), logprobs=logprobs,
                          **{k: v for k, v in overrides.items() if v is not None})


def _content(message: Message) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


def _message(m: Message, at: int) -> ChatMessage:
    if m.role == "tool" and m.tool_call_id is None:
        raise InvalidRequest("a tool message needs the tool_call_id of the call it answers",
                             param=f"messages[{at}].tool_call_id")
    if m.tool_calls and m.role != "assistant":
        raise InvalidRequest("only assistant messages carry tool_calls", param=f"messages[{at}].tool_calls")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    return ChatMessage(role="system" if m.role == "developer" else m.role, content=_content(m), tool_calls=calls,
                       tool_call_id=m.tool_call_id if m.role == "tool" else None, name=m.name)


def chat_request(body: ChatCompletionRequest, settings: Settings) -> GenerationRequest:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.max_completion_tokens is not None:
        max_tokens = _max_tokens(body.max_completion_tokens, "max_completion_tokens", settings)
    else:
        max_tokens = _max_tokens(body.max_tokens, "max_tokens", settings)
    tools = parse_tools([t.model_dump(exclude_none=True) for t in body.tools or ()])
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, NamedToolChoice) else body.tool_choice
    use = tool_use(tools, choice, body.parallel_tool_calls)
    messages = tuple(_message(m, i) for i, m in enumerate(body.messages))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return GenerationRequest(sampling=sampling_params(body, max_tokens, logprobs), messages=messages, tools=use,
                             n=body.n or 1)


def completion_request(body: CompletionRequest, settings: Settings) -> GenerationRequest:
    if body.echo:
        raise _unsupported("echo", "echo")
    if body.suffix:
        raise _unsupported("suffix", "suffix (fill-in-the-middle)")
    if body.best_of is not None and body.best_of != 1:
        raise InvalidRequest("only best_of=1 is supported", param="best_of")
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidRequest("only one prompt per request is supported", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    max_tokens = _max_tokens(body.max_tokens, "max_tokens", settings)
    return GenerationRequest(sampling=sampling_params(body, max_tokens, body.logprobs), prompt=prompt, n=body.n or 1)
