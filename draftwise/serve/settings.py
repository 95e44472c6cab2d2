"""How the server runs, apart from its models: :class:`ServerSettings`, which ``create_app`` takes and
the ``serve`` command builds from its arguments, and the default limits (no heavy imports, so the CLI
can show them cheaply)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096
DEFAULT_MAX_CONCURRENCY = 1  # upstream mode: compressions at once
DEFAULT_MAX_BATCH = 8  # rows decoding together
DEFAULT_MAX_QUEUE = 8
RETRY_AFTER_SECONDS = 1
DEFAULT_UPSTREAM_TIMEOUT = 600.0  # seconds, upstream mode
DEFAULT_MAX_FORWARDED = 64  # upstream mode: requests in flight to the upstream at once
DEFAULT_BODY_TIMEOUT = 60.0  # seconds for a request body to arrive
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a connection's request headers to arrive
DEFAULT_LIMIT_CONCURRENCY = 256  # open connections and requests; beyond them uvicorn answers 503


@dataclass(frozen=True)
class ServerSettings:
    """Everything about a server but its models. Checked when made (``ValueError``).

    Attributes:
        model_name: the name clients pass as ``model`` (normal mode).
        defaults: server-side defaults, e.g. ``{"method": "speckv", "budget": 256, "max_tokens": 256,
            "temperature": 0.0, "top_p": 1.0}``; a request's ``"draftwise"`` field overrides the method
            and its options (the default options apply only when it keeps the default method).
        max_batch: requests decoding together (continuous batching: one scheduler thread compresses
            each and adds it to the running batch; see :mod:`draftwise.serve.worker`).
        kv_cache_memory: bytes of KV cache the running batch may hold; a request reserves what its
            method keeps plus ``max_tokens`` (rows padded to the widest) and waits for room; one that
            alone needs more gets 400. ``None``: only ``max_batch`` bounds the batch.
        max_concurrency: upstream mode: compressions run at once, in worker threads.
        max_queue: requests that may wait (for a place in the batch, or upstream mode's threads);
            beyond them the answer is 429 with ``Retry-After``.
        api_key: if set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: larger request bodies get 413.
        max_new_tokens_limit: the most ``max_tokens`` a request may ask for (normal mode).
        max_request_bytes: requests whose KV cache and scoring weights before anything is dropped
            (prompt plus ``max_tokens`` or the lookahead, in the target or the draft; upstream mode: the
            draft's) would exceed this many bytes get 400 before any work starts; ``None``: no limit
            but the context.
        upstream: upstream mode: the base URL (``http://host:port/v1``) of an OpenAI-compatible server.
            Only the draft runs here: each request's prompt (chat: the last user message) is compressed
            with SpecPC and the request forwarded there; see :mod:`draftwise.serve.upstream`.
        upstream_model: the ``model`` sent upstream in place of the client's.
        upstream_api_key: the key sent upstream; without it none is (a client's key is this server's).
        upstream_timeout: seconds to wait for the upstream (connecting, and between bytes read).
        max_forwarded: upstream mode: requests in flight to the upstream at once; beyond them, 429.
        speculative: decode every request speculatively (a
            :class:`~draftwise.speculative.SpeculativeConfig`): the draft (or a lookup in the prompt)
            proposes, the target verifies in the batch's forward. Lossless, so it is the operator's
            choice, not a request's. ``None``: off.
    """

    model_name: str | None = None
    defaults: Mapping[str, Any] | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    kv_cache_memory: int | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT
    max_request_bytes: int | None = None
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    max_forwarded: int = DEFAULT_MAX_FORWARDED
    speculative: Any = None  # a SpeculativeConfig (not imported here: the CLI reads these cheaply)

    def __post_init__(self) -> None:
        if (
            self.max_body_bytes < 1
            or self.max_new_tokens_limit < 1
            or (self.max_request_bytes is not None and self.max_request_bytes < 1)
        ):
            raise ValueError("max_body_bytes, max_new_tokens_limit and max_request_bytes must be positive")
        if self.max_batch < 1 or (self.kv_cache_memory is not None and self.kv_cache_memory < 1):
            raise ValueError(
                f"need max_batch >= 1 and kv_cache_memory >= 1, got {self.max_batch}, {self.kv_cache_memory}"
            )
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise ValueError(
                f"need max_concurrency >= 1 and max_queue >= 0, got {self.max_concurrency}, {self.max_queue}"
            )
        if self.speculative is not None and self.upstream is not None:
            raise ValueError("speculative decoding runs where the target runs: not in upstream mode")
        if self.upstream is not None:
            if not self.upstream.startswith(("http://", "https://")):
                raise ValueError(
                    f"the upstream must be an http(s) URL such as http://host:8000/v1, got {self.upstream!r}"
                )
            if not self.upstream_timeout or self.upstream_timeout <= 0:
                raise ValueError(f"the upstream timeout must be positive, got {self.upstream_timeout!r}")
            if self.max_forwarded < 1:
                raise ValueError(
                    f"the limit of forwarded requests must be at least 1, got {self.max_forwarded}"
                )
