"""POST /v1/embeddings (OpenAI shape) over the EmbeddingEngine: limits, validation and the response body."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.responses import Response

from edge_runtime.errors import InvalidRequest, RegistryError

from .context import AppContext
from .errors import ApiError, HttpError
from .generation import CLIENT_CLOSED, ClientGone, unless_disconnected
from .middleware import record_of

if TYPE_CHECKING:
    from edge_runtime.engine.embeddings import EmbeddingEngine, EmbeddingResult, Input

# One request must not hold the embedding worker for long: at most this many inputs, and this many characters in
# all (a token id counts as one); each input is also bounded by embedding_ctx tokens, checked after tokenizing.
# 64 Ki characters are about 16k tokens of English: roughly a minute of SmolLM2 on two cores.
MAX_INPUTS = 256
MAX_TOTAL_CHARS = 65536

_INPUT_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_INPUTS},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
         "minItems": 1, "maxItems": MAX_INPUTS},
    ],
    "description": "A string, an array of strings, an array of token ids, or an array of token-id arrays",
}


class EmbeddingRequest(BaseModel):
    # strict: wrong types are 400s, never coerced; extra="ignore": OpenAI clients send fields we do not act on.
    model_config = ConfigDict(strict=True, extra="ignore")

    # Checked by hand (see parse_inputs) so that a wrong element is named by its index, as OpenAI does.
    input: Annotated[Any, WithJsonSchema(_INPUT_SCHEMA)]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_inputs(value: object) -> list[Input]:
    """The request's inputs as strings and token-id lists, or InvalidRequest naming the offending one."""
    shape = "input must be a string, an array of strings, an array of token ids or an array of token-id arrays"
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, list):
        if not value:
            raise _bad("input must not be an empty array", "input")
        items = [value] if all(_is_int(v) for v in value) else value
    else:
        raise _bad(shape, "input")
    if len(items) > MAX_INPUTS:
        raise _bad(f"input has {len(items)} items; at most {MAX_INPUTS} are allowed per request", "input")
    out: list[Input] = []
    total = 0
    for i, item in enumerate(items):
        param = f"input[{i}]" if isinstance(value, list) else "input"
        if isinstance(item, str) != isinstance(items[0], str):
            raise _bad(f"{param}: input must be all strings or all token-id arrays, not a mix", param)
        if isinstance(item, str):
            if not item:
                raise _bad(f"{param} must not be an empty string", param)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(f"{param} is not valid Unicode (it contains a lone surrogate)", param) from None
            total += len(item)
            out.append(item)
        elif isinstance(item, list) and all(_is_int(t) for t in item):
            if not item:
                raise _bad(f"{param} must not be an empty array of token ids", param)
            total += len(item)
            out.append(tuple(item))  # type: ignore[arg-type]
        else:
            raise _bad(f"{param} must be a string or an array of token ids ({shape})", param)
    if total > MAX_TOTAL_CHARS:
        raise _bad(f"the inputs have {total} characters in all (a token id counts as one); at most "
                   f"{MAX_TOTAL_CHARS} are allowed per request: split them over several requests", "input")
    return out


def served_name(ctx: AppContext, engine: EmbeddingEngine, requested: str | None) -> str:
    """The embedding model's id; with server.strict_model only for one of its names, else 404 model_not_found."""
    served = engine.plan.name
    if not requested or not ctx.settings.server.strict_model:
        return served
    configured = ctx.settings.embedding_model or ctx.settings.model_path
    names = {served, configured, Path(configured).name, Path(configured).stem, engine.plan.model_path.stem}
    if ctx.settings.embedding_model is None:
        names.add(ctx.model_id)
    if requested.casefold() in {n.casefold() for n in names}:
        return served
    raise RegistryError(f"model {requested!r} is not served here; /v1/embeddings serves {served!r} "
                        "(server.strict_model is true)")


def available(embeddings: EmbeddingEngine | str | None) -> EmbeddingEngine:
    """The embedding engine, or ApiError 503 saying why there is none."""
    if embeddings is None or isinstance(embeddings, str):
        raise ApiError(HttpError(503, f"embeddings are not available on this server: "
                                      f"{embeddings or 'no embedding engine'}", type="server_error",
                                 code="embeddings_unavailable"))
    return embeddings


async def embed(ctx: AppContext, engine: EmbeddingEngine, request: Request, inputs: list[Input]) -> EmbeddingResult:
    """Embed `inputs` for `request` (ClientGone if it disconnects first), recording tokens and metrics."""
    result = await unless_disconnected(engine.embed(inputs), request.receive)
    record_of(request.scope).prompt_tokens = result.prompt_tokens
    ctx.metrics.observe_embedding(len(inputs), result.prompt_tokens, result.seconds)
    return result


def embeddings_router(ctx: AppContext, embeddings: EmbeddingEngine | str | None) -> APIRouter:
    """`embeddings` is the engine, or why there is none (then every request gets 503 with that reason)."""
    router = APIRouter(prefix="/v1")
    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Invalid request (OpenAI error body)"},
        404: {"description": "Unknown model (only with server.strict_model: true)"},
        503: {"description": "Embedding worker busy (Retry-After), or embeddings not available here"},
    }

    @router.post("/embeddings", response_model=None, responses=responses, operation_id="embeddings")
    async def create_embeddings(request: Request, body: EmbeddingRequest) -> Response:
        """Embedding vectors (L2-normalised) for a string or an array of inputs."""
        record = record_of(request.scope)
        engine = available(embeddings)
        served = served_name(ctx, engine, body.model)
        record.model = served
        if body.dimensions is not None and body.dimensions != engine.dimensions:
            raise _bad(f"dimensions={body.dimensions} is not supported: {served} makes {engine.dimensions}-"
                       "dimensional vectors and cannot shorten them", "dimensions")
        inputs = parse_inputs(body.input)
        try:
            result = await embed(ctx, engine, request, inputs)
        except ClientGone:
            record.error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in result.vectors]
        else:
            data = result.vectors.tolist()
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
            "model": served,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })

    return router
