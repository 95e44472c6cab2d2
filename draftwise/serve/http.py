"""The HTTP server under the app: uvicorn with bounded connections and a deadline for request headers.

uvicorn alone keeps a connection that never finishes its request headers open forever (its keep-alive
timer runs only between requests, and any byte received stops it), so idle or trickling connections
could pile up until the server runs out of them. :func:`server_config` caps open connections and
requests (``limit_concurrency``: beyond it, 503) and closes a connection whose headers have not all
arrived ``header_timeout`` seconds after it opened or after its previous response.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from draftwise.serve.settings import DEFAULT_HEADER_TIMEOUT, DEFAULT_LIMIT_CONCURRENCY


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are late."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the request is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(
    app: Any,
    *,
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    **kwargs: Any,
) -> uvicorn.Config:
    """uvicorn's settings for ``app`` with these limits; ``kwargs`` go to :class:`uvicorn.Config`."""
    if limit_concurrency < 1 or not header_timeout > 0:
        raise ValueError(
            "limit_concurrency must be >= 1 and header_timeout > 0, "
            f"got {limit_concurrency} and {header_timeout}"
        )
    protocol = type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})
    return uvicorn.Config(app, http=protocol, limit_concurrency=limit_concurrency, **kwargs)
