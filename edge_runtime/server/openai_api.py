"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions and /v1/models."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from edge_runtime.engine.types import GenerationRequest

from .context import AppContext
from .errors import ApiError, HttpError
from .generation import CLIENT_CLOSED, ClientGone, ClosingStreamingResponse, Generation, Shape
from .middleware import record_of
from .schemas import ChatCompletionRequest, CompletionRequest, LoraEntry, chat_request, completion_request

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SSEResponse(ClosingStreamingResponse):
    """Server-sent events that always free the engine slot when the response ends."""

    media_type = "text/event-stream"


def _links(pointer: str) -> dict[str, Any]:
    """OpenAPI links from a model in this response to the routes that take a model: clients can follow them, and
    schemathesis' stateful runs chain the calls (list -> get -> chat/complete) with real ids."""
    model = "$response.body" + pointer
    return {"description": "Successful Response", "links": {
        "GetModel": {"operationId": "get_model", "parameters": {"model_id": model}},
        "ChatWithModel": {"operationId": "chat_completions", "requestBody": {"model": model}},
        "CompleteWithModel": {"operationId": "completions", "requestBody": {"model": model}},
    }}


def openai_router(ctx: AppContext) -> APIRouter:
    router = APIRouter(prefix="/v1")
    error_responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Invalid request (OpenAI error body)"},
        404: {"description": "Unknown model (only with server.strict_model: true)"},
        503: {"description": "Server busy; retry after Retry-After seconds"},
    }

    async def run(request: Request, model: str | None, lora: list[LoraEntry] | None, stream: bool,
                  include_usage: bool, generation_request: GenerationRequest, chat: bool) -> Response:
        record = record_of(request.scope)
        record.stream = stream
        selection = ctx.adapters.select(model, lora)
        served = ctx.resolve(selection.base) + selection.suffix
        generation_request = selection.apply(generation_request)
        record.model = served
        shape = Shape(chat, served, include_usage, n=generation_request.n,
                      logprobs=generation_request.sampling.logprobs is not None)
        gen = Generation(ctx.engine, ctx.metrics, record, shape, generation_request, record.start)
        try:
            first = await gen.admit(request.receive)
            if stream:
                return SSEResponse(gen.sse(first), headers=SSE_HEADERS)
            return JSONResponse(await gen.collect(first, request.receive))
        except ClientGone:
            record.error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)

    @router.post("/chat/completions", response_model=None, responses=error_responses, operation_id="chat_completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        """Chat completion (OpenAI shape); `stream: true` answers with server-sent events."""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await run(request, body.model, body.lora, body.stream, include_usage,
                         chat_request(body, ctx.settings), chat=True)

    @router.post("/completions", response_model=None, responses=error_responses, operation_id="completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        """Text completion of a raw prompt (no chat template)."""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await run(request, body.model, body.lora, body.stream, include_usage,
                         completion_request(body, ctx.settings), chat=False)

    @router.get("/models", operation_id="list_models", responses={200: _links("#/data/0/id")})
    def list_models() -> dict[str, Any]:
        """The served model and every LLM in the registry (`loaded: false` ones need a restart with --model)."""
        return {"object": "list", "data": ctx.models()}

    @router.get("/models/{model_id}", operation_id="get_model",
                responses={200: _links("#/id"), 404: {"description": "Unknown model"}})
    def get_model(model_id: str) -> dict[str, Any]:
        for entry in ctx.models():
            if entry["id"] == model_id or model_id in entry.get("aliases", ()):
                return entry
        raise ApiError(HttpError(404, f"model {model_id!r} does not exist", param="model",
                                 code="model_not_found"))

    return router
