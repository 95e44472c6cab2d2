"""ASGI middlewares that check a request before any route sees it: the API key and the body's size."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from draftwise.serve.errors import error_response
from draftwise.serve.settings import DEFAULT_BODY_TIMEOUT


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def bearer_token(scope: Scope) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (the scheme in any case), or ``None``."""
    scheme, _, token = (_header(scope, b"authorization") or b"").strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


class ApiKeyGuard:
    """Refuse (401) any request without ``Authorization: Bearer <key>``, except on ``open_paths``."""

    def __init__(self, app: ASGIApp, key: str, open_paths: Iterable[str] = ("/health",)) -> None:
        self.app = app
        self.expected = key.encode()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            given = _header(scope, b"authorization")
            if not hmac.compare_digest(bearer_token(scope) or b"", self.expected):
                message = "missing API key" if not given else "incorrect API key"
                response = error_response(
                    401,
                    f"{message}: send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse (413) a request whose body is over ``max_bytes``, declared or as it arrives, and (408) one
    whose body takes over ``timeout`` seconds to arrive (a client trickling bytes to hold a place).

    The body is read here in full (it is at most ``max_bytes``) and handed on to the app unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, f"the request body is over the limit of {self.max_bytes} bytes", code="request_too_large"
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                response = error_response(
                    408, f"the request body did not arrive within {self.timeout:g} s", code="request_timeout"
                )
                await response(scope, receive, send)
                return
            if message["type"] != "http.request":  # the client went away before sending it all
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
