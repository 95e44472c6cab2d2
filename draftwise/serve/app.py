"""The FastAPI app: OpenAI's chat completions, completions and models routes, and `/health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from torch import nn

from draftwise.serve.errors import APIError, install_error_handlers, log
from draftwise.serve.formats import DONE, Formatter, sse, usage
from draftwise.serve.guards import ApiKeyGuard, BodyLimit
from draftwise.serve.jobs import Defaults, make_job
from draftwise.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_NEW_TOKENS_LIMIT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_UPSTREAM_TIMEOUT,
    RETRY_AFTER_SECONDS,
)
from draftwise.serve.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from draftwise.serve.upstream import create_upstream_app
from draftwise.serve.worker import Busy, Delta, Engine, Event, Failed, Finished, Generation, Job

DISCONNECT_POLL_SECONDS = 0.25
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection; nobody reads it


def _failure(error: Exception) -> APIError:
    """A generation's error: bad input (``ValueError``/``TypeError`` from ``generate``) is a 400."""
    if isinstance(error, (ValueError, TypeError)):
        return APIError(400, str(error))
    log.error("generation failed", exc_info=error)
    return APIError(500, f"generation failed ({type(error).__name__})", type="server_error")


class _Watched:
    """A generation's events, checking every ``DISCONNECT_POLL_SECONDS`` whether the client went away."""

    def __init__(self, generation: Generation, request: Request) -> None:
        self.generation, self.request = generation, request
        self._checked = time.monotonic()

    async def next(self) -> Event | None:
        """The next event; ``None`` (and the generation cancelled) once the client has gone."""
        while True:
            if time.monotonic() - self._checked >= DISCONNECT_POLL_SECONDS:
                self._checked = time.monotonic()
                if await self.request.is_disconnected():
                    self.generation.cancel()
                    return None
            try:
                return await asyncio.wait_for(self.generation.events.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                continue


async def _stream(
    generation: Generation, first: Event, formatter: Formatter, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``.

    A client that disconnects cancels this generator (Starlette watches for it), which cancels the
    generation: its thread stops at the next token and frees its slot.
    """
    event = first
    try:
        if formatter.chat:
            yield sse(formatter.chunk(text="", role=True))
        while True:
            if isinstance(event, Delta):
                yield sse(formatter.chunk(text=event.text))
            elif isinstance(event, Finished):
                yield sse(formatter.chunk(finish_reason=event.finish_reason))
                if include_usage:
                    counts = usage(prompt_tokens, event.completion_tokens, event.stats)
                    yield sse(formatter.usage_chunk(counts))
                yield DONE
                return
            else:
                yield sse(_failure(event.error).body())
                yield DONE
                return
            event = await generation.events.get()
    finally:
        generation.cancel()


async def _complete(watched: _Watched, first: Event, formatter: Formatter, prompt_tokens: int) -> Any:
    """Collect the whole answer; a client that goes away meanwhile cancels the generation."""
    parts: list[str] = []
    event: Event | None = first
    try:
        while isinstance(event, Delta):
            parts.append(event.text)
            event = await watched.next()
    finally:
        watched.generation.cancel()  # a no-op once finished; stops the thread if we leave early
    if event is None:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(event, Failed):
        raise _failure(event.error)
    counts = usage(prompt_tokens, event.completion_tokens, event.stats)
    return formatter.response("".join(parts), event.finish_reason, counts)


def create_app(
    target: nn.Module | None,
    draft: nn.Module | None,
    tokenizer,
    *,
    model_name: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_queue: int = DEFAULT_MAX_QUEUE,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT,
    max_request_bytes: int | None = None,
    upstream: str | None = None,
    upstream_model: str | None = None,
    upstream_api_key: str | None = None,
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
) -> FastAPI:
    """An OpenAI-compatible app serving ``target`` (helped by ``draft``) under the name ``model_name``.

    Args:
        defaults: server-side defaults, e.g. ``{"method": "speckv", "budget": 256, "max_tokens": 256,
            "temperature": 0.0, "top_p": 1.0}``; a request's ``"draftwise"`` field overrides the method
            and its options (the default options apply only when it keeps the default method).
        max_concurrency: generations run at once, in worker threads sharing the models (the query
            recorders are per thread); a generation that switches the attention implementation
            (AdaKV, SpecKV's sparse pre-fill) runs alone.
        max_queue: requests that may wait for a slot; beyond them the answer is 429 with ``Retry-After``.
        api_key: if set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: larger request bodies get 413.
        max_new_tokens_limit: the most ``max_tokens`` a request may ask for.
        max_request_bytes: requests whose uncompressed KV cache (prompt plus ``max_tokens``) would
            exceed this many bytes get 400 before any work starts; ``None``: no limit but the context.
        upstream: upstream mode: the base URL (``http://host:port/v1``) of an OpenAI-compatible server.
            Only ``draft`` runs here (``target`` is ``None``): each request's prompt (chat: the last user
            message) is compressed with SpecPC and the request forwarded there; see
            :mod:`draftwise.serve.upstream`. ``model_name`` and ``max_new_tokens_limit`` do not apply.
        upstream_model: the ``model`` sent upstream in place of the client's.
        upstream_api_key: the key sent upstream; without it the client's ``Authorization`` is passed on.
        upstream_timeout: seconds to wait for the upstream (connecting, and between bytes read).
    Raises:
        ValueError: bad defaults or limits, or a default method that needs a draft when there is none.
    """
    if (
        max_body_bytes < 1
        or max_new_tokens_limit < 1
        or (max_request_bytes is not None and max_request_bytes < 1)
    ):
        raise ValueError("max_body_bytes, max_new_tokens_limit and max_request_bytes must be positive")
    if upstream is not None:
        if target is not None:
            raise ValueError("upstream mode runs only the draft: pass target=None")
        return create_upstream_app(
            draft,
            tokenizer,
            upstream=upstream,
            upstream_model=upstream_model,
            upstream_api_key=upstream_api_key,
            upstream_timeout=upstream_timeout,
            defaults=defaults,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            api_key=api_key,
            max_body_bytes=max_body_bytes,
        )
    if target is None or model_name is None:
        raise ValueError("a target model and its model_name are needed (or an upstream URL)")
    settings = Defaults.parse(defaults)
    default_method = settings.build_method(None)
    if default_method.needs_draft and draft is None:
        raise ValueError(f"the default method {default_method.name} needs a draft model")
    engine = Engine(target, draft, tokenizer, max_concurrency, max_queue)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="draftwise", summary="OpenAI-compatible draftwise server", lifespan=lifespan)
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyGuard, key=api_key)  # added last: runs first

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(
                404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                param="model", code="model_not_found",
            )  # fmt: skip

    async def run(request: Request, body: ChatCompletionRequest | CompletionRequest) -> Any:
        check_model(body.model)
        job: Job = make_job(
            body,
            tokenizer=tokenizer,
            target=target,
            defaults=settings,
            max_tokens_limit=max_new_tokens_limit,
            max_request_bytes=max_request_bytes,
            draft=draft,
        )
        try:
            generation = engine.submit(job)
        except Busy as busy:
            raise APIError(
                429, f"the server is busy ({busy}); retry later", type="rate_limit_error",
                code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None  # fmt: skip
        formatter = Formatter(isinstance(body, ChatCompletionRequest), model_name)
        prompt_tokens = job.input_ids.shape[1]
        # Wait for the first event before answering, so errors found by generate are still a 400.
        watched = _Watched(generation, request)
        try:
            first = await watched.next()
        except BaseException:
            generation.cancel()
            raise
        if first is None:
            return Response(status_code=CLIENT_CLOSED)
        if isinstance(first, Failed):
            raise _failure(first.error)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(generation, first, formatter, prompt_tokens, include_usage)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        return await _complete(watched, first, formatter, prompt_tokens)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "running": engine.running, "waiting": engine.waiting}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=started)])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        check_model(model_id)
        return ModelCard(id=model_name, created=started)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await run(request, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await run(request, body)

    return app
