"""``draftwise serve``: the OpenAI-compatible server, run by uvicorn on loopback with tiny random models."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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

from draftwise.checks import kv_cache_bytes  # noqa: E402
from draftwise.serve import add_serve_arguments, create_app, serve  # noqa: E402
from draftwise.serve.jobs import Defaults  # noqa: E402
from draftwise.serve.main import server_settings  # noqa: E402
from draftwise.serve.schemas import DraftwiseOptions  # noqa: E402
from draftwise.serve.settings import DEFAULT_MAX_BATCH, ServerSettings  # noqa: E402
from draftwise.text_stream import TextStream  # noqa: E402

MODEL = "tiny"
KEY = "secret-key"
LIMIT = 64  # max_new_tokens_limit of the test servers
BODY_LIMIT = 64 * 1024
PROMPT = " ".join(f"w{6 + i % 80}" for i in range(150))
SHORT = " ".join(f"w{6 + i % 80}" for i in range(12))


@pytest.fixture(scope="module")
def models():
    return tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, layers=2), tiny_tokenizer()


@pytest.fixture(scope="module")
def url(models) -> Iterator[str]:
    target, draft, tokenizer = models
    app = create_app(
        target,
        draft,
        tokenizer,
        model_name=MODEL,
        defaults={"method": "full", "max_tokens": 8},
        max_body_bytes=BODY_LIMIT,
        max_new_tokens_limit=LIMIT,
    )
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(content: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def greedy(client) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=MODEL, messages=chat(), max_tokens=6, temperature=0)


# ---- the OpenAI client ----


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat(greedy):
    choice = greedy.choices[0]
    assert greedy.object == "chat.completion" and greedy.model == MODEL
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = greedy.usage
    assert usage.prompt_tokens > 150 and 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra
    assert extra["method"] == "full" and extra["kv_pairs_kept"] == usage.prompt_tokens
    assert extra["kv_bytes"] == extra["kv_bytes_full"] > 0 and extra["prefill_seconds"] >= 0


def test_completion(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert out.object == "text_completion" and out.choices[0].text.strip()
    assert out.usage.prompt_tokens == 150 and out.usage.completion_tokens <= 4


def test_chat_stream_matches_non_streaming(client, greedy):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=chat(),
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [greedy.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == greedy.usage.completion_tokens


def test_raw_stream_is_openai_sse(url):
    body = {"model": MODEL, "messages": chat(SHORT), "max_tokens": 3, "stream": True}
    response = httpx.post(url + CHAT, json=body, timeout=30)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"]
    assert len({c["id"] for c in chunks}) == 1


def test_completion_stream(client):
    whole = client.completions.create(model=MODEL, prompt=SHORT, max_tokens=5, temperature=0)
    chunks = list(
        client.completions.create(model=MODEL, prompt=SHORT, max_tokens=5, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_draftwise_field_picks_method_and_budget(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=chat(),
        max_tokens=4,
        temperature=0,
        extra_body={"draftwise": {"method": "speckv", "budget": 48, "window": 8}},
    )
    extra = out.usage.model_extra
    assert extra["method"] == "speckv" and extra["kv_pairs_kept"] == 48
    assert extra["kv_bytes"] < extra["kv_bytes_full"]


def test_stop_string_cuts_the_text(client, greedy):
    text = greedy.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, f"the tiny model ended early: {text!r}"
    stop = words[2]
    expected = text[: text.index(stop)]
    kwargs = dict(model=MODEL, messages=chat(), max_tokens=6, temperature=0, stop=[stop])
    out = client.chat.completions.create(**kwargs)
    assert out.choices[0].message.content == expected and out.choices[0].finish_reason == "stop"
    extras = out.usage.model_extra
    assert extras["prompt_tokens_kept"] >= 1 and "time_to_first_token" in extras, "stats survive the stop"
    assert out.usage.completion_tokens < greedy.usage.completion_tokens
    streamed = client.chat.completions.create(**kwargs, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_bad_request_through_the_client_is_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=chat(), extra_body={"draftwise": {"budget": -1}})
    assert "budget" in str(caught.value)


# ---- bad input, over plain HTTP ----

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
BAD = [
    ("malformed JSON", CHAT, b'{"model": "tiny", "messages": [', 400, None),
    ("unknown method", CHAT, {"draftwise": {"method": "nope"}}, 400, "draftwise.method"),
    ("budget -1", CHAT, {"draftwise": {"method": "speckv", "budget": -1}}, 400, "draftwise.budget"),
    (
        "budget below window",
        CHAT,
        {"draftwise": {"method": "speckv", "budget": 8, "window": 16}},
        400,
        "draftwise.budget",
    ),
    ("unknown option", CHAT, {"draftwise": {"method": "full", "budget": 9}}, 400, "draftwise.budget"),
    ("empty messages", CHAT, {"messages": []}, 400, "messages"),
    ("empty content", CHAT, {"messages": [{"role": "user", "content": " "}]}, 400, "messages"),
    ("no messages", CHAT, {"messages": None}, 400, "messages"),
    ("max_tokens 0", CHAT, {"max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens too large", CHAT, {"max_tokens": LIMIT + 1}, 400, "max_tokens"),
    ("max_tokens a string", CHAT, {"max_tokens": "many"}, 400, "max_tokens"),
    ("n 2", CHAT, {"n": 2}, 400, "n"),
    ("negative temperature", CHAT, {"temperature": -1}, 400, "temperature"),
    ("unknown model", CHAT, {"model": "gpt-5"}, 404, "model"),
    ("beyond context", CHAT, {"messages": chat(" ".join(["w7"] * 1100))}, 400, "messages"),
    ("empty prompt", TEXT, {"prompt": ""}, 400, "prompt"),
    ("token id out of range", TEXT, {"prompt": [5, 100000]}, 400, "prompt"),
    ("batch of prompts", TEXT, {"prompt": ["w7", "w8"]}, 400, "prompt"),
    ("oversized body", TEXT, {"prompt": "w7 " * BODY_LIMIT}, 413, None),
]


@pytest.mark.parametrize("path, body, status, param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_an_openai_error(url, path, body, status, param):
    if isinstance(body, dict):
        default = {"messages": chat(SHORT)} if path == CHAT else {"prompt": SHORT}
        body = json.dumps({"model": MODEL, "max_tokens": 4, **default, **body}).encode()
    start = time.monotonic()
    response = httpx.post(url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param == "model":
        assert error["code"] == "model_not_found"
    if "context" in error["message"]:
        assert error["code"] == "context_length_exceeded"
        assert time.monotonic() - start < 5  # refused before any generation work


def test_health_and_unknown_route(url):
    assert httpx.get(url + "/health").json()["status"] == "ok"
    response = httpx.get(url + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["message"]


# ---- the API key ----


def test_api_key(models):
    target, draft, tokenizer = models
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, api_key=KEY)
    with running(app) as base:
        assert httpx.get(base + "/v1/models").status_code == 401
        wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        body = {"model": MODEL, "messages": chat(SHORT)}
        assert httpx.post(base + CHAT, json=body).status_code == 401
        assert httpx.get(base + "/health").status_code == 200
        good = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in good.models.list().data] == [MODEL]
        out = good.chat.completions.create(model=MODEL, messages=chat(SHORT), max_tokens=2)
        assert out.usage.completion_tokens >= 1


# ---- admission: the queue limit and disconnecting clients ----


@contextmanager
def slow_server(models, max_queue: int, seconds_per_forward: float = 0.05) -> Iterator[str]:
    """A server whose target sleeps before every forward pass, with one generation at a time."""
    _, draft, tokenizer = models
    target = tiny_model("qwen2", seed=0)
    target.register_forward_pre_hook(lambda module, args: time.sleep(seconds_per_forward))
    app = create_app(
        target,
        draft,
        tokenizer,
        model_name=MODEL,
        defaults={"method": "full"},
        max_batch=1,
        max_queue=max_queue,
        max_new_tokens_limit=1000,
    )
    with running(app) as base:
        yield base


def test_queue_limit_answers_429(models):
    body = {"model": MODEL, "messages": chat(SHORT), "max_tokens": 30}
    with slow_server(models, max_queue=1) as base, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: httpx.post(base + CHAT, json=body, timeout=60), range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    assert statuses.count(200) <= 2  # one running, one waiting
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
        else:
            assert response.json()["usage"]["completion_tokens"] >= 1


def wait_for_free_slot(base: str, seconds: float = 10) -> httpx.Response:
    """Post a short request until it is not refused as busy, for at most ``seconds``."""
    short = {"model": MODEL, "messages": chat(SHORT), "max_tokens": 2}
    deadline = time.monotonic() + seconds
    while (response := httpx.post(base + CHAT, json=short, timeout=60)).status_code == 429:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return response


def test_disconnect_mid_stream_frees_the_slot(models):
    long = {"model": MODEL, "messages": chat(SHORT), "max_tokens": 400, "stream": True}
    with slow_server(models, max_queue=0) as base:
        with httpx.Client(timeout=60) as http, http.stream("POST", base + CHAT, json=long) as r:
            assert r.status_code == 200
            assert next(line for line in r.iter_lines() if line.startswith("data:"))  # under way
        # Without the disconnect, the slot would stay taken for 400 tokens of at least 50 ms each.
        response = wait_for_free_slot(base)
        assert response.status_code == 200, response.text
        assert httpx.get(base + "/health").json()["running"] == 0


def test_client_giving_up_on_a_non_streaming_request_frees_the_slot(models):
    long = {"model": MODEL, "messages": chat(SHORT), "max_tokens": 400}
    with slow_server(models, max_queue=0) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + CHAT, json=long, timeout=httpx.Timeout(60, read=1))
        response = wait_for_free_slot(base)
        assert response.status_code == 200, response.text


# ---- pieces ----


def test_text_stream_holds_back_and_cuts_at_stop_strings():
    tokenizer = tiny_tokenizer()
    ids = tokenizer(" ".join(f"w{i}" for i in (10, 11, 12, 13, 14))).input_ids
    plain = TextStream(tokenizer)
    assert "".join(plain.feed(i) for i in ids) + plain.finish() == "w10 w11 w12 w13 w14"
    stream = TextStream(tokenizer, stop=["w12 w1"])
    deltas = [stream.feed(i) for i in ids]
    assert stream.stopped and "".join(deltas) + stream.finish() == "w10 w11 "
    assert all("w12" not in d for d in deltas)


def test_a_request_can_turn_off_an_option_that_is_on_by_default():
    """``"weighted_query": false`` reaches SpecPC (it is on by default); an unset option keeps its default."""
    defaults = Defaults.parse({"method": "full"})
    off = DraftwiseOptions.model_validate({"method": "specpc", "weighted_query": False})
    assert defaults.build_method(off).weighted_query is False
    unset = DraftwiseOptions.model_validate({"method": "specpc"})
    assert defaults.build_method(unset).weighted_query is True


def test_bad_defaults_fail_at_creation(models):
    target, draft, tokenizer = models
    with pytest.raises(ValueError, match="budget"):
        create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "speckv", "budget": -1})
    with pytest.raises(ValueError, match="needs a draft"):
        create_app(target, None, tokenizer, model_name=MODEL, defaults={"method": "speckv"})
    with pytest.raises(ValueError, match="takes no option 'sinks'"):
        create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "speckv", "sinks": 4})
    with pytest.raises(ValueError, match="max_batch"):
        create_app(target, draft, tokenizer, model_name=MODEL, max_batch=0)


def test_concurrent_generations_answer_as_they_would_alone(models):
    """Requests sent at once, each with its own method, decode together (steps over several rows) and
    answer as each does alone."""
    target, draft, tokenizer = models
    options = [
        {"method": "speckv", "budget": 24, "window": 8, "lookahead": 4},
        {"method": "snapkv", "budget": 24, "window": 8},
        {"method": "adakv", "budget": 24, "window": 8},
        {"method": "specpc", "budget": 24, "window": 8, "first_layer": 1},
        {"method": "full"},
    ] * 2
    prompts = [" ".join(f"w{6 + (i * 7 + k) % 80}" for k in range(60)) for i in range(len(options))]

    def ask(base: str, i: int) -> str:
        body = {"model": MODEL, "prompt": prompts[i], "max_tokens": 8, "draftwise": options[i]}
        response = httpx.post(base + TEXT, json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_batch=1)
    with running(app) as base:
        alone = [ask(base, i) for i in range(len(options))]
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_batch=4)
    shapes: list[tuple[int, int]] = []  # (rows, tokens a row) of each forward of the target
    handle = target.register_forward_pre_hook(_note_shapes(shapes), with_kwargs=True)
    try:
        with running(app) as base, ThreadPoolExecutor(len(options)) as pool:
            together = list(pool.map(lambda i: ask(base, i), range(len(options))))
    finally:
        handle.remove()
    rows = [rows for rows, width in shapes if width == 1]  # the rows of each one-token step
    assert together == alone
    assert max(rows) > 1, "the requests decoded one after another, not together"
    assert max(rows) <= 4


def test_speculative_decoding_serves_rows_together_with_the_same_answers(models):
    """A server decoding speculatively (the operator's setting): requests sent at once are verified
    together (several rows, several tokens each) and answer as the plain server does, one at a time;
    the usage reports the drafting."""
    from draftwise import SpeculativeConfig

    target, draft, tokenizer = models
    prompts = [" ".join(f"w{6 + (i * 5 + k) % 80}" for k in range(40 + 9 * i)) for i in range(4)]
    options = {"method": "snapkv", "budget": 24, "window": 8}

    def ask(base: str, i: int) -> dict:
        body = {"model": MODEL, "prompt": prompts[i], "max_tokens": 12, "draftwise": options}
        response = httpx.post(base + TEXT, json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_batch=1)
    with running(app) as base:
        alone = [ask(base, i)["choices"][0]["text"] for i in range(len(prompts))]
    app = create_app(
        target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_batch=4,
        speculative=SpeculativeConfig(k=3),
    )  # fmt: skip
    chunks: list[tuple[int, int]] = []  # (rows, tokens a row) of each forward of the target
    handle = target.register_forward_pre_hook(_note_shapes(chunks), with_kwargs=True)
    try:
        with running(app) as base, ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(lambda i: ask(base, i), range(len(prompts))))
    finally:
        handle.remove()
    assert [answer["choices"][0]["text"] for answer in together] == alone
    assert all(answer["usage"]["speculative_drafted"] > 0 for answer in together)
    assert any(rows > 1 and width > 1 for rows, width in chunks), "no verification of several rows"
    with pytest.raises(ValueError, match="upstream"):
        ServerSettings(upstream="http://127.0.0.1:9/v1", speculative=SpeculativeConfig())
    with pytest.raises(ValueError, match="needs a draft"):
        create_app(target, None, tokenizer, model_name=MODEL, defaults={"method": "full"},
                   speculative=SpeculativeConfig())  # fmt: skip


def _note_shapes(shapes: list[tuple[int, int]]):
    def note(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            shapes.append(tuple(ids.shape))
        time.sleep(0.002)  # let requests arriving meanwhile join

    return note


def test_kv_cache_memory_admits_more_compressed_requests_than_full_ones(models):
    """Under one --kv-cache-memory, Full requests decode two at a time and SnapKV@24 ones (a quarter of
    the positions) all six together; a request that alone needs more than the limit gets 400."""
    target, draft, tokenizer = models
    prompt = " ".join(f"w{6 + k % 80}" for k in range(92))
    full_row = kv_cache_bytes(target, 92 + 8)
    settings = dict(model_name=MODEL, defaults={"method": "full"}, max_batch=8, kv_cache_memory=2 * full_row)
    for method, most in (({"method": "full"}, 2), ({"method": "snapkv", "budget": 24, "window": 8}, 6)):
        shapes: list[tuple[int, int]] = []
        handle = target.register_forward_pre_hook(_note_shapes(shapes), with_kwargs=True)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "draftwise": method}
        app = create_app(target, draft, tokenizer, **settings)
        try:
            with running(app) as base, ThreadPoolExecutor(6) as pool:
                posts = [pool.submit(httpx.post, base + TEXT, json=body, timeout=120) for _ in range(6)]
                responses = [post.result() for post in posts]
                assert httpx.get(base + "/health").json()["kv_cache_reserved_bytes"] == 0
        finally:
            handle.remove()
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        rows = [rows for rows, width in shapes if width == 1]  # the rows of each one-token step
        assert max(rows) == most, (method, rows)
    tight = dict(settings, kv_cache_memory=full_row - 1)
    with running(create_app(target, draft, tokenizer, **tight)) as base:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 8}
        response = httpx.post(base + TEXT, json=body, timeout=60)
        assert response.status_code == 400 and "kv_cache_memory" in response.json()["error"]["message"]


def test_unexpected_error_is_a_json_500(models):
    _, draft, tokenizer = models
    target = tiny_model("qwen2", seed=0)

    def broken(module, args):
        raise RuntimeError("out of memory, say")

    target.register_forward_pre_hook(broken)
    app = create_app(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"})
    with running(app) as base:
        response = httpx.post(base + CHAT, json={"model": MODEL, "messages": chat(SHORT)}, timeout=30)
        assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
        assert httpx.get(base + "/health").json()["running"] == 0


def test_serve_arguments():
    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--method", "full", "--budget", "64"])
    assert args.func is serve and args.host == "127.0.0.1" and args.max_batch == 8
    assert args.kv_cache_memory is None
    assert (args.method, args.budget, args.max_new_tokens) == ("full", 64, 256)


def test_request_over_the_memory_limit_is_refused_before_any_work(models):
    target, draft, tokenizer = models
    per_token = kv_cache_bytes(target, 1)
    assert kv_cache_bytes(target, 10) == 10 * per_token > 0
    app = create_app(
        target,
        draft,
        tokenizer,
        model_name=MODEL,
        defaults={"method": "full"},
        max_request_bytes=40 * per_token,
    )
    forwards: list[str] = []
    handles = [
        model.register_forward_pre_hook(lambda module, args, name=name: forwards.append(name))
        for name, model in (("target", target), ("draft", draft))
    ]
    try:
        with running(app) as base:
            ok = {"model": MODEL, "prompt": "w1 w2 w3", "max_tokens": 4}
            assert httpx.post(base + TEXT, json=ok, timeout=30).status_code == 200
            assert "target" in forwards, "an accepted request runs the model"
            forwards.clear()
            big = {**ok, "prompt": " ".join(f"w{i % 50}" for i in range(60))}
            response = httpx.post(base + TEXT, json=big, timeout=30)
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["code"] == "request_too_large" and error["param"] == "prompt"
            assert "MiB of KV cache" in error["message"]
            response = httpx.post(base + TEXT, json={**ok, "max_tokens": 60}, timeout=30)
            assert response.status_code == 400 and response.json()["error"]["code"] == "request_too_large"
            speckv = {**big, "draftwise": {"method": "speckv", "budget": 24, "window": 8}}
            response = httpx.post(base + TEXT, json=speckv, timeout=30)
            assert response.status_code == 400 and response.json()["error"]["code"] == "request_too_large"
            assert httpx.get(base + "/health").json()["running"] == 0
    finally:
        for handle in handles:
            handle.remove()
    assert forwards == [], "a refused request ran no forward of the target or the draft"


def test_the_serve_command_builds_one_settings_object():
    argv = ["--upstream", "http://127.0.0.1:9/v1", "--max-request-memory", "2", "--budget", "512"]
    settings = server_settings(add_serve_arguments(argparse.ArgumentParser()).parse_args(argv))
    assert settings.upstream == "http://127.0.0.1:9/v1" and settings.max_request_bytes == 2 * 2**20
    assert settings.defaults["method"] == "specpc" and settings.defaults["budget"] == 512
    plain = server_settings(add_serve_arguments(argparse.ArgumentParser()).parse_args(["--api-key", "k"]))
    assert plain.defaults["method"] == "speckv" and plain.api_key == "k" and plain.upstream is None
    assert plain.speculative is None
    argv = ["--speculative", "5", "--speculative-proposer", "lookup"]
    fast = server_settings(add_serve_arguments(argparse.ArgumentParser()).parse_args(argv))
    assert (fast.speculative.k, fast.speculative.proposer) == (5, "lookup")


@pytest.mark.parametrize(
    "bad, named",
    [
        ({"upstream": "ftp://127.0.0.1/v1"}, "http"),
        ({"upstream": "http://127.0.0.1/v1", "upstream_timeout": 0}, "timeout"),
        ({"upstream": "http://127.0.0.1/v1", "max_forwarded": 0}, "forwarded"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_batch": 0}, "max_batch"),
        ({"kv_cache_memory": 0}, "kv_cache_memory"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"max_request_bytes": 0}, "max_request_bytes"),
    ],
)
def test_settings_refuse_bad_limits_by_name(bad, named):
    with pytest.raises(ValueError, match=named):
        ServerSettings(**bad)


def test_create_app_takes_settings_or_their_fields():
    target, tokenizer = tiny_model("qwen2"), tiny_tokenizer()
    given = ServerSettings(model_name=MODEL, defaults={"method": "full"}, max_queue=0)
    for app in (
        create_app(target, None, tokenizer, given),
        create_app(target, None, tokenizer, model_name=MODEL, defaults={"method": "full"}, max_queue=0),
    ):
        assert app.state.engine.admission.limit == DEFAULT_MAX_BATCH
    with pytest.raises(TypeError):
        create_app(target, None, tokenizer, model_name=MODEL, colour="red")
