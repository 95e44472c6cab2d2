"""The FastAPI app: OpenAI's chat completions, completions and models routes, and `/health`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from torch import nn

from draftwise.serve.errors import (
    APIError,
    log,
    model_not_found,
)
from draftwise.serve.factory import new_app
from draftwise.serve.formats import DONE, Formatter, sse, usage
from draftwise.serve.jobs import Defaults, make_job
from draftwise.serve.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from draftwise.serve.settings import ServerSettings
from draftwise.serve.upstream import create_upstream_app
from draftwise.serve.watch import CLIENT_CLOSED, ClientGone, ClientWatch
from draftwise.serve.worker import Delta, Engine, Event, Failed, Finished, Generation
from draftwise.speculative import check_speculative


def _failure(error: Exception) -> APIError:
    """A generation's error: bad input (``ValueError``/``TypeError`` from ``generate``) is a 400."""
    if isinstance(error, (ValueError, TypeError)):
        return APIError(400, str(error))
    log.error("generation failed", exc_info=error)
    return APIError(500, f"generation failed ({type(error).__name__})", type="server_error")


async def _next(watch: ClientWatch, generation: Generation) -> Event | None:
    """The generation's next event; ``None`` (and the generation cancelled) once the client has gone."""
    try:
        return await watch.until(generation.events.get())
    except ClientGone:
        generation.cancel()
        return None


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


async def _complete(
    watch: ClientWatch, generation: Generation, first: Event, formatter: Formatter, prompt_tokens: int
) -> Any:
    """Collect the whole answer; a client that goes away meanwhile cancels the generation."""
    parts: list[str] = []
    event: Event | None = first
    try:
        while isinstance(event, Delta):
            parts.append(event.text)
            event = await _next(watch, generation)
    finally:
        generation.cancel()  # a no-op once finished; stops the thread if we leave early
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
    settings: ServerSettings | None = None,
    **options: Any,
) -> FastAPI:
    """An OpenAI-compatible app serving ``target`` (helped by ``draft``) as ``settings.model_name``.

    ``settings`` (:class:`~draftwise.serve.settings.ServerSettings`) say how: limits, the API key,
    defaults, or upstream mode (then ``target`` is ``None`` and only ``draft`` runs here, see
    :mod:`draftwise.serve.upstream`). Keyword ``options`` set its fields directly:
    ``create_app(target, draft, tokenizer, model_name="qwen", api_key=KEY)``.

    Raises:
        ValueError: bad settings, or a default method that needs a draft when there is none.
    """
    settings = replace(settings or ServerSettings(), **options)
    if settings.upstream is not None:
        if target is not None:
            raise ValueError("upstream mode runs only the draft: pass target=None")
        return create_upstream_app(draft, tokenizer, settings)
    model_name = settings.model_name
    if target is None or model_name is None:
        raise ValueError("a target model and its model_name are needed (or an upstream URL)")
    defaults = Defaults.parse(settings.defaults)
    default_method = defaults.build_method(None)
    if default_method.needs_draft and draft is None:
        raise ValueError(f"the default method {default_method.name} needs a draft model")
    speculative = settings.speculative
    if speculative is not None:
        check_speculative(speculative, target, draft, True, 1, 1)
    engine = Engine(
        target, draft, tokenizer, settings.max_batch, settings.max_queue, settings.kv_cache_memory,
        speculative,
    )  # fmt: skip
    started = int(time.time())
    app = new_app("OpenAI-compatible draftwise server", settings, engine.close)
    app.state.engine = engine

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise model_not_found(name, model_name)

    async def run(request: Request, body: ChatCompletionRequest | CompletionRequest) -> Any:
        check_model(body.model)
        engine.admit()  # a full queue is a 429 before the prompt is read
        try:
            # Templating and tokenizing a large body take a while: off the event loop.
            job = await asyncio.to_thread(
                make_job, body, tokenizer=tokenizer, target=target, defaults=defaults,
                max_tokens_limit=settings.max_new_tokens_limit,
                max_request_bytes=settings.max_request_bytes, draft=draft,
            )  # fmt: skip
        except BaseException:
            engine.release()
            raise
        generation = engine.submit(job)
        formatter = Formatter(isinstance(body, ChatCompletionRequest), model_name)
        prompt_tokens = job.input_ids.shape[1]
        # Wait for the first event before answering, so errors found by generate are still a 400.
        watch = ClientWatch(request)
        try:
            first = await _next(watch, generation)
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
        return await _complete(watch, generation, first, formatter, prompt_tokens)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "running": engine.running,
            "waiting": engine.waiting,
            "kv_cache_reserved_bytes": engine.reserved_bytes,
        }

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
