"""Upstream mode: SpecPC with the draft alone, in front of any OpenAI-compatible engine.

Each chat or text completion request has its prompt (chat: the last user message's content; text: the
prompt string) compressed with SpecPC by the draft, in a worker thread, and is then forwarded, with the
``"draftwise"`` field removed, to the upstream server (vLLM, llama.cpp, another ``draftwise serve``).
Its answer is passed back: JSON with the draft's token counts added to ``usage``, or its server-sent
events chunk by chunk (decoded, whatever the upstream's content encoding). Unreachable upstream: 502;
upstream timeout: 504; upstream 5xx or garbage (NaN included): 502; upstream 4xx: passed through.
Upstream details (its URL, its error texts) go to the log, never to clients.

Before any work, a request takes one of ``max_forwarded`` places (else 429); a SpecPC prompt is checked
against the draft's context and the memory limit before it is compressed. Only the operator's
``upstream_api_key`` goes upstream, never a client's ``Authorization``; no upstream URL is built from
a client's path. A client that goes away cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from torch import nn

from draftwise.checks import TooLarge
from draftwise.methods import Method
from draftwise.methods.base import OptionError
from draftwise.serve.admission import Admission
from draftwise.serve.errors import (
    APIError,
    install_error_handlers,
    log,
    model_not_found,
)
from draftwise.serve.formats import DONE
from draftwise.serve.guards import ApiKeyGuard, BodyLimit
from draftwise.serve.jobs import Defaults, checked_text, method_error
from draftwise.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_FORWARDED,
    DEFAULT_MAX_QUEUE,
    DEFAULT_UPSTREAM_TIMEOUT,
)
from draftwise.serve.schemas import ChatCompletionRequest, CompletionRequest, check_model_id
from draftwise.serve.watch import CLIENT_CLOSED, ClientGone, ClientWatch
from draftwise.text_compression import compress_text

try:  # the name httpx is published under in some environments (openai 3.x uses it)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

TOKENS_HEADER = "x-draftwise-prompt-tokens"
KEPT_HEADER = "x-draftwise-prompt-tokens-kept"
UPSTREAM_METHODS = ("specpc", "full")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class Compressor:
    """Runs compressions in ``max_concurrency`` threads, admitting at most ``max_queue`` more waiting.

    A caller that goes away while waiting leaves the queue at once; one that goes away while its
    compression runs leaves the thread to finish (a thread cannot be stopped), and its slot is freed then.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError(
                f"need max_concurrency >= 1 and max_queue >= 0, got {max_concurrency}, {max_queue}"
            )
        self.admission = Admission(max_concurrency + max_queue, "requests being compressed or waiting")
        self.running = 0
        self._slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="draftwise-compress")
        self.max_concurrency = max_concurrency

    @property
    def waiting(self) -> int:
        return self.admission.count - self.running

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker thread once a slot is free; :class:`Busy` if the queue is full."""
        self.admission.admit()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        try:
            await self._slots.acquire()
        except BaseException:
            self.admission.release()
            raise
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

        def done(_: asyncio.Future) -> None:
            self.running -= 1
            self._slots.release()
            self.admission.release()

        future.add_done_callback(done)
        return await asyncio.shield(future)

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
        return checked_text(content or "", param)
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return checked_text("\n".join(p["text"] for p in content), param)
    raise _bad("only text content parts can be compressed in upstream mode", param)


def _target(raw: dict, chat: bool) -> tuple[str | int, Any, str]:
    """Where the text to compress sits: ``(key, container, param)``."""
    if chat:
        messages = raw.get("messages")
        users = [i for i, m in enumerate(messages or []) if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise _bad("upstream mode compresses the last user message, and there is none", "messages")
        i = users[-1]
        if "content" not in messages[i]:
            raise _bad("the last user message has no content", f"messages.{i}.content")
        return "content", messages[i], f"messages.{i}.content"
    prompt = raw.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return 0, prompt, "prompt"
    if isinstance(prompt, str):
        return "prompt", raw, "prompt"
    raise _bad("upstream mode compresses one text prompt; token ids and batches cannot be", "prompt")


def _compress(
    draft: nn.Module, tokenizer, method: Method, text: str, param: str, max_bytes: int | None
) -> tuple[str, Counts]:
    """Compress ``text`` (in a worker thread), checked first against the draft's context and the memory
    limit; a method that keeps the whole prompt (``full``) only counts its tokens."""
    if method.prompt_stage() is None or not text.strip():
        n = len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0
        return text, Counts(n, n)
    try:
        out = compress_text(draft, tokenizer, text, method, max_bytes)
    except TooLarge as error:
        raise _bad(str(error), param, code="request_too_large") from None
    except OptionError as error:
        raise method_error(error) from None
    except (ValueError, TypeError) as error:
        raise _bad(str(error), param, code="context_length_exceeded") from None
    return out.text, Counts(out.tokens, out.tokens_kept)


def _upstream_error(status: int, content: bytes, path: str) -> APIError:
    """A 5xx from upstream as our 502; its text goes to the log, not to the client."""
    log.warning("the upstream answered %s with %s: %r", path, status, content[:500])
    return APIError(
        502, f"the upstream server failed (status {status})", type="server_error", code="upstream_error"
    )


def _transport_error(error: Exception, path: str) -> APIError:
    log.warning("the upstream request %s failed: %r", path, error)
    if isinstance(error, httpx.TimeoutException):
        return APIError(
            504, "the upstream server did not answer in time", type="server_error", code="upstream_timeout"
        )
    return APIError(
        502, "could not reach the upstream server", type="server_error", code="upstream_unreachable"
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _upstream_json(content: bytes, path: str) -> Any:
    """The upstream's answer as strict JSON (no NaN or Infinity), else a 502."""
    try:
        return json.loads(content, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        log.warning("the upstream answered %s with invalid JSON: %r", path, content[:500])
        raise APIError(
            502, "the upstream server answered with something that is not valid JSON",
            type="server_error", code="upstream_bad_response",
        ) from None  # fmt: skip


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
    max_forwarded: int = DEFAULT_MAX_FORWARDED,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_request_bytes: int | None = None,
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
    forwarded = Admission(max_forwarded, "requests in flight to the upstream")
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

    def headers_for(accept: str) -> dict[str, str]:
        """Only the operator's key goes upstream: a client's ``Authorization`` is this server's own."""
        headers = {"Accept": accept}
        if upstream_api_key:
            headers["Authorization"] = f"Bearer {upstream_api_key}"
        return headers

    def method_of(body: ChatCompletionRequest | CompletionRequest) -> Method:
        try:
            method = settings.build_method(body.draftwise)
        except (ValueError, TypeError) as error:
            raise method_error(error) from None
        if method.name not in UPSTREAM_METHODS:
            raise _bad(
                f"upstream mode runs only the draft: method must be specpc or full, not {method.name}",
                "draftwise.method", code="invalid_method",
            )  # fmt: skip
        return method

    async def compressed(watch: ClientWatch, raw: dict, chat: bool, method: Method) -> Counts:
        """Compress the prompt inside ``raw`` in place (``full``: only count it); the counts."""
        if method.prompt_stage() is not None:
            key, container, param = _target(raw, chat)
            text = _text_of(container[key], param)
            work = compressor.run(_compress, draft, tokenizer, method, text, param, max_request_bytes)
            short, counts = await watch.until(work)
            container[key] = short
            return counts
        try:  # forwarded unchanged; counted when there is one text to count
            key, container, param = _target(raw, chat)
        except APIError:
            return Counts()
        if not isinstance(container[key], str):
            return Counts()
        text = checked_text(container[key], param)
        _, counts = await asyncio.to_thread(_compress, draft, tokenizer, method, text, param, None)
        return counts

    async def forward(request: Request, body: ChatCompletionRequest | CompletionRequest, path: str) -> Any:
        method = method_of(body)
        forwarded.admit()  # a 429 before any work when too many are in flight
        handed_over = False
        watch = ClientWatch(request)
        try:
            raw = await asyncio.to_thread(json.loads, await request.body())
            raw.pop("draftwise", None)
            if upstream_model:
                raw["model"] = upstream_model
            counts = await compressed(watch, raw, isinstance(body, ChatCompletionRequest), method)
            content = await asyncio.to_thread(json.dumps, raw)
            accept = "text/event-stream" if body.stream else "application/json"
            client = http()
            outgoing = client.build_request(
                "POST", base + path, content=content.encode(),
                headers={**headers_for(accept), "Content-Type": "application/json"},
            )  # fmt: skip
            try:
                response = await watch.until(client.send(outgoing, stream=True))
            except httpx.HTTPError as error:
                raise _transport_error(error, path) from None
            ours = counts.headers()
            if response.status_code >= 400 or not body.stream:
                try:
                    content_bytes = await watch.until(response.aread())
                except httpx.HTTPError as error:
                    raise _transport_error(error, path) from None
                finally:
                    await response.aclose()
                if response.status_code >= 500:
                    raise _upstream_error(response.status_code, content_bytes, path)
                if response.status_code >= 400:
                    headers = {**_passed_headers(response), **ours}
                    return Response(content_bytes, response.status_code, headers=headers)
                data = await asyncio.to_thread(_upstream_json, content_bytes, path)
                if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                    data["usage"]["prompt_tokens_before"] = counts.before
                    data["usage"]["prompt_tokens_kept"] = counts.kept
                return JSONResponse(data, response.status_code, headers=ours)

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.aiter_bytes():  # decoded: the upstream may gzip
                        yield chunk
                except httpx.HTTPError as error:
                    failure = _transport_error(error, path)
                    yield f"\n\ndata: {json.dumps(failure.body())}\n\n".encode()
                    yield DONE.encode()
                finally:
                    await response.aclose()
                    forwarded.release()

            media = response.headers.get("content-type", "text/event-stream")
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ours}
            handed_over = True
            return StreamingResponse(relay(), response.status_code, headers=headers, media_type=media)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_over:
                forwarded.release()

    async def get_json(path: str) -> Any:
        client = http()
        try:
            response = await client.get(base + path, headers=headers_for("application/json"))
        except httpx.HTTPError as error:
            raise _transport_error(error, path) from None
        if response.status_code >= 500:
            raise _upstream_error(response.status_code, response.content, path)
        if response.status_code >= 400:
            return Response(response.content, response.status_code, headers=_passed_headers(response))
        return JSONResponse(_upstream_json(response.content, path), response.status_code)

    started = time.monotonic()

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": upstream_model,
            "running": compressor.running,
            "waiting": compressor.waiting,
            "forwarding": forwarded.count,
            "uptime_seconds": round(time.monotonic() - started, 1),
        }

    @app.get("/v1/models")
    async def models() -> Any:
        return await get_json("/models")

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        """The upstream's card for ``model_id``, found in its list: no URL is built from the client's path."""
        check_model_id(model_id)
        listing = await get_json("/models")
        if not isinstance(listing, JSONResponse):
            return listing
        cards = json.loads(listing.body).get("data")
        for card in cards if isinstance(cards, list) else []:
            if isinstance(card, dict) and card.get("id") == model_id:
                return card
        raise model_not_found(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await forward(request, body, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await forward(request, body, "/completions")

    return app
