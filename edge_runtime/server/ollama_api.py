"""The Ollama API at /api: chat and generate (NDJSON streams), tags, ps, show, pull, embed, version."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from edge_runtime import __version__
from edge_runtime.engine.ready import wait_ready
from edge_runtime.engine.types import Chunk, Engine, EngineState, FinishReason, GenerationRequest, SamplingParams
from edge_runtime.errors import ClawdError

from .context import AppContext
from .embeddings_api import available, embed, parse_inputs, served_name
from .errors import ApiError, HttpError, from_clawd
from .generation import CLIENT_CLOSED, ClientGone, ClosingStreamingResponse, Generation, Shape, cancelled_error
from .middleware import RequestRecord, record_of
from .ollama_models import pull_lines, registry_entry, resolve, running, served_model, slot_context, split_tag, tags
from .ollama_schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Limits,
    ModelRequest,
    chat_request,
    generate_request,
    keep_alive_seconds,
)
from .ollama_shapes import Timings, logprobs, ndjson, ns, timestamp, tool_calls

if TYPE_CHECKING:
    from edge_runtime.engine.embeddings import EmbeddingEngine

log = logging.getLogger(__name__)
# The Ollama release whose API this subset follows (structured outputs, tool calls with object arguments,
# /api/embed, expires_at in /api/ps): clients that gate features on /api/version see a version that has them.
OLLAMA_API_VERSION = "0.6.0"
CLAMPED_HEADER = "X-Clawd-Clamped"
UNLOAD_WAIT_SECONDS = 5.0
NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class NDJSONResponse(ClosingStreamingResponse):
    """Ollama's streams: one JSON object per line."""

    media_type = "application/x-ndjson"


class _Answer:
    """One Ollama generation's lines and final object, chat (`message`) or generate (`response`) shaped."""

    def __init__(self, gen: Generation, model: str, chat: bool, timings: Timings, want_logprobs: bool) -> None:
        self.gen = gen
        self.model = model
        self.chat = chat
        self.timings = timings
        self.want_logprobs = want_logprobs

    def part(self, text: str, chunk: Chunk | None = None, calls: list[dict[str, Any]] | None = None,
             done: bool = False) -> dict[str, Any]:
        """One object of the answer: a text fragment, the calls, or (`done`) the end."""
        body: dict[str, Any] = {"model": self.model, "created_at": timestamp()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            body["message"] = message
        else:
            body["response"] = text
        if self.want_logprobs and chunk is not None:
            body["logprobs"] = logprobs(chunk.logprobs)
        body["done"] = done
        return body

    def final(self, text: str, last: Chunk, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The last object: done_reason, token counts and durations."""
        body = self.part(text, last, calls, done=True)
        reason = last.finish_reason or FinishReason.STOP
        body["done_reason"] = "length" if reason is FinishReason.LENGTH else "stop"
        usage = self.gen.usage
        body.update(self.timings.body(usage.prompt_tokens, usage.completion_tokens))
        return body

    async def lines(self, first: Chunk) -> AsyncIterator[bytes]:
        """The NDJSON body; its `finally` closes the engine stream however the response ends."""
        gen = self.gen
        try:
            async for chunk in self._chunks(first):
                if chunk.finish_reason is None:
                    if chunk.text or (self.want_logprobs and chunk.logprobs):
                        yield ndjson(self.part(chunk.text, chunk))
                    continue
                if chunk.finish_reason is FinishReason.CANCELLED:
                    yield self._error(cancelled_error())
                    return
                calls = tool_calls(chunk.tool_calls) if chunk.tool_calls else None
                if calls or chunk.text:
                    # As Ollama streams them: the calls (and any last text) in a line of their own, then the end.
                    yield ndjson(self.part(chunk.text, chunk, calls))
                yield ndjson(self.final("", Chunk("", chunk.finish_reason)))
                break
        except ClawdError as exc:
            # Headers are gone already: Ollama reports in-band, as a line {"error": ...} its clients raise on.
            log.warning("generation %s failed mid-stream: %s", gen.id, exc)
            yield self._error(from_clawd(exc))
        finally:
            if gen.record.finish_reason is None and gen.record.error is None:
                gen.record.error = "cancelled"
            await gen.close()

    async def _chunks(self, first: Chunk) -> AsyncIterator[Chunk]:
        yield first
        if first.finish_reason is None:
            async for chunk in self.gen.rest():
                yield chunk

    def _error(self, error: HttpError) -> bytes:
        """An in-band error line (the status is already sent)."""
        self.gen.record.error = error.code or error.type
        return ndjson(error.body(ollama=True))

    async def whole(self, first: Chunk, request: Request) -> dict[str, Any]:
        """The `stream: false` answer: one object with the whole text and calls."""
        chunks = await self.gen.gather(first, request.receive)
        last = chunks[-1]
        text = "".join(c.text for c in chunks)
        body = self.final(text, last, tool_calls(last.tool_calls) if last.tool_calls else None)
        if self.want_logprobs:
            body["logprobs"] = logprobs([lp for c in chunks for lp in c.logprobs])
        return body


async def _unloaded(engine: Engine) -> None:
    """Wait (briefly) for an idle engine to unload, so that /api/ps right after the answer lists nothing; a busy one
    unloads when its requests finish, which is not waited for."""
    deadline = time.monotonic() + UNLOAD_WAIT_SECONDS
    while time.monotonic() < deadline:
        status = engine.status()
        if status.state in (EngineState.UNLOADED, EngineState.FAILED) or status.slots_busy or status.queue_depth:
            return
        await asyncio.sleep(0.02)


def ollama_router(ctx: AppContext, embeddings: EmbeddingEngine | str | None) -> APIRouter:
    """`embeddings` serves /api/embed (or says why it is off), as it does /v1/embeddings."""
    router = APIRouter(prefix="/api")
    # Read on first use, then kept: every chat would otherwise parse the GGUF header on the event loop.
    served = functools.cache(functools.partial(served_model, ctx))

    def limits() -> Limits:
        """This server's bounds for one generation (server.max_tokens, the slot context)."""
        return Limits(max_tokens=ctx.settings.server.max_tokens, slot_context=slot_context(ctx))

    async def load_or_unload(model: str, keep_alive: float, chat: bool) -> dict[str, Any]:
        """An empty request: Ollama's way to load a model ahead of use, or with keep_alive 0 to unload it."""
        engine = ctx.engine
        started = asyncio.get_running_loop().time()
        engine.keep_alive(keep_alive, load=keep_alive > 0)
        if keep_alive > 0:
            await wait_ready(engine)
        else:
            await _unloaded(engine)
        body: dict[str, Any] = {"model": model, "created_at": timestamp()}
        if chat:
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body.update(done=True, done_reason="load" if keep_alive > 0 else "unload")
        if keep_alive > 0:
            body.update(total_duration=ns(asyncio.get_running_loop().time() - started))
        return body

    async def run(request: Request, body: ChatRequest | GenerateRequest, chat: bool) -> Response:
        """Resolve the model, apply keep_alive, translate the body, then generate (or load / unload)."""
        record = record_of(request.scope)
        selection = ctx.adapters.select(body.model, None)  # `name+adapter` picks a LoRA adapter, as on /v1
        model = resolve(ctx, served(), selection.base or served().name) + selection.suffix
        record.model = model
        keep_alive = keep_alive_seconds(body.keep_alive, ctx.settings.keep_alive)
        empty = not body.messages if isinstance(body, ChatRequest) else not body.prompt and not body.raw
        if empty:
            return JSONResponse(await load_or_unload(model, keep_alive, chat))
        bounds = limits()
        generation = selection.apply(chat_request(body, model, bounds) if isinstance(body, ChatRequest)
                                     else generate_request(body, model, bounds))
        headers = dict(NDJSON_HEADERS) if body.stream else {}
        if bounds.clamped:
            log.warning("request to %s: clamped %s to what this server holds", request.url.path,
                        ", ".join(bounds.clamped))
            headers[CLAMPED_HEADER] = "; ".join(bounds.clamped)
        ctx.engine.keep_alive(keep_alive)  # the last request's keep_alive wins, as in Ollama
        return await _respond(request, record, model, chat, body, generation, headers)

    async def _respond(request: Request, record: RequestRecord, model: str, chat: bool,
                       body: ChatRequest | GenerateRequest, generation: GenerationRequest,
                       headers: dict[str, str]) -> Response:
        """Admit the generation (errors are still statuses), then stream it as NDJSON or answer it whole."""
        record.stream = body.stream
        loads = ctx.engine.status().loads_total
        shape = Shape(chat, model, include_usage=False, logprobs=generation.sampling.logprobs is not None)
        gen = Generation(ctx.engine, ctx.metrics, record, shape, generation, record.start)
        try:
            first = await gen.admit(request.receive)
            status = ctx.engine.status()
            load = (status.load_seconds or 0.0) if status.loads_total != loads else 0.0
            timings = Timings(start=record.start, first=time.perf_counter(), load_seconds=load)
            answer = _Answer(gen, model, chat, timings, bool(body.logprobs))
            if body.stream:
                return NDJSONResponse(answer.lines(first), headers=headers)
            return JSONResponse(await answer.whole(first, request), headers=headers)
        except ClientGone:
            record.error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)

    @router.get("/version")
    def version() -> dict[str, str]:
        """The Ollama API version this server follows (and clawd-edge's own)."""
        return {"version": OLLAMA_API_VERSION, "clawd_edge": __version__}

    @router.get("/tags")
    def list_tags() -> dict[str, Any]:
        """The served model and the registry LLMs already pulled into the models dir."""
        return {"models": tags(ctx, served())}

    @router.get("/ps")
    def list_running() -> dict[str, Any]:
        """The served model while it is loaded, with `expires_at` from keep_alive."""
        return {"models": running(ctx, served())}

    @router.post("/show")
    def show(body: ModelRequest) -> dict[str, Any]:
        """Details, GGUF metadata (`model_info`), chat template and sampling defaults of the served model."""
        model = served()
        selection = ctx.adapters.select(body.wanted(), None)
        resolve(ctx, model, selection.base or model.name)
        shown = model.show(slot_context(ctx), SamplingParams(), ["completion", "tools"])
        shown["modelfile"] += ctx.adapters.modelfile_lines()  # Ollama's ADAPTER lines
        return shown

    @router.post("/chat", response_model=None)
    async def chat(request: Request, body: ChatRequest) -> Response:
        """Chat; NDJSON stream unless `stream: false`; tool calls carry their arguments as objects."""
        return await run(request, body, chat=True)

    @router.post("/generate", response_model=None)
    async def generate(request: Request, body: GenerateRequest) -> Response:
        """Completion of a prompt through the chat template (raw: as is)."""
        return await run(request, body, chat=False)

    @router.post("/embed", response_model=None)
    async def embed_route(request: Request, body: EmbedRequest) -> Response:
        """Embedding vectors (L2-normalised), one per input."""
        engine = available(embeddings)
        record = record_of(request.scope)
        record.model = served_name(ctx, engine, split_tag(body.model)[0])
        if body.dimensions is not None and body.dimensions != engine.dimensions:
            raise ApiError(HttpError(400, f"dimensions={body.dimensions} is not supported: the model makes "
                                          f"{engine.dimensions}-dimensional vectors", param="dimensions"))
        inputs = parse_inputs(body.input)
        try:
            result = await embed(ctx, engine, request, inputs)
        except ClientGone:
            record.error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse({"model": body.model, "embeddings": result.vectors.tolist(),
                             "total_duration": ns(result.seconds), "load_duration": 0,
                             "prompt_eval_count": result.prompt_tokens})

    @router.post("/embeddings", response_model=None)
    async def legacy_embeddings(request: Request, body: EmbeddingsRequest) -> Response:
        """The superseded single-prompt form of /api/embed."""
        engine = available(embeddings)
        record = record_of(request.scope)
        record.model = served_name(ctx, engine, split_tag(body.model)[0])
        try:
            result = await embed(ctx, engine, request, parse_inputs(body.prompt))
        except ClientGone:
            record.error = "client_disconnected"
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse({"embedding": result.vectors[0].tolist()})

    @router.post("/pull", response_model=None)
    async def pull(request: Request, body: ModelRequest) -> Response:
        """Fetch a registry model into the models dir (serving it needs a restart with --model)."""
        store, entry = registry_entry(ctx, body.wanted())
        record_of(request.scope).model = entry.name
        if body.stream:
            record_of(request.scope).stream = True
            return NDJSONResponse(pull_lines(store, entry), headers=dict(NDJSON_HEADERS))
        await asyncio.to_thread(store.pull, entry)
        return JSONResponse({"status": "success"})

    return router

