"""API fuzzing (issue 11) against live servers with tiny random models, in both modes.

Two generators: schemathesis, from the server's own OpenAPI schema (every route, any JSON the schema
allows), and hypothesis strategies for request bodies shaped like real ones (every method with options
in and out of range, chat and text prompts, sampling, stop strings, streaming), which reach the
generation paths that schema-random bodies rarely pass validation to.

The property: no 5xx, every error in OpenAI's shape, and the servers healthy afterwards. The runs are
bounded and reproducible (``derandomize``): ``DRAFTWISE_FUZZ_CASES`` cases per route and generator
(default 100). With ``DRAFTWISE_FUZZ_REPORT=path.json`` the counts are written there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import pytest
from helpers import tiny_model, tiny_tokenizer
from serving import running

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

try:
    import httpx2 as httpx  # the name httpx is published under in this environment
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

from draftwise.methods import METHODS  # noqa: E402
from draftwise.serve import create_app  # noqa: E402

CASES = int(os.environ.get("DRAFTWISE_FUZZ_CASES", "100"))
MODEL = "tiny"
SETTINGS = settings(
    max_examples=CASES, deadline=None, derandomize=True, database=None,
    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
)  # fmt: skip
REPORT: dict[str, dict] = {}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """A normal-mode server (tiny target and draft) and an upstream-mode front before it."""
    target, draft, tokenizer = (
        tiny_model("qwen2", seed=0),
        tiny_model("qwen2", seed=1, layers=2),
        tiny_tokenizer(),
    )
    limits = {"max_body_bytes": 64 * 1024, "max_request_bytes": 8 * 2**20, "max_queue": 4}
    normal = create_app(
        target, draft, tokenizer, model_name=MODEL, defaults={"method": "speckv", "budget": 64, "window": 8},
        max_new_tokens_limit=8, **limits,
    )  # fmt: skip
    with running(normal) as base:
        front = create_app(None, draft, tokenizer, upstream=f"{base}/v1", upstream_timeout=60, **limits)
        with running(front) as front_base:
            yield {"normal": base, "upstream": front_base}


def fuzz(base: str) -> Counter:
    """Every route of ``base``'s schema with ``CASES`` generated requests each; the statuses seen."""
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    seen: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @SETTINGS
        def send(case) -> None:
            response = case.call(base_url=base, timeout=60)
            check(response.status_code, response.text, seen, f"{case.method} {case.formatted_path}")

        send()
    return seen


def check(status: int, text: str, seen: Counter, label: str) -> None:
    """The property, for one answer."""
    seen[status] += 1
    label = f"{label}: {status} {text[:300]}"
    assert status < 500, label
    if status >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, label
        assert isinstance(error["message"], str) and error["message"], label


def record(generator: str, counts: dict[str, Counter], servers: dict[str, str]) -> None:
    """Check the servers are healthy, print and keep the figures."""
    for mode, base in servers.items():
        health = httpx.get(base + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", mode
        assert health.json()["running"] == 0, "no generation left behind"
    statuses = {mode: dict(sorted(seen.items())) for mode, seen in counts.items()}
    cases = {mode: sum(seen.values()) for mode, seen in counts.items()}
    print(f"\n{generator}: {cases} cases; statuses {statuses}")
    REPORT[generator] = {"cases": cases, "statuses": statuses}
    if os.environ.get("DRAFTWISE_FUZZ_REPORT"):
        with open(os.environ["DRAFTWISE_FUZZ_REPORT"], "w") as out:
            json.dump({"cases_per_route": CASES, **REPORT}, out, indent=1)


def test_schema_generated_requests_never_make_a_server_fail(servers):
    counts = {mode: fuzz(base) for mode, base in servers.items()}
    record("schemathesis", counts, servers)
    assert all(sum(seen.values()) >= CASES for seen in counts.values())


WORDS = st.lists(st.integers(3, 95).map(lambda i: f"w{i}"), min_size=0, max_size=300).map(" ".join)
ODD_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates included
VALUES = st.one_of(
    st.integers(1, 400), st.integers(-3, 3), st.integers(10**6, 10**20), st.floats(allow_nan=False),
    st.booleans(), st.none(), ODD_TEXT, st.sampled_from(["max", "avg", "mean"]),
)  # fmt: skip


@st.composite
def method_options(draw) -> dict:
    """A method by name (now and then an unknown one) with some of its fields, in and out of range."""
    name = draw(st.sampled_from([*METHODS, "nope"]))
    fields = list(getattr(METHODS.get(name), "__dataclass_fields__", {})) + ["prompt_budget", "extra"]
    chosen = draw(st.lists(st.sampled_from(fields), max_size=4, unique=True))
    return {"method": name, **{f: draw(VALUES) for f in chosen}}


@st.composite
def request_body(draw) -> tuple[str, dict]:
    """A chat or text completion body shaped like a real one."""
    body: dict = {"model": draw(st.sampled_from([MODEL] * 5 + ["other"]))}
    if draw(st.booleans()):
        path = "/v1/chat/completions"
        roles = st.sampled_from(["user", "user", "system", "assistant", "developer", "tool"])
        content = st.one_of(WORDS, st.none(), st.just([{"type": "text", "text": "w7 w8"}]), ODD_TEXT)
        body["messages"] = draw(
            st.lists(st.fixed_dictionaries({"role": roles}, optional={"content": content}), max_size=3)
        )
    else:
        path = "/v1/completions"
        body["prompt"] = draw(st.one_of(WORDS, st.lists(st.integers(-2, 120), max_size=40), ODD_TEXT))
    optional = {
        "max_tokens": st.one_of(st.integers(-1, 10), st.integers(10**9, 10**12)),
        "temperature": st.one_of(st.floats(0, 3), st.floats(0, 1e-30), st.floats(allow_nan=False)),
        "top_p": st.floats(-1, 2), "seed": st.one_of(st.integers(0, 2**64 + 5), st.integers(-(2**70), 0)),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20)),
        "stream": st.booleans(), "n": st.integers(0, 3), "draftwise": method_options(),
        "stream_options": st.just({"include_usage": True}),
    }  # fmt: skip
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=6, unique=True)):
        body[key] = draw(optional[key])
    return path, body


def post_bodies(mode: str, base: str) -> Counter:
    """``CASES`` realistic bodies posted to ``base``; the statuses seen. In upstream mode, half of the
    bodies that pick a method pick SpecPC (the other methods are refused there)."""
    seen: Counter = Counter()

    @given(case=request_body(), specpc=st.booleans())
    @SETTINGS
    def send(case: tuple[str, dict], specpc: bool) -> None:
        path, body = case
        if mode == "upstream" and specpc and isinstance(body.get("draftwise"), dict):
            body["draftwise"]["method"] = "specpc"
        content = json.dumps(body).encode()  # ASCII: a lone surrogate travels as an escape
        headers = {"Content-Type": "application/json"}
        response = httpx.post(base + path, content=content, headers=headers, timeout=60)
        check(response.status_code, response.text, seen, f"POST {path} {json.dumps(body)[:300]}")

    send()
    return seen


def test_realistic_bodies_never_make_a_server_fail(servers):
    counts = {mode: post_bodies(mode, base) for mode, base in servers.items()}
    record("hypothesis bodies", counts, servers)
    assert all(seen[200] > 0 and sum(seen.values()) >= CASES for seen in counts.values())
