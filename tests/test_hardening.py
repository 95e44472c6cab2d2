"""The serving audit's attacks (issue 11), each against a live server on loopback with tiny models.

Every test here failed before the fix it names (benchmarks/attacks.py shows the before and after of
each attack, docs/results/hardening.md has both).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import http.client
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer
from serving import SECRET, Recorder, running

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
try:
    import httpx2 as httpx  # the name httpx is published under in this environment
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

from draftwise.checks import kv_cache_bytes  # noqa: E402
from draftwise.serve import add_serve_arguments, create_app  # noqa: E402
from draftwise.serve.guards import BodyLimit  # noqa: E402

MODEL = "tiny"
KEY = "front-key"
UPSTREAM_KEY = "operator-upstream-key"
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
PROMPT = " ".join(f"w{6 + i % 80}" for i in range(300))
SPECPC = {"method": "specpc", "budget": 40, "window": 8}


@pytest.fixture(scope="module")
def models():
    return tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, layers=2), tiny_tokenizer()


class Forwards:
    """Counts the forward passes of some models (to check that no work was done)."""

    def __init__(self, *models) -> None:
        self.count = 0
        self._hooks = [m.register_forward_pre_hook(self._hook) for m in models]

    def _hook(self, module, args) -> None:
        self.count += 1

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@contextmanager
def counting(*models) -> Iterator[Forwards]:
    forwards = Forwards(*models)
    try:
        yield forwards
    finally:
        forwards.remove()


def post(base: str, path: str, body: dict | bytes, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(
        base + path, content=content, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs
    )


def chat(content: str = PROMPT, **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def wait_until_running(base: str, seconds: float = 10) -> None:
    """Wait until a generation (or compression) runs on the server at ``base``."""
    deadline = time.monotonic() + seconds
    while httpx.get(base + "/health").json()["running"] == 0:
        assert time.monotonic() < deadline, "nothing started running"
        time.sleep(0.05)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


# ---- normal mode ----


@pytest.fixture(scope="module")
def server(models) -> Iterator[str]:
    target, draft, tokenizer = models
    app = create_app(
        target, draft, tokenizer, model_name=MODEL, defaults={"method": "full", "max_tokens": 4},
        max_new_tokens_limit=64, max_request_bytes=600 * 1024,
    )  # fmt: skip
    with running(app) as base:
        yield base


OUT_OF_RANGE = [
    ({"method": "specpc", "budget": 64, "window": 8, "neighbourhood": 20_000_000}, "neighbourhood"),
    ({"method": "specpc", "budget": 64, "window": 8, "kernel": 50_000_000}, "kernel"),
    ({"method": "snapkv", "budget": 64, "window": 8, "kernel": 50_000_001}, "kernel"),
    ({"method": "h2o", "budget": 64, "window": 8, "block": 10**9}, "block"),
    ({"method": "streamingllm", "budget": 64, "window": 8, "sinks": 10**6}, "sinks"),
    ({"method": "speckv", "budget": 64, "window": 8, "lookahead": 600}, "lookahead"),
    ({"method": "speckv", "budget": 64, "window": 8, "sparse_prefill": "false"}, "sparse_prefill"),
    ({"method": "snapkv", "budget": 64, "window": 8, "caote": "yes"}, "caote"),
    ({"method": "adakv", "budget": 64, "window": 8, "floor": 2.5}, "floor"),
    ({"method": "random", "budget": 64, "window": 8, "seed": 2**70}, "seed"),
]


@pytest.mark.parametrize("options, option", OUT_OF_RANGE, ids=[o for _, o in OUT_OF_RANGE])
def test_method_options_out_of_range_are_refused_before_any_work(models, server, options, option):
    """Item 1: every option a request may set has a range; beyond it, a 400 naming the option."""
    target, draft, _ = models
    with counting(target, draft) as forwards:
        response = post(server, CHAT, chat(draftwise=options))
    error = assert_openai_error(response, 400, f"draftwise.{option}")
    assert error["code"] == "invalid_method" and option in error["message"]
    assert forwards.count == 0, "refused before any model ran"


def test_the_lookahead_counts_in_the_memory_limit(models, server):
    """Item 1: the target pre-fills the lookahead for its queries, so it counts like new tokens (the
    server's limit is 600 KiB; a 60-token lookahead on 300 tokens needs about 1 MiB, max_tokens 4 alone
    about 350 KiB)."""
    target, draft, _ = models
    with counting(target, draft) as forwards:
        refused = post(
            server, CHAT, chat(draftwise={"method": "speckv", "budget": 64, "window": 8, "lookahead": 60})
        )
    error = assert_openai_error(refused, 400, "messages")
    assert error["code"] == "request_too_large" and "lookahead of 60" in error["message"]
    assert forwards.count == 0
    small = post(server, CHAT, chat(draftwise={"method": "speckv", "budget": 64, "window": 8}))
    assert small.status_code == 200, small.text
    assert small.json()["usage"]["lookahead_tokens"] <= 4


def test_a_tiny_temperature_is_greedy(server):
    """Item 8: temperatures in (0, 1e-5) decode greedily instead of overflowing to NaN (a 500)."""
    greedy = post(server, TEXT, {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0})
    tiny = post(server, TEXT, {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 1e-300})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"7": 100}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1.0),
        ("top_logprobs", 2),
    ],
)
def test_fields_that_would_change_the_answer_are_refused(server, field, value):
    """Item 14: a field the server would silently ignore is a 400 that names it."""
    error = assert_openai_error(post(server, CHAT, chat(SHORT, **{field: value})), 400, field)
    assert "not supported" in error["message"]


SHORT = " ".join(f"w{6 + i}" for i in range(12))


def test_fields_that_change_nothing_are_accepted(server):
    harmless = {"tools": [], "response_format": {"type": "text"}, "presence_penalty": 0, "user": "u1"}
    assert post(server, CHAT, chat(SHORT, **harmless)).status_code == 200


def test_bearer_is_case_insensitive(models):
    """Item 14: the scheme of ``Authorization`` is case-insensitive (RFC 7235)."""
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, api_key=KEY)
    with running(app) as base:
        for header in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"):
            assert httpx.get(base + "/v1/models", headers={"Authorization": header}).status_code == 200
        for header in (f"Basic {KEY}", KEY, f"Bearer {KEY}x", "Bearer"):
            assert httpx.get(base + "/v1/models", headers={"Authorization": header}).status_code == 401


RAISING = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('No system role here') }}"
    "{% endif %}w3 {{ m['content'] }} w4 {% endfor %}w5"
)
TRIMMING = "{% for m in messages %}w3 {{ m['content'] | trim }} w4 {% endfor %}w5"


def with_template(template: str):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_chat_templates_that_refuse_or_trim(models):
    """Item 6: a template's ``raise_exception`` is a 400 with its message (it was a 500); a template that
    trims contents (Llama 3, Gemma) is answered (it was a 400)."""
    target, draft, _ = models
    refusing = create_app(
        target, draft, with_template(RAISING), model_name=MODEL, defaults={"method": "full"}
    )
    with running(refusing) as base:
        body = {"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "system", "content": "w7"}, {"role": "user", "content": "w8 w9"}]}  # fmt: skip
        error = assert_openai_error(post(base, CHAT, body), 400, "messages")
        assert "No system role here" in error["message"]
    trimming = create_app(
        target, draft, with_template(TRIMMING), model_name=MODEL, defaults={"method": "full"}
    )
    with running(trimming) as base:
        response = post(base, CHAT, {"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "user", "content": "w8 w9\n"}]})  # fmt: skip
        assert response.status_code == 200, response.text


def test_a_lone_surrogate_is_a_400(server):
    raw = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "w7 \\ud800"}]}'
    assert_openai_error(post(server, CHAT, raw), 400, "messages.0.content")
    raw = b'{"model": "tiny", "max_tokens": 2, "prompt": "w7 \\udfff w8"}'
    assert_openai_error(post(server, TEXT, raw), 400, "prompt")


@contextmanager
def slow_server(models, **limits) -> Iterator[str]:
    """One generation at a time; the target sleeps 50 ms before each forward pass."""
    _, draft, tokenizer = models
    target = tiny_model("qwen2", seed=0)
    target.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    app = create_app(
        target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_batch=1,
        max_new_tokens_limit=1000, **limits,
    )  # fmt: skip
    with running(app) as base:
        yield base


def test_a_client_leaving_the_queue_frees_its_place_at_once(models):
    """Item 12: a queued client that goes away frees its place then, not when it reaches a slot."""
    long = {"model": MODEL, "prompt": "w7 w8 w9", "max_tokens": 300}
    with slow_server(models, max_queue=1) as base, ThreadPoolExecutor(1) as pool:
        running_one = pool.submit(post, base, TEXT, long)
        wait_until_running(base)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(base + TEXT, json=long, timeout=0.6)  # queued, then gone
        time.sleep(0.6)  # a poll interval or two to notice
        health = httpx.get(base + "/health").json()
        assert health["running"] == 1 and health["waiting"] == 0, health
        with pytest.raises(httpx.TimeoutException):  # queued (not a 429), then gone too
            httpx.post(base + TEXT, json=long, timeout=0.6)
        running_one.cancel()


class WatchedTokenizer:
    """Wraps a tokenizer's class to note, for each templating and tokenizing call, whether it ran on a
    thread with a running event loop."""

    @staticmethod
    def of(tokenizer, calls: list[bool]):
        def on_loop() -> bool:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return False
            return True

        base = type(tokenizer)

        class Watched(base):  # type: ignore[misc, valid-type]
            def __call__(self, *args, **kwargs):
                calls.append(on_loop())
                return base.__call__(self, *args, **kwargs)

            def apply_chat_template(self, *args, **kwargs):
                calls.append(on_loop())
                return base.apply_chat_template(self, *args, **kwargs)

        watched = copy.deepcopy(tokenizer)
        watched.__class__ = Watched
        return watched


def test_templating_and_tokenizing_run_off_the_event_loop(models):
    """Item 5: a large body's chat template and tokenization must not stall the event loop (streams,
    disconnect polling, /health)."""
    target, draft, tokenizer = models
    calls: list[bool] = []
    app = create_app(
        target, draft, WatchedTokenizer.of(tokenizer, calls), model_name=MODEL, defaults={"method": "full"}
    )
    with running(app) as base:
        assert post(base, CHAT, chat(SHORT)).status_code == 200
        assert post(base, TEXT, {"model": MODEL, "prompt": SHORT, "max_tokens": 2}).status_code == 200
    assert calls and not any(calls), f"{sum(calls)} of {len(calls)} calls ran on the event loop"


def test_a_full_queue_answers_429_before_reading_the_prompt(models):
    """Item 5: 429 is decided before any templating or tokenizing."""
    _, draft, tokenizer = models
    target = tiny_model("qwen2", seed=0)
    target.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    calls: list[bool] = []
    app = create_app(
        target, draft, WatchedTokenizer.of(tokenizer, calls), model_name=MODEL, defaults={"method": "full"},
        max_batch=1, max_queue=0, max_new_tokens_limit=1000,
    )  # fmt: skip
    with running(app) as base, ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post, base, TEXT, {"model": MODEL, "prompt": "w7 w8", "max_tokens": 100})
        wait_until_running(base)
        before = len(calls)
        refused = post(base, CHAT, chat(" ".join(["w7"] * 5000)))
        error = assert_openai_error(refused, 429)
        assert error["code"] == "rate_limit_exceeded" and int(refused.headers["Retry-After"]) >= 1
        assert len(calls) == before, "the refused prompt was not templated or tokenized"
        busy.cancel()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, OSError):
        return False


def test_connections_whose_headers_do_not_arrive_are_closed(models):
    """Item 13: idle and half-sent connections are closed after the header timeout."""
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"})
    with running(app, header_timeout=1.0) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        kept_alive = http.client.HTTPConnection("127.0.0.1", port)
        kept_alive.request("GET", "/health")
        assert kept_alive.getresponse().read()
        assert closed_by_server(idle, 5) and closed_by_server(trickle, 5)
        assert closed_by_server(kept_alive.sock, 5), "after a response, the next headers get the deadline"
        assert httpx.get(base + "/health").status_code == 200
        for sock in (idle, trickle):
            sock.close()


def test_the_connection_limit_answers_503_beyond_it(models):
    """Item 13: ``draftwise serve`` limits connections and header time by default (flags change them);
    beyond ``limit_concurrency`` open connections, new requests get 503, not a hang."""
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args([])
    assert 1 <= args.limit_concurrency <= 10_000 and 0 < args.header_timeout <= 60
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--limit-concurrency", "3"])
    assert args.limit_concurrency == 3
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"})
    with running(app, limit_concurrency=3) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)
        assert httpx.get(base + "/health").status_code == 503
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(base + "/health").status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    """Item 13: a client trickling its body cannot hold a request open."""
    sent: list[dict] = []

    async def app(scope, receive, send):  # pragma: no cover - never reached
        raise AssertionError("the app ran")

    async def never() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/v1/completions", "headers": [(b"content-length", b"100")]}
    asyncio.run(BodyLimit(app, max_bytes=1000, timeout=0.2)(scope, never, send))
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


# ---- upstream mode ----


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, str]]:
    record = Recorder()
    with running(record, lifespan="off") as base:
        yield record, base


def front_app(models, upstream: str, **kwargs):
    _, draft, tokenizer = models
    return create_app(None, draft, tokenizer, upstream=upstream, upstream_timeout=10, **kwargs)


def raw_get(base: str, path: str) -> int:
    """GET ``path`` exactly as written (no client-side normalisation of dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path)
    status = connection.getresponse().status
    connection.close()
    return status


def test_a_model_id_never_builds_an_upstream_url(models, recorder):
    """Item 2: ``/v1/models/%2e%2e/%2e%2e/slots`` reached the upstream's ``/slots`` with the operator's
    key; ids are looked up in the upstream's list instead."""
    record, up = recorder
    with running(front_app(models, f"{up}/v1", upstream_api_key=UPSTREAM_KEY)) as base:
        record.seen.clear()
        for path in (
            "/v1/models/%2e%2e/%2e%2e/slots",
            "/v1/models/../../slots",
            "/v1/models/a/..%2F..%2Fslots",
        ):
            assert 400 <= raw_get(base, path) < 500, path
        assert not any("slots" in seen["path"] for seen in record.seen), record.seen
        assert httpx.get(base + "/v1/models/org%2Ftiny-2").json()["id"] == "org/tiny-2"
        assert_openai_error(httpx.get(base + "/v1/models/nope"), 404, "model")
        assert {seen["path"] for seen in record.seen} <= {"/v1/models"}


def test_a_prompt_beyond_the_drafts_context_is_refused_before_any_work(models, recorder):
    """Item 3: upstream mode checks the draft's context (1,024 tokens here) before pre-filling."""
    _, draft, _ = models
    record, up = recorder
    with running(front_app(models, f"{up}/v1")) as base, counting(draft) as forwards:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": " ".join(["w7"] * 2000)}],
            "draftwise": SPECPC,
        }
        error = assert_openai_error(post(base, CHAT, body), 400, "messages.0.content")
        assert error["code"] == "context_length_exceeded" and "draft's context" in error["message"]
        assert forwards.count == 0


def test_the_upstream_memory_limit_counts_the_drafts_cache(models, recorder):
    """Item 3: ``max_request_bytes`` applies in upstream mode: the draft's KV cache and weights."""
    _, draft, _ = models
    record, up = recorder
    limit = kv_cache_bytes(draft, 400)
    with running(front_app(models, f"{up}/v1", max_request_bytes=limit)) as base, counting(draft) as forwards:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": " ".join(["w7"] * 600)}],
            "draftwise": SPECPC,
        }
        error = assert_openai_error(post(base, CHAT, body), 400, "messages.0.content")
        assert error["code"] == "request_too_large" and forwards.count == 0


def test_only_the_operators_key_goes_upstream(models, recorder):
    """Item 4: a client's ``Authorization`` (this server's own key) is never forwarded."""
    record, up = recorder
    body = {"model": MODEL, "prompt": "w7 w8", "draftwise": {"method": "full"}}
    with running(front_app(models, f"{up}/v1", api_key=KEY)) as base:
        record.seen.clear()
        assert post(base, TEXT, body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert record.seen[-1]["authorization"] is None
    with running(front_app(models, f"{up}/v1", api_key=KEY, upstream_api_key=UPSTREAM_KEY)) as base:
        assert post(base, TEXT, body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert record.seen[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_client_leaving_a_forward_cancels_the_upstream_request(models, recorder):
    """Item 7: the upstream request of a non-streaming forward is cancelled when the client goes."""
    record, up = recorder
    with running(front_app(models, f"{up}/slow/v1")) as base:
        record.cancelled = 0
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                base + TEXT,
                json={"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}},
                timeout=0.5,
            )
        deadline = time.monotonic() + 3
        while record.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.cancelled == 1


def test_forwarded_requests_are_bounded(models, recorder):
    """Item 7: beyond ``max_forwarded`` requests in flight upstream, a 429 with ``Retry-After``."""
    record, up = recorder
    body = {"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}}
    with running(front_app(models, f"{up}/slow/v1", max_forwarded=2)) as base, ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: post(base, TEXT, body), range(5)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(429) >= 3 and set(statuses) <= {200, 429}, statuses
    busy = next(r for r in responses if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1 and busy.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    "raw, param",
    [
        (
            b'{"model": "tiny", "messages": [{"role": "user"}], "draftwise": {"method": "specpc"}}',
            "messages.0.content",
        ),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "w7 \\ud800"}]}', "messages.0.content"),
        (b'{"model": "tiny", "prompt": "\\ud800 w7", "draftwise": {"method": "full"}}', "prompt"),
    ],
    ids=["no content", "lone surrogate", "lone surrogate, full"],
)
def test_malformed_client_input_in_upstream_mode_is_a_400(models, recorder, raw, param):
    """Item 9: these were 500s (a KeyError, a TypeError)."""
    _, up = recorder
    with running(front_app(models, f"{up}/v1")) as base:
        assert_openai_error(post(base, CHAT if b"messages" in raw else TEXT, raw), 400, param)


def test_upstream_json_with_nan_is_a_502(models, recorder):
    """Item 9: NaN is not JSON; it was a 500 when the answer was re-encoded."""
    _, up = recorder
    with running(front_app(models, f"{up}/nan/v1")) as base:
        error = assert_openai_error(
            post(base, TEXT, {"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}}), 502
        )
        assert error["code"] == "upstream_bad_response"


def test_upstream_details_stay_in_the_log(models, recorder):
    """Item 10: neither /health nor errors show the upstream's URL or its error text."""
    _, up = recorder
    with running(front_app(models, f"{up}/fail/v1")) as base:
        response = post(base, TEXT, {"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}})
        assert_openai_error(response, 502)
        assert SECRET not in response.text and up not in response.text
        assert up not in httpx.get(base + "/health").text


def test_a_gzipped_upstream_stream_is_relayed_decoded(models, recorder):
    """Item 11: the relay sends the decoded events, not the upstream's compressed bytes."""
    _, up = recorder
    with running(front_app(models, f"{up}/gzip/v1")) as base:
        response = post(
            base, TEXT, {"model": MODEL, "prompt": "w7", "stream": True, "draftwise": {"method": "full"}}
        )
        assert response.status_code == 200
        assert response.text.startswith("data: ") and response.text.rstrip().endswith("data: [DONE]")


def test_a_client_leaving_the_compression_queue_frees_its_place(models, recorder):
    """Item 12, upstream mode: a client waiting for a compression slot that goes away leaves the queue."""
    _, _, tokenizer = models
    _, up = recorder
    draft = tiny_model("qwen2", seed=1, layers=2)
    draft.register_forward_pre_hook(lambda module, args: time.sleep(0.2))
    app = create_app(None, draft, tokenizer, upstream=f"{up}/v1", max_concurrency=1, max_queue=1)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "draftwise": {**SPECPC, "lookahead": 8},
    }
    with running(app) as base, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, base, CHAT, body)
        wait_until_running(base)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(base + CHAT, json=body, timeout=0.5)  # queued, then gone
        time.sleep(0.6)
        assert httpx.get(base + "/health").json()["waiting"] == 0
        assert first.result().status_code == 200


def test_upstream_tokenizing_runs_off_the_event_loop(models, recorder):
    """Item 5, upstream mode: counting and compressing the prompt run in threads."""
    _, draft, tokenizer = models
    _, up = recorder
    calls: list[bool] = []
    app = create_app(None, draft, WatchedTokenizer.of(tokenizer, calls), upstream=f"{up}/v1")
    with running(app) as base:
        for options in ({"method": "full"}, SPECPC):
            body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "draftwise": options}
            assert post(base, CHAT, body).status_code == 200
    assert calls and not any(calls), f"{sum(calls)} of {len(calls)} calls ran on the event loop"


def test_a_trimming_template_keeps_the_cross_tokenizer_mapping():
    """Item 6, in the library: content coordinates are the contents as given; a trimmed content maps
    its remaining characters, and a content a template rewrites entirely is kept whole, not an error."""
    from draftwise.mapping import render, transfer_scores

    messages = [{"role": "user", "content": "  w7 w8 w9\n"}, {"role": "user", "content": "w10"}]
    trimmed, plain = render(with_template(TRIMMING), messages), render(tiny_tokenizer(), messages)
    assert trimmed.content_length == plain.content_length == len("  w7 w8 w9\n") + len("w10")
    words = [s for s in trimmed.content_spans() if s is not None]
    assert words == [(2, 4), (5, 7), (8, 10), (11, 14)], "each word at its place in the contents as given"
    scores = torch.arange(plain.ids.shape[1], dtype=torch.float32)
    moved = transfer_scores(plain, scores, trimmed)
    assert torch.isfinite(moved[[i for i, s in enumerate(trimmed.content_spans()) if s]]).all()
    shouting = render(
        with_template("{% for m in messages %}w3 {{ m['content'] | upper }} w4 {% endfor %}"), messages
    )
    assert all(span is None for span in shouting.content_spans()), "not located: kept as template text"
