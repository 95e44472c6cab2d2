"""Upstream mode: SpecPC with the draft alone, in front of any OpenAI-compatible engine.

Each chat or text completion request has its prompt (chat: the last user message's content; text: the
prompt string) compressed with SpecPC by the draft, in a worker thread, and is then forwarded, with the
``"draftwise"`` field removed, to the upstream server (vLLM, llama.cpp, another ``draftwise serve``).
Its answer is passed back: JSON with the draft's token counts added to ``usage`` (the upstream's
``prompt_tokens`` are the compressed prompt's; ``prompt_tokens_original`` adds back what was dropped),
or its server-sent events as they come (decoded, whatever the upstream's content encoding; a usage
chunk amended alike). Unreachable upstream: 502; upstream timeout: 504; upstream 5xx or garbage (NaN
included): 502; upstream 4xx: passed through.
Upstream details (its URL, its error texts) go to the log, never to clients.

Before any work, a request takes one of ``max_forwarded`` places (else 429); a SpecPC prompt is checked
against the draft's context and the memory limit before it is compressed. Only the operator's
``upstream_api_key`` goes upstream, never a client's ``Authorization``; no upstream URL is built from
a client's path. A client that goes away cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from torch import nn

from draftwise.checks import TooLarge
from draftwise.methods import Method
from draftwise.methods.base import OptionError
from draftwise.serve.admission import Admission, ModelUse, WorkerPool
from draftwise.serve.errors import APIError, log, model_not_found
from draftwise.serve.factory import new_app
from draftwise.serve.formats import DONE
from draftwise.serve.jobs import Defaults, checked_text, method_error
from draftwise.serve.schemas import ChatCompletionRequest, CompletionRequest, check_model_id
from draftwise.serve.settings import ServerSettings
from draftwise.serve.watch import CLIENT_CLOSED, ClientGone, ClientWatch
from draftwise.text_compression import compress_text
from draftwise.windowed import may_window

try:  # the name httpx is published under in some environments (openai 3.x uses it)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

TOKENS_HEADER = "x-draftwise-prompt-tokens"
KEPT_HEADER = "x-draftwise-prompt-tokens-kept"
UPSTREAM_METHODS = ("specpc", "full")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


@dataclass
class Counts:
    """The draft's token counts of the compressed part of the prompt, before and after."""

    before: int = 0
    kept: int = 0

    def headers(self) -> dict[str, str]:
        return {TOKENS_HEADER: str(self.before), KEPT_HEADER: str(self.kept)}

    def amend(self, data: Any) -> Any:
        """``data`` (an answer or a chunk) with the counts in its ``usage``, if it has one: the upstream's
        ``prompt_tokens`` are what it read (the compressed prompt); ``prompt_tokens_original`` adds
        back what the front dropped (counted in the draft's tokens)."""
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            usage["prompt_tokens_before"] = self.before
            usage["prompt_tokens_kept"] = self.kept
            if isinstance(usage.get("prompt_tokens"), int):
                usage["prompt_tokens_original"] = usage["prompt_tokens"] + self.before - self.kept
        return data


MAX_EVENT_BYTES = 1 << 20  # an upstream event held back to amend its usage, at most
_EVENT_END = re.compile(rb"\r?\n\r?\n")


def _amended_event(event: bytes, counts: Counts) -> bytes:
    """One server-sent event, its ``usage`` amended (:meth:`Counts.amend`) when it carries one."""
    if b'"usage"' not in event or not event.startswith(b"data:"):
        return event
    try:
        data = json.loads(event[5:])
    except ValueError:
        return event
    if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
        return event
    return b"data: " + json.dumps(counts.amend(data)).encode()


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
    draft: nn.Module,
    tokenizer,
    method: Method,
    text: str,
    param: str,
    max_bytes: int | None,
    draft_use: ModelUse,
) -> tuple[str, Counts]:
    """Compress ``text`` (in a worker thread), checked first against the draft's context and the memory
    limit; a method that keeps the whole prompt (``full``) only counts its tokens. The draft runs
    under ``draft_use``: alone when its pass swaps the draft's attention (SpecPC's sparse pre-fill; the
    windowed pre-fill of a draft with sliding-window layers)."""
    if method.prompt_stage() is None or not text.strip():
        n = len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0
        return text, Counts(n, n)
    try:
        with draft_use.use(alone=method.swaps_attention or may_window(draft)):
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


class Forwarder:
    """Upstream mode's work on one request: check its method, compress its prompt with the draft (in
    the :class:`~draftwise.serve.admission.WorkerPool`), forward it, and pass the answer back."""

    def __init__(self, draft: nn.Module, tokenizer, settings: ServerSettings) -> None:
        self.draft, self.tokenizer, self.settings = draft, tokenizer, settings
        self.defaults = Defaults.parse({"method": "specpc", **(settings.defaults or {})})
        if self.defaults.method not in UPSTREAM_METHODS:
            raise ValueError(f"upstream mode takes method specpc or full, not {self.defaults.method}")
        self.base = settings.upstream.rstrip("/")
        self.pool = WorkerPool(
            settings.max_concurrency,
            settings.max_queue,
            "requests being compressed or waiting",
            "draftwise-compress",
        )
        self.forwarded = Admission(settings.max_forwarded, "requests in flight to the upstream")
        self.draft_use = ModelUse()
        self._client: Any = None

    def client(self):
        """The HTTP client to the upstream, made on first use (on the event loop)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.upstream_timeout))
        return self._client

    async def close(self) -> None:
        self.pool.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def headers_for(self, accept: str) -> dict[str, str]:
        """Only the operator's key goes upstream: a client's ``Authorization`` is this server's own."""
        headers = {"Accept": accept}
        if self.settings.upstream_api_key:
            headers["Authorization"] = f"Bearer {self.settings.upstream_api_key}"
        return headers

    def method_of(self, body: ChatCompletionRequest | CompletionRequest) -> Method:
        try:
            method = self.defaults.build_method(body.draftwise)
        except (ValueError, TypeError) as error:
            raise method_error(error) from None
        if method.name not in UPSTREAM_METHODS:
            raise _bad(
                f"upstream mode runs only the draft: method must be specpc or full, not {method.name}",
                "draftwise.method", code="invalid_method",
            )  # fmt: skip
        return method

    async def compress(self, watch: ClientWatch, raw: dict, chat: bool, method: Method) -> Counts:
        """Compress the prompt inside ``raw`` in place (``full``: only count it); the counts."""
        draft, tokenizer = self.draft, self.tokenizer
        if method.prompt_stage() is not None:
            key, container, param = _target(raw, chat)
            text = _text_of(container[key], param)
            self.pool.admit()
            limit = self.settings.max_request_bytes
            work = self.pool.run(_compress, draft, tokenizer, method, text, param, limit, self.draft_use)
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
        _, counts = await asyncio.to_thread(
            _compress, draft, tokenizer, method, text, param, None, self.draft_use
        )
        return counts

    async def forward(
        self, request: Request, body: ChatCompletionRequest | CompletionRequest, path: str
    ) -> Any:
        """The request, compressed, sent to ``path`` upstream; the upstream's answer, passed back."""
        method = self.method_of(body)
        self.forwarded.admit()  # a 429 before any work when too many are in flight
        handed_over = False
        watch = ClientWatch(request)
        try:
            raw = await asyncio.to_thread(json.loads, await request.body())
            raw.pop("draftwise", None)
            if self.settings.upstream_model:
                raw["model"] = self.settings.upstream_model
            counts = await self.compress(watch, raw, isinstance(body, ChatCompletionRequest), method)
            response = await self._send(watch, raw, path, body.stream)
            if response.status_code >= 400 or not body.stream:
                return await self._answer(watch, response, path, counts)
            handed_over = True
            return self._relay(response, path, counts)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_over:
                self.forwarded.release()

    async def _send(self, watch: ClientWatch, raw: dict, path: str, stream: bool):
        """POST ``raw`` to ``path`` upstream; the response, its body still to read."""
        content = await asyncio.to_thread(json.dumps, raw)
        accept = "text/event-stream" if stream else "application/json"
        client = self.client()
        outgoing = client.build_request(
            "POST", self.base + path, content=content.encode(),
            headers={**self.headers_for(accept), "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            return await watch.until(client.send(outgoing, stream=True))
        except httpx.HTTPError as error:
            raise _transport_error(error, path) from None

    async def _answer(self, watch: ClientWatch, response, path: str, counts: Counts) -> Response:
        """A whole answer: an upstream error passed on, or its JSON with the draft's counts in ``usage``."""
        try:
            content = await watch.until(response.aread())
        except httpx.HTTPError as error:
            raise _transport_error(error, path) from None
        finally:
            await response.aclose()
        ours = counts.headers()
        if response.status_code >= 500:
            raise _upstream_error(response.status_code, content, path)
        if response.status_code >= 400:
            return Response(content, response.status_code, headers={**_passed_headers(response), **ours})
        data = await asyncio.to_thread(_upstream_json, content, path)
        return JSONResponse(counts.amend(data), response.status_code, headers=ours)

    def _relay(self, response, path: str, counts: Counts) -> StreamingResponse:
        """The upstream's events as they come (a chunk's ``usage`` amended with the counts); the request's
        place is freed when they end."""

        async def relay() -> AsyncIterator[bytes]:
            pending = b""
            try:
                async for chunk in response.aiter_bytes():  # decoded: the upstream may gzip
                    *events, pending = _EVENT_END.split(pending + chunk)
                    if events:
                        yield b"".join(_amended_event(event, counts) + b"\n\n" for event in events)
                    if len(pending) > MAX_EVENT_BYTES:  # no event ends: pass it on as it is
                        yield pending
                        pending = b""
                if pending:
                    yield _amended_event(pending, counts)
            except httpx.HTTPError as error:
                failure = _transport_error(error, path)
                yield f"\n\ndata: {json.dumps(failure.body())}\n\n".encode()
                yield DONE.encode()
            finally:
                await response.aclose()
                self.forwarded.release()

        media = response.headers.get("content-type", "text/event-stream")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **counts.headers()}
        return StreamingResponse(relay(), response.status_code, headers=headers, media_type=media)

    async def get_json(self, path: str) -> Any:
        """GET ``path`` upstream: its JSON, or its error."""
        try:
            response = await self.client().get(self.base + path, headers=self.headers_for("application/json"))
        except httpx.HTTPError as error:
            raise _transport_error(error, path) from None
        if response.status_code >= 500:
            raise _upstream_error(response.status_code, response.content, path)
        if response.status_code >= 400:
            return Response(response.content, response.status_code, headers=_passed_headers(response))
        return JSONResponse(_upstream_json(response.content, path), response.status_code)


def create_upstream_app(draft: nn.Module | None, tokenizer, settings: ServerSettings) -> FastAPI:
    """The upstream-mode app; see :func:`draftwise.serve.app.create_app`."""
    if draft is None:
        raise ValueError("upstream mode needs a draft model to compress prompts with")
    forwarder = Forwarder(draft, tokenizer, settings)
    app = new_app("SpecPC in front of an OpenAI-compatible server", settings, forwarder.close)
    app.state.forwarder = forwarder
    started = time.monotonic()

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": settings.upstream_model,
            "running": forwarder.pool.running,
            "waiting": forwarder.pool.waiting,
            "forwarding": forwarder.forwarded.count,
            "uptime_seconds": round(time.monotonic() - started, 1),
        }

    @app.get("/v1/models")
    async def models() -> Any:
        return await forwarder.get_json("/models")

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        """The upstream's card for ``model_id``, found in its list: no URL is built from the client's path."""
        check_model_id(model_id)
        listing = await forwarder.get_json("/models")
        if not isinstance(listing, JSONResponse):
            return listing
        cards = json.loads(listing.body).get("data")
        for card in cards if isinstance(cards, list) else []:
            if isinstance(card, dict) and card.get("id") == model_id:
                return card
        raise model_not_found(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await forwarder.forward(request, body, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await forwarder.forward(request, body, "/completions")

    return app
