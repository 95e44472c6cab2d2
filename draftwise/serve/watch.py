"""Waiting on a client's behalf, and stopping when the client goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")
DISCONNECT_POLL_SECONDS = 0.25  # how often a waiting request checks whether its client went away
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection; nobody reads it


class ClientGone(Exception):
    """The client closed its connection while the server was waiting on its behalf."""


class ClientWatch:
    """Awaits things for one request, checking at least every ``DISCONNECT_POLL_SECONDS`` whether its
    client is still there (also while results keep coming quickly)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._checked = time.monotonic()

    async def until(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; if the client goes away first, cancel it and raise :class:`ClientGone`."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                if time.monotonic() - self._checked >= DISCONNECT_POLL_SECONDS:
                    self._checked = time.monotonic()
                    if await self.request.is_disconnected():
                        raise ClientGone
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
