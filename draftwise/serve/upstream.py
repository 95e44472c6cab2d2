"""Upstream mode: SpecPC with the draft alone, in front of any OpenAI-compatible engine.

Each chat or text completion request has its prompt (chat: the last user message's content; text: the
prompt string) compressed with SpecPC by the draft, in a worker thread, and is then forwarded, with the
``"draftwise"`` field removed, to the upstream server (vLLM, llama.cpp, another ``draftwise serve``).
Its answer is passed back: JSON with the draft's token counts added to ``usage``, or its server-sent
events chunk by chunk. Unreachable upstream: 502; upstream timeout: 504; upstream 5xx or garbage: 502;
upstream 4xx: passed through.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from torch import nn

from draftwise.methods import Method, SpecPC
from draftwise.prompt import compress_text
from draftwise.serve.errors import APIError, error_body, install_error_handlers, log
from draftwise.serve.formats import DONE
from draftwise.serve.guards import ApiKeyGuard, BodyLimit
from draftwise.serve.jobs import Defaults
from draftwise.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_UPSTREAM_TIMEOUT,
    RETRY_AFTER_SECONDS,
)
from draftwise.serve.schemas import ChatCompletionRequest, CompletionRequest

try:  # the name httpx is published under in some environments (openai 3.x uses it)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

TOKENS_HEADER = "x-draftwise-prompt-tokens"
KEPT_HEADER = "x-draftwise-prompt-tokens-kept"
UPSTREAM_METHODS = ("specpc", "full")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class Busy(Exception):
    """Every compression slot is taken and the queue is full."""


class Compressor:
    """Runs compressions in ``max_concurrency`` threads, admitting at most ``max_queue`` more waiting."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError(
                f"need max_concurrency >= 1 and max_queue >= 0, got {max_concurrency}, {max_queue}"
            )
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.admitted = 0
        self.running = 0
        self._slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="draftwise-compress")

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker thread once a slot is free; :class:`Busy` if the queue is full."""
        if self.admitted >= self.max_concurrency + self.max_queue:
            raise Busy(f"{self.running} requests are being compressed and {self.waiting} waiting")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        self.admitted += 1
        try:
            async with self._slots:
                self.running += 1
                try:
                    return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
                finally:
                    self.running -= 1
        finally:
            self.admitted -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Counts:
    """The draft's token counts of the compressed part of the prompt, before and after."""

    before: int = 0
    kept: int = 0

    def headers(self) -> dict[str, str]:
        return {TOKENS_HEADER: str(self.before), KEPT_HEADER: str(self.kept)}


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _text_of(content: Any, param: str) -> str:
    """A message's content as one string; a list of text parts is joined with newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "\n".join(p["text"] for p in content)
    raise _bad("only text content parts can be compressed in upstream mode", param)


def _target(raw: dict, chat: bool) -> tuple[str, Any, str] | None:
    """Where the text to compress sits: ``(key, container, param)``; ``None`` for nothing to compress."""
    if chat:
        messages = raw.get("messages")
        users = [i for i, m in enumerate(messages or []) if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise _bad("upstream mode compresses the last user message, and there is none", "messages")
        i = users[-1]
        return "content", messages[i], f"messages.{i}.content"
    prompt = raw.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return 0, prompt, "prompt"
    if isinstance(prompt, str):
        return "prompt", raw, "prompt"
    raise _bad("upstream mode compresses one text prompt; token ids and batches cannot be", "prompt")


def _compress(draft: nn.Module, tokenizer, method: Method, text: str, param: str) -> tuple[str, Counts]:
    """Compress ``text`` (in a worker thread); a ``full`` method only counts its tokens."""
    n = len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0
    if not isinstance(method, SpecPC) or not text.strip():
        return text, Counts(n, n)
    try:
        out = compress_text(draft, tokenizer, text, method)
    except (ValueError, TypeError) as error:
        raise _bad(str(error), param) from None
    return out.text, Counts(out.tokens, out.tokens_kept)


def _upstream_error(status: int, content: bytes, url: str) -> APIError:
    """A 5xx from upstream as our 502, with its message when it sent one."""
    detail = content[:300].decode("utf-8", "replace").strip()
    with suppress(ValueError, TypeError, KeyError):
        detail = json.loads(content)["error"]["message"]
    return APIError(
        502, f"the upstream server at {url} failed with status {status}: {detail}",
        type="server_error", code="upstream_error",
    )  # fmt: skip


def _transport_error(error: Exception, url: str) -> APIError:
    if isinstance(error, httpx.TimeoutException):
        return APIError(
            504, f"the upstream server at {url} did not answer in time ({type(error).__name__})",
            type="server_error", code="upstream_timeout",
        )  # fmt: skip
    return APIError(
        502, f"could not reach the upstream server at {url}: {type(error).__name__}: {error}",
        type="server_error", code="upstream_unreachable",
    )  # fmt: skip


def _passed_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}


def create_upstream_app(
    draft: nn.Module,
    tokenizer,
    *,
    upstream: str,
    upstream_model: str | None = None,
    upstream_api_key: str | None = None,
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
    defaults: Mapping[str, Any] | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_queue: int = DEFAULT_MAX_QUEUE,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The upstream-mode app; see :func:`draftwise.serve.app.create_app`."""
    if draft is None:
        raise ValueError("upstream mode needs a draft model to compress prompts with")
    if not upstream.startswith(("http://", "https://")):
        raise ValueError(f"the upstream must be an http(s) URL such as http://host:8000/v1, got {upstream!r}")
    if not upstream_timeout or upstream_timeout <= 0:
        raise ValueError(f"the upstream timeout must be positive, got {upstream_timeout!r}")
    settings = Defaults.parse({"method": "specpc", **(defaults or {})})
    if settings.method not in UPSTREAM_METHODS:
        raise ValueError(f"upstream mode takes method specpc or full, not {settings.method}")
    base = upstream.rstrip("/")
    compressor = Compressor(max_concurrency, max_queue)
    clients: dict[str, Any] = {}

    def http():
        if "client" not in clients:
            clients["client"] = httpx.AsyncClient(timeout=httpx.Timeout(upstream_timeout))
        return clients["client"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        compressor.close()
        if "client" in clients:
            await clients.pop("client").aclose()

    app = FastAPI(
        title="draftwise", summary="SpecPC in front of an OpenAI-compatible server", lifespan=lifespan
    )
    app.state.compressor = compressor
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyGuard, key=api_key)  # added last: runs first

    def headers_for(request: Request) -> dict[str, str]:
        headers = {"Accept": request.headers.get("accept", "application/json")}
        if upstream_api_key:
            headers["Authorization"] = f"Bearer {upstream_api_key}"
        elif "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        return headers

    def method_of(body: ChatCompletionRequest | CompletionRequest) -> Method:
        try:
            method = settings.build_method(body.draftwise)
        except (ValueError, TypeError) as error:
            raise _bad(str(error), "draftwise", code="invalid_method") from None
        if method.name not in UPSTREAM_METHODS:
            raise _bad(
                f"upstream mode runs only the draft: method must be specpc or full, not {method.name}",
                "draftwise", code="invalid_method",
            )  # fmt: skip
        return method

    async def forward(request: Request, body: ChatCompletionRequest | CompletionRequest, path: str) -> Any:
        chat = isinstance(body, ChatCompletionRequest)
        method = method_of(body)
        raw = await request.json()
        raw.pop("draftwise", None)
        if upstream_model:
            raw["model"] = upstream_model
        counts = Counts()
        if isinstance(method, SpecPC):
            where = _target(raw, chat)
        else:  # forwarded unchanged; only counted when there is one text to count
            try:
                where = _target(raw, chat)
            except APIError:
                where = None
        if where is not None:
            key, container, param = where
            text = _text_of(container[key], param) if isinstance(method, SpecPC) else container[key]
            if not isinstance(method, SpecPC):
                if isinstance(text, str):
                    _, counts = _compress(draft, tokenizer, method, text, param)
            else:
                try:
                    compressed, counts = await compressor.run(
                        _compress, draft, tokenizer, method, text, param
                    )
                except Busy as busy:
                    raise APIError(
                        429, f"the server is busy ({busy}); retry later", type="rate_limit_error",
                        code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    ) from None  # fmt: skip
                if compressed != text:
                    container[key] = compressed
        url = base + path
        client = http()
        try:
            upstream_request = client.build_request("POST", url, json=raw, headers=headers_for(request))
            response = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as error:
            raise _transport_error(error, base) from None
        ours = counts.headers()
        if response.status_code >= 400 or not body.stream:
            try:
                content = await response.aread()
            except httpx.HTTPError as error:
                raise _transport_error(error, base) from None
            finally:
                await response.aclose()
            if response.status_code >= 500:
                raise _upstream_error(response.status_code, content, base)
            if response.status_code >= 400:
                headers = {**_passed_headers(response), **ours}
                return Response(content, response.status_code, headers=headers)
            try:
                data = json.loads(content)
            except ValueError:
                raise APIError(
                    502, f"the upstream server at {base} answered with something that is not JSON: "
                    f"{content[:200].decode('utf-8', 'replace')!r}",
                    type="server_error", code="upstream_bad_response",
                ) from None  # fmt: skip
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                data["usage"]["prompt_tokens_before"] = counts.before
                data["usage"]["prompt_tokens_kept"] = counts.kept
            return JSONResponse(data, response.status_code, headers=ours)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            except httpx.HTTPError as error:
                log.warning("the upstream stream from %s broke: %r", base, error)
                failure = _transport_error(error, base)
                yield f"\n\ndata: {json.dumps(error_body(failure.message, type=failure.type))}\n\n".encode()
                yield DONE.encode()
            finally:
                await response.aclose()

        media = response.headers.get("content-type", "text/event-stream")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ours}
        return StreamingResponse(relay(), response.status_code, headers=headers, media_type=media)

    async def get_json(request: Request, path: str) -> Any:
        client = http()
        try:
            response = await client.get(base + path, headers=headers_for(request))
        except httpx.HTTPError as error:
            raise _transport_error(error, base) from None
        if response.status_code >= 500:
            raise _upstream_error(response.status_code, response.content, base)
        if response.status_code >= 400:
            return Response(response.content, response.status_code, headers=_passed_headers(response))
        try:
            return JSONResponse(response.json(), response.status_code)
        except ValueError:
            raise APIError(
                502, f"the upstream server at {base} answered {path} with something that is not JSON",
                type="server_error", code="upstream_bad_response",
            ) from None  # fmt: skip

    started = time.monotonic()

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "upstream": base,
            "model": upstream_model,
            "running": compressor.running,
            "waiting": compressor.waiting,
            "uptime_seconds": round(time.monotonic() - started, 1),
        }

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        return await get_json(request, "/models")

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Any:
        return await get_json(request, f"/models/{model_id}")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await forward(request, body, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await forward(request, body, "/completions")

    return app
