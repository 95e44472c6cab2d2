"""``draftwise serve --upstream``: SpecPC with the draft alone, in front of another OpenAI-compatible server.

The upstream here is a ``draftwise serve`` in normal mode with the tiny target (standing in for vLLM or
llama.cpp); the front runs only the tiny draft. Both run with uvicorn on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import tiny_model, tiny_tokenizer
from serving import running

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
try:
    import httpx2 as httpx  # the name httpx is published under in this environment
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

import draftwise.serve.upstream  # noqa: E402
import draftwise.windowed  # noqa: E402
from draftwise.methods import SpecPC  # noqa: E402
from draftwise.serve import add_serve_arguments, create_app  # noqa: E402
from draftwise.text_compression import compress_text  # noqa: E402

MODEL = "tiny"
KEY = "upstream-key"
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
PROMPT = " ".join(f"w{6 + (i * 7) % 80}" for i in range(200))  # 200 words, 200 tokens
SPECPC = {"method": "specpc", "budget": 40, "window": 8}


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def models():
    return tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, layers=2), tiny_tokenizer()


@pytest.fixture(scope="module")
def upstream(models) -> Iterator[str]:
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full", "max_tokens": 8})
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def front(models, upstream) -> Iterator[str]:
    _, draft, tokenizer = models
    app = create_app(None, draft, tokenizer, upstream=f"{upstream}/v1", upstream_timeout=60)
    with running(app) as base:
        yield base


def client_of(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def chat(content: str = PROMPT) -> list[dict]:
    return [{"role": "system", "content": "w5 w6"}, {"role": "user", "content": content}]


@pytest.fixture(scope="module")
def compressed(models):
    _, draft, tokenizer = models
    return compress_text(draft, tokenizer, PROMPT, SpecPC(budget=40, window=8))


@pytest.fixture(scope="module")
def front_chat(front):
    raw = client_of(front).chat.completions.with_raw_response.create(
        model=MODEL, messages=chat(), max_tokens=6, temperature=0, extra_body={"draftwise": SPECPC}
    )
    return raw.headers, raw.parse()


def test_chat_is_compressed_then_forwarded(upstream, front_chat, compressed):
    assert compressed.tokens == 200 and compressed.tokens_kept == 40
    headers, out = front_chat
    assert headers["x-draftwise-prompt-tokens"] == "200"
    assert headers["x-draftwise-prompt-tokens-kept"] == "40"
    direct = client_of(upstream).chat.completions.create(
        model=MODEL, messages=chat(compressed.text), max_tokens=6, temperature=0
    )
    assert out.choices[0].message.content == direct.choices[0].message.content
    assert out.choices[0].message.content.strip()
    assert out.usage.prompt_tokens == direct.usage.prompt_tokens  # the upstream read the short prompt
    extra = out.usage.model_extra
    assert extra["prompt_tokens_before"] == 200 and extra["prompt_tokens_kept"] == 40
    assert extra["method"] == "full"  # the upstream's own statistics pass through


def test_chat_stream_passes_chunks_through(front, front_chat):
    _, whole = front_chat
    raw = client_of(front).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=chat(),
        max_tokens=6,
        temperature=0,
        stream=True,
        extra_body={"draftwise": SPECPC},
    )
    assert raw.headers["x-draftwise-prompt-tokens-kept"] == "40"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_completions(front, upstream, compressed):
    raw = client_of(front).completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, extra_body={"draftwise": SPECPC}
    )
    out = raw.parse()
    assert raw.headers["x-draftwise-prompt-tokens-kept"] == "40"
    direct = client_of(upstream).completions.create(
        model=MODEL, prompt=compressed.text, max_tokens=4, temperature=0
    )
    assert out.choices[0].text == direct.choices[0].text
    assert out.usage.prompt_tokens == 40 and out.usage.model_extra["prompt_tokens_before"] == 200
    assert out.usage.model_extra["prompt_tokens_original"] == 200  # the upstream's 40 + the 160 dropped


def test_a_streamed_usage_chunk_counts_both_prompts(front):
    """With ``stream_options.include_usage`` the upstream's last chunk carries the usage: the front
    adds the prompt's original and kept counts to it, as to a whole answer, and leaves the other
    chunks as they came."""
    stream = client_of(front).chat.completions.create(
        model=MODEL, messages=chat(), max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"draftwise": SPECPC},
    )  # fmt: skip
    chunks = list(stream)
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == 6
    assert usage.model_extra["prompt_tokens_before"] == 200 and usage.model_extra["prompt_tokens_kept"] == 40
    assert usage.model_extra["prompt_tokens_original"] == usage.prompt_tokens + 160
    assert all(c.usage is None for c in chunks[:-1])


def test_full_forwards_unchanged(front, upstream):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    raw = client_of(front).completions.with_raw_response.create(
        **kwargs, extra_body={"draftwise": {"method": "full"}}
    )
    out = raw.parse()
    direct = client_of(upstream).completions.create(**kwargs)
    assert out.choices[0].text == direct.choices[0].text and out.usage.prompt_tokens == 200
    assert raw.headers["x-draftwise-prompt-tokens"] == raw.headers["x-draftwise-prompt-tokens-kept"] == "200"


def test_models_are_proxied(front):
    assert [m.id for m in client_of(front).models.list().data] == [MODEL]


def test_upstream_4xx_is_passed_through(front):
    body = {"model": "gpt-5", "messages": chat("w7 w8"), "max_tokens": 2}
    response = httpx.post(front + CHAT, json=body, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "options, param",
    [
        ({"method": "nope"}, "draftwise.method"),
        ({"method": "speckv", "budget": 48}, "draftwise.method"),
        ({"method": "specpc", "budget": -1}, "draftwise.budget"),
        (
            {"method": "specpc", "budget": 40, "window": 8, "neighbourhood": 20_000_000},
            "draftwise.neighbourhood",
        ),
        ({"method": "specpc", "budget": 40, "window": 8, "kernel": 50_000_000}, "draftwise.kernel"),
        ({"method": "specpc", "budget": 40, "window": 8, "lookahead": 2000}, "draftwise.lookahead"),
        ({"method": "specpc", "budget": 40, "window": 8, "weighted_query": "no"}, "draftwise.weighted_query"),
    ],
    ids=["unknown", "speckv", "bad budget", "neighbourhood", "kernel", "lookahead", "a string for a flag"],
)
def test_bad_method_is_a_400(front, options, param):
    body = {"model": MODEL, "messages": chat(), "draftwise": options}
    response = httpx.post(front + CHAT, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_token_id_prompt_cannot_be_compressed(front):
    body = {"model": MODEL, "prompt": [7, 8, 9], "draftwise": SPECPC}
    response = httpx.post(front + TEXT, json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"


def test_upstream_down_is_a_502(models):
    _, draft, tokenizer = models
    app = create_app(None, draft, tokenizer, upstream=f"http://127.0.0.1:{closed_port()}/v1")
    with running(app) as base:
        body = {"model": MODEL, "messages": chat(), "draftwise": SPECPC}
        response = httpx.post(base + CHAT, json=body, timeout=30)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "upstream_unreachable"
        assert "127.0.0.1" not in response.text, "the upstream's address stays with the operator"
        assert httpx.get(base + "/v1/models", timeout=30).status_code == 502
        health = httpx.get(base + "/health", timeout=30)
        assert health.json()["status"] == "ok" and "127.0.0.1" not in health.text


async def misbehaving(scope, receive, send) -> None:
    """A raw ASGI upstream: /slow/... sleeps, /garbage/... answers non-JSON, /broken/... a 500."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/slow"):
        await asyncio.sleep(1.5)
    status, body = (500, b'{"error": {"message": "it broke"}}') if path.startswith("/broken") else (200, b"")
    if path.startswith("/garbage"):
        body = b"<html>surely not JSON</html>"
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/html")]}
    )
    await send({"type": "http.response.body", "body": body or b'{"ok": true}'})


@pytest.fixture(scope="module")
def bad_upstream() -> Iterator[str]:
    with running(misbehaving, lifespan="off") as base:
        yield base


@pytest.mark.parametrize(
    "prefix, status, words",
    [("slow", 504, "in time"), ("garbage", 502, "valid JSON"), ("broken", 502, "failed (status 500)")],
)
def test_misbehaving_upstream(models, bad_upstream, prefix, status, words):
    _, draft, tokenizer = models
    app = create_app(None, draft, tokenizer, upstream=f"{bad_upstream}/{prefix}/v1", upstream_timeout=0.5)
    with running(app) as base:
        body = {"model": MODEL, "messages": chat(), "draftwise": SPECPC}
        response = httpx.post(base + CHAT, json=body, timeout=30)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"]
        assert "it broke" not in response.text and "html" not in response.text, (
            "upstream text stays in the log"
        )
        assert httpx.get(base + "/health", timeout=30).status_code == 200


def test_upstream_api_key(models):
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, api_key=KEY)
    with running(app) as up:
        body = {"model": MODEL, "messages": chat("w7 w8 w9"), "max_tokens": 2}
        keyed = create_app(None, draft, tokenizer, upstream=f"{up}/v1", upstream_api_key=KEY)
        with running(keyed) as base:
            response = httpx.post(
                base + CHAT, json=body, headers={"Authorization": "Bearer other"}, timeout=30
            )
            assert response.status_code == 200, response.text
        plain = create_app(None, draft, tokenizer, upstream=f"{up}/v1", upstream_model=MODEL)
        with running(plain) as base:
            assert httpx.post(base + CHAT, json=body, timeout=30).status_code == 401  # passed through
            kept = httpx.post(base + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
            assert kept.status_code == 401, "a client's Authorization is never forwarded"


def test_compression_queue_limit_answers_429(models, upstream):
    _, _, tokenizer = models
    draft = tiny_model("qwen2", seed=1, layers=2)
    draft.register_forward_pre_hook(lambda module, args: time.sleep(0.3))
    app = create_app(None, draft, tokenizer, upstream=f"{upstream}/v1", max_queue=0)
    body = {"model": MODEL, "messages": chat(), "max_tokens": 2, "draftwise": SPECPC}
    with running(app) as base, ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: httpx.post(base + CHAT, json=body, timeout=60), range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}, statuses
    busy = next(r for r in responses if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1 and busy.json()["error"]["code"] == "rate_limit_exceeded"


def test_bad_upstream_settings(models):
    target, draft, tokenizer = models
    with pytest.raises(ValueError, match="target=None"):
        create_app(target, draft, tokenizer, upstream="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="needs a draft"):
        create_app(None, None, tokenizer, upstream="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="specpc or full"):
        create_app(None, draft, tokenizer, upstream="http://127.0.0.1:1/v1", defaults={"method": "speckv"})


def test_serve_arguments():
    parser = add_serve_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--upstream", "http://h:1/v1", "--upstream-model", "m", "--upstream-timeout", "5"]
    )
    assert (args.upstream, args.upstream_model, args.upstream_timeout) == ("http://h:1/v1", "m", 5.0)
    assert args.method is None  # specpc in upstream mode, speckv otherwise
    assert json.dumps(vars(parser.parse_args([]))["upstream"]) == "null"


def test_a_sparse_compression_has_the_draft_to_itself(models, upstream, monkeypatch):
    """SpecPC's sparse pre-fill switches the draft's attention for every thread: while it runs, no other
    compression may use the draft. Six requests at once, sparse and plain in turn, on four worker
    threads: plain ones overlap, a sparse one never overlaps another, and each gives the text it gives
    alone."""
    _, _, tokenizer = models
    draft = tiny_model("qwen2", seed=1, layers=2)
    sparse_options = {"sparse_prefill": True, "vertical": 16, "slash": 16}
    sparse = {**SPECPC, **sparse_options}
    alone = {
        on: compress_text(
            draft, tokenizer, PROMPT, SpecPC(budget=40, window=8, **(sparse_options if on else {}))
        )
        for on in (True, False)
    }
    assert alone[True].text != alone[False].text
    draft.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    running_now, overlaps, texts = [], [], []
    plain_compress = draftwise.serve.upstream.compress_text

    def recorded(model, tokenizer, text, method, max_bytes):
        running_now.append(method.sparse_prefill)
        overlaps.append(list(running_now))
        try:
            out = plain_compress(model, tokenizer, text, method, max_bytes)
        finally:
            running_now.remove(method.sparse_prefill)
        texts.append((method.sparse_prefill, out.text))
        return out

    monkeypatch.setattr(draftwise.serve.upstream, "compress_text", recorded)
    app = create_app(None, draft, tokenizer, upstream=f"{upstream}/v1", max_concurrency=4)
    bodies = [
        {"model": MODEL, "messages": chat(PROMPT), "max_tokens": 2, "draftwise": sparse if i % 2 else SPECPC}
        for i in range(6)
    ]
    with running(app) as base, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: httpx.post(base + CHAT, json=body, timeout=60), bodies))
    assert [r.status_code for r in responses] == [200] * 6
    assert len(texts) == 6 and all(text == alone[sparse_on].text for sparse_on, text in texts)
    assert any(len(seen) > 1 for seen in overlaps), "plain compressions run at once"
    assert all(len(seen) == 1 for seen in overlaps if True in seen), "a sparse one runs alone"


def test_a_windowed_compression_has_the_draft_to_itself(upstream, monkeypatch):
    """A draft with sliding-window layers pre-fills through the windowed override (an attention switch
    for every thread): four plain SpecPC requests at once never overlap on it, and each gives the text
    it gives alone. (Overlapping, another thread's layer can meet the switch half undone: an error.)"""
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {"cpu": 64})
    tokenizer = tiny_tokenizer()
    draft = tiny_model("gemma3_text", seed=1, attn="sdpa")  # sliding window 16
    alone = compress_text(draft, tokenizer, PROMPT, SpecPC(budget=40, window=8)).text
    draft.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    running_now, overlaps, texts = [], [], []
    plain_compress = draftwise.serve.upstream.compress_text

    def recorded(*args):
        running_now.append(1)
        overlaps.append(len(running_now))
        try:
            out = plain_compress(*args)
        finally:
            running_now.pop()
        texts.append(out.text)
        return out

    monkeypatch.setattr(draftwise.serve.upstream, "compress_text", recorded)
    app = create_app(None, draft, tokenizer, upstream=f"{upstream}/v1", max_concurrency=4)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "draftwise": SPECPC}
    with running(app) as base, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: httpx.post(base + TEXT, json=body, timeout=60), range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert overlaps == [1] * 4
    assert draft.config._attn_implementation == "sdpa"
    assert texts == [alone] * 4
