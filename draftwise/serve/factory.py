"""The FastAPI app both modes start from: OpenAI-shaped errors, the body limit, the API key, and what
to close on shutdown."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from draftwise.serve.errors import install_error_handlers
from draftwise.serve.guards import ApiKeyGuard, BodyLimit
from draftwise.serve.settings import ServerSettings


def new_app(summary: str, settings: ServerSettings, close: Callable[[], Awaitable[None] | None]) -> FastAPI:
    """An app with the guards ``settings`` ask for; ``close()`` (maybe async) runs on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        closing = close()
        if inspect.isawaitable(closing):
            await closing

    app = FastAPI(title="draftwise", summary=summary, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyGuard, key=settings.api_key)  # added last: runs first
    return app
