"""Drive one engine generation for an HTTP request: admission, SSE streaming or collection, cancellation."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import StreamingResponse

from edge_runtime.engine.types import Chunk, Engine, FinishReason, GenerationRequest, Usage
from edge_runtime.errors import ClawdError, EngineBusy

from .choices import Choice, call_deltas, chat_logprobs, completion_logprobs, total_usage
from .errors import ApiError, HttpError, from_clawd
from .metrics import ServerMetrics
from .middleware import RequestRecord

log = logging.getLogger(__name__)
T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


CLIENT_CLOSED = 499  # nginx's "client closed request": only ever seen in our own log line


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nothing is sent back (log it as CLIENT_CLOSED)."""


class ClosingStreamingResponse(StreamingResponse):
    """StreamingResponse that always closes its body iterator (and so frees the engine slot) when it ends."""

    async def stream_response(self, send: Any) -> None:
        import anyio

        try:
            await super().stream_response(send)
        finally:
            # Starlette cancels stream_response on disconnect, possibly while it awaits send() rather
            # than the iterator; without this the generator would wait for garbage collection.
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def cancelled_error() -> HttpError:
    """What a generation cut off by the shutdown bound answers (a status, or in-band once streaming)."""
    return HttpError(503, "the generation was cancelled because the server is shutting down",
                     type="server_error", code="cancelled")


@dataclass(frozen=True)
class Shape:
    """Which OpenAI object family a response belongs to."""

    chat: bool
    model: str
    include_usage: bool
    n: int = 1
    logprobs: bool = False

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


def usage_body(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage(0, 0)
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _close(iterator: AsyncIterator[Chunk]) -> None:
    """Close the engine stream (frees its slot) even while our own task is being cancelled."""
    import anyio

    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except Exception:
            log.exception("closing an engine stream failed")


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await `work`, but give up (cancelling it) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
        with contextlib.suppress(BaseException):
            await watcher
    if not task.done() or task.cancelled():
        with contextlib.suppress(BaseException):
            await task
        raise ClientGone()
    return task.result()


class Generation:
    """One request's journey through the engine, recording tokens and timings for logs and metrics."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, record: RequestRecord, shape: Shape,
                 request: GenerationRequest, start: float) -> None:
        self.engine = engine
        self.metrics = metrics
        self.record = record
        self.shape = shape
        self.request = request
        self.start = start
        self.id = ("chatcmpl-" if shape.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self._iterator: AsyncIterator[Chunk] | None = None
        self._usages: list[Usage] = []
        self._text_at: dict[int, int] = {}  # per choice: where the next streamed token's text begins
        self.usage = Usage(0, 0)  # the whole request's, once every choice has finished

    def _note(self, chunk: Chunk) -> None:
        if (chunk.text or chunk.calls) and self.record.ttft is None:
            self.record.ttft = time.perf_counter() - self.start
            self.metrics.ttft.observe(self.record.ttft)
        if chunk.finish_reason is None:
            return
        self._usages.append(chunk.usage or Usage(0, 0))
        if len(self._usages) < self.shape.n:
            return
        usage = self.usage = total_usage(self._usages)
        self.record.finish_reason = chunk.finish_reason.value
        self.record.prompt_tokens = usage.prompt_tokens
        self.record.cached_tokens = usage.cached_prompt_tokens
        self.record.completion_tokens = usage.completion_tokens
        self.metrics.observe_generation(usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens,
                                        chunk.finish_reason.value)

    async def _first(self) -> Chunk:
        iterator = self.engine.generate(self.request)
        self._iterator = iterator
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            chunk = Chunk("", FinishReason.STOP, None)
        except EngineBusy:
            self.metrics.rejected.inc()
            raise
        self._note(chunk)
        return chunk

    async def admit(self, receive: Receive) -> Chunk:
        """Wait for the engine's first chunk (queueing, prompt processing) so errors can still be statuses."""
        try:
            return await unless_disconnected(self._first(), receive)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._iterator is not None:
            await _close(self._iterator)

    async def rest(self) -> AsyncIterator[Chunk]:
        assert self._iterator is not None
        async for chunk in self._iterator:
            self._note(chunk)
            yield chunk

    # -- non-streaming -------------------------------------------------------------------------------------

    async def gather(self, first: Chunk, receive: Receive) -> list[Chunk]:
        """Every chunk of every choice, the engine stream closed afterwards; ApiError 503 if it was cancelled."""
        chunks = [first]

        async def more() -> None:
            if first.finish_reason is None or self.shape.n > 1:
                async for chunk in self.rest():
                    chunks.append(chunk)

        try:
            await unless_disconnected(more(), receive)
        finally:
            await self.close()
        if any(c.finish_reason is FinishReason.CANCELLED for c in chunks):
            raise ApiError(cancelled_error())
        return chunks

    async def collect(self, first: Chunk, receive: Receive) -> dict[str, Any]:
        choices = [Choice(i) for i in range(self.shape.n)]
        for chunk in await self.gather(first, receive):
            choices[chunk.index].add(chunk)
        return {"id": self.id, "object": self.shape.object, "created": self.created, "model": self.shape.model,
                "choices": [c.body(chat=self.shape.chat, want_logprobs=self.shape.logprobs) for c in choices],
                "usage": usage_body(self.usage)}

    # -- streaming -----------------------------------------------------------------------------------------

    def _event(self, *, text: str | None = None, finish: str | None = None, role: bool = False,
               usage: Usage | None = None, usage_only: bool = False, chunk: Chunk | None = None) -> bytes:
        """One SSE event; with `chunk`, its choice index, tool-call deltas and logprobs are included."""
        body: dict[str, Any] = {"id": self.id, "object": self.shape.object + ".chunk" if self.shape.chat
                                else "text_completion", "created": self.created, "model": self.shape.model}
        index = chunk.index if chunk else 0
        logprobs = None
        if chunk is not None and self.shape.logprobs:
            if self.shape.chat:
                logprobs = chat_logprobs(chunk.logprobs)
            else:
                # text_offset counts from the start of this choice's text, across its chunks.
                at = self._text_at.get(index, 0)
                logprobs = completion_logprobs(chunk.logprobs, at)
                self._text_at[index] = at + sum(len(t) for t in logprobs["tokens"])
        if usage_only:
            body["choices"] = []
        elif self.shape.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if chunk is not None and chunk.calls:
                delta["tool_calls"] = call_deltas(chunk.calls)
            body["choices"] = [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
        else:
            body["choices"] = [{"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}]
        if self.shape.include_usage:
            body["usage"] = usage_body(usage) if usage_only else None
        return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"

    def text_event(self) -> Callable[[str], bytes]:
        """A fast renderer for the per-token event: only the text is JSON-encoded, the rest is pre-rendered.

        The per-token work runs on the event loop thread while the engine thread waits for the GIL to prepare
        its next batch, so it is kept to one small json.dumps and two concatenations.
        """
        sentinel = "\ue000clawd-text\ue000"
        encoded_sentinel = json.dumps(sentinel, ensure_ascii=False).encode("utf-8")
        prefix, suffix = self._event(text=sentinel).split(encoded_sentinel)

        def render(text: str) -> bytes:
            return prefix + json.dumps(text, ensure_ascii=False).encode("utf-8") + suffix
        return render

    def _delta(self, chunk: Chunk, render: Callable[[str], bytes]) -> bytes | None:
        """A non-final chunk's event, or None when it carries nothing; plain text of choice 0 takes the fast path."""
        if chunk.index == 0 and not chunk.calls and not chunk.logprobs:
            return render(chunk.text) if chunk.text else None
        if not (chunk.text or chunk.calls or chunk.logprobs):
            return None
        return self._event(text=chunk.text or None if self.shape.chat else chunk.text, chunk=chunk)

    def _finish_event(self, chunk: Chunk) -> bytes:
        return self._event(text=chunk.text or None if self.shape.chat else chunk.text,
                           finish=(chunk.finish_reason or FinishReason.STOP).value, chunk=chunk)

    def _closing_events(self) -> list[bytes]:
        events = [self._event(usage=self.usage, usage_only=True)] if self.shape.include_usage else []
        events.append(b"data: [DONE]\n\n")
        return events

    def _error_event(self, error: HttpError) -> bytes:
        self.record.error = error.code or error.type
        return b"data: " + error.encoded() + b"\n\n"

    async def sse(self, first: Chunk) -> AsyncIterator[bytes]:
        """The SSE body; its `finally` closes the engine stream however the response ends."""
        try:
            if self.shape.chat:
                for index in range(self.shape.n):
                    yield self._event(text="", role=True, chunk=Chunk("", index=index))
            text_event = self.text_event()
            running = self.shape.n

            async def chunks() -> AsyncIterator[Chunk]:
                yield first
                if first.finish_reason is None or self.shape.n > 1:
                    async for chunk in self.rest():
                        yield chunk

            async for chunk in chunks():
                if chunk.finish_reason is None:
                    event = self._delta(chunk, text_event)
                    if event is not None:
                        yield event
                    continue
                if chunk.finish_reason == FinishReason.CANCELLED:
                    yield self._error_event(cancelled_error())
                    return
                yield self._finish_event(chunk)
                running -= 1
                if not running:
                    break
            for event in self._closing_events():
                yield event
        except ClawdError as exc:
            # Headers are gone already: report in-band like OpenAI does, then end the stream.
            error = from_clawd(exc)
            log.warning("generation %s failed mid-stream: %s", self.id, exc)
            yield self._error_event(error)
        finally:
            if self.record.finish_reason is None and self.record.error is None:
                # Client disconnect or the shutdown bound: either way the engine stream is closed below.
                self.record.error = "cancelled"
            await self.close()
