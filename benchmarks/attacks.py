"""The serving audit's attacks (issue 11), each against a live ``draftwise serve`` app on loopback.

Every attack runs against servers with tiny random models (normal mode, and upstream mode in front of a
recording upstream), and prints one row: what the server answered, how long it took, and what it leaked
or forwarded. Run it on two checkouts to compare before and after a change (the tests' tiny models and
servers come from this checkout's tests/, draftwise from ``PYTHONPATH``)::

    .venv/bin/python benchmarks/attacks.py --label after --out after.md
    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/attacks.py --label before --out before.md

Options a checkout's ``create_app`` does not take yet are dropped (and the row says so).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import torch

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import tiny_model as _tiny_model  # noqa: E402  (the tests' tiny models and servers)
from helpers import tiny_tokenizer  # noqa: E402
from serving import Recorder, running  # noqa: E402

from draftwise.serve import create_app  # noqa: E402
from draftwise.serve.settings import ServerSettings  # noqa: E402

MODEL = "tiny"
KEY = "front-key"
UPSTREAM_KEY = "operator-upstream-key"
PROMPT = " ".join(f"w{6 + i % 80}" for i in range(300))
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
RAISING = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}w3 {{ m['content'] }} w4 {% endfor %}w5"
)
TRIMMING = "{% for m in messages %}w3 {{ m['content'] | trim }} w4 {% endfor %}w5"


def tiny_model(seed: int, layers: int = 2):
    return _tiny_model("qwen2", seed=seed, layers=layers)


def app_of(*args, dropped: list[str], **kwargs):
    """``create_app`` with the keyword arguments this checkout takes; the others go to ``dropped``."""
    accepted = inspect.signature(create_app).parameters
    if "settings" in accepted:  # the settings arrive as one ServerSettings, its fields as keywords
        accepted = {f.name for f in fields(ServerSettings)}
    dropped += [k for k in kwargs if k not in accepted]
    return create_app(*args, **{k: v for k, v in kwargs.items() if k in accepted})


def post(base: str, path: str, body, timeout: float = 120, **kwargs) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        base + path,
        content=content,
        timeout=timeout,
        headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
        **kwargs,
    )
    return response, time.monotonic() - start


def healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def brief(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return f"{response.status_code} (not JSON: {response.content[:40]!r})"
    if isinstance(error, dict):
        return f"{response.status_code} {error.get('param') or ''}: {str(error.get('message'))[:90]}".strip()
    return str(response.status_code)


class Audit:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def row(self, item: str, attack: str, result: str, dropped: list[str] | None = None) -> None:
        note = f" (this checkout has no {', '.join(dropped)})" if dropped else ""
        self.rows.append((item, attack, result + note, ""))
        print(f"{item:4} {attack[:60]:60} {result}{note}", flush=True)


def normal_mode(audit: Audit, target, draft, tokenizer) -> None:
    dropped: list[str] = []
    per_token = 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head dim 16, float32
    app = app_of(
        target,
        draft,
        tokenizer,
        model_name=MODEL,
        defaults={"method": "full", "max_tokens": 8},
        max_new_tokens_limit=64,
        max_request_bytes=400 * per_token,
        dropped=dropped,
    )
    with running(app) as base:

        def chat(extra: dict, content: str = PROMPT) -> dict:
            return {
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4,
                **extra,
            }

        attacks = [
            (
                "1",
                "specpc neighbourhood 20,000,000 (300-word prompt)",
                {"draftwise": {"method": "specpc", "budget": 64, "window": 8, "neighbourhood": 20_000_000}},
            ),
            (
                "1",
                "specpc kernel 50,000,000",
                {"draftwise": {"method": "specpc", "budget": 64, "window": 8, "kernel": 50_000_000}},
            ),
            (
                "1",
                "snapkv kernel 50,000,001",
                {"draftwise": {"method": "snapkv", "budget": 64, "window": 8, "kernel": 50_000_001}},
            ),
            (
                "1",
                "speckv lookahead 600 (max_tokens limit 64; memory for 400 tokens)",
                {"draftwise": {"method": "speckv", "budget": 64, "window": 8, "lookahead": 600}},
            ),
            (
                "1",
                'speckv sparse_prefill "false" (a string)',
                {"draftwise": {"method": "speckv", "budget": 64, "window": 8, "sparse_prefill": "false"}},
            ),
            ("8", "temperature 1e-300", {"temperature": 1e-300}),
            ("14", "tools given", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
            ("14", "response_format json_object", {"response_format": {"type": "json_object"}}),
            ("14", "logit_bias", {"logit_bias": {"7": 100}}),
        ]
        for item, name, extra in attacks:
            response, seconds = post(base, CHAT, chat(extra))
            audit.row(item, name, f"{brief(response)} in {seconds:.1f} s; healthy: {healthy(base)}", dropped)
        # 5: the event loop while big bodies are templated and tokenized.
        big = chat({}, " ".join(["w7"] * 2_400_000))
        stalls: list[float] = []
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, base, CHAT, big) for _ in range(5)]
            time.sleep(0.2)
            while not all(f.done() for f in futures):
                start = time.monotonic()
                httpx.get(base + "/health", timeout=60)
                stalls.append(time.monotonic() - start)
                time.sleep(0.05)
            statuses = sorted(f.result()[0].status_code for f in futures)
        audit.row(
            "5",
            "5 bodies of 7 MiB at once: slowest /health meanwhile",
            f"{max(stalls, default=0):.2f} s (answers {statuses})",
        )

    # 12: a queued client that goes away.
    slow = _tiny_model("qwen2", seed=0)  # 3 layers: its answer to "w7 w8 w9" runs long
    slow.register_forward_pre_hook(lambda module, args: time.sleep(0.1))
    app = app_of(
        slow,
        draft,
        tokenizer,
        model_name=MODEL,
        defaults={"method": "full"},
        max_batch=1,
        max_queue=1,
        max_new_tokens_limit=1000,
        dropped=dropped,
    )
    with running(app) as base, ThreadPoolExecutor(2) as pool:
        long = {"model": MODEL, "prompt": "w7 w8 w9", "max_tokens": 300}
        running_one = pool.submit(post, base, TEXT, long)
        while httpx.get(base + "/health").json()["running"] == 0:
            time.sleep(0.05)
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(base + TEXT, json=long, timeout=0.6)  # queued behind it, then gone
        time.sleep(0.6)
        health = httpx.get(base + "/health").json()
        audit.row(
            "12",
            "a queued client left; /health 0.6 s later (queue of 1)",
            f"running {health['running']}, waiting {health['waiting']}",
        )
        running_one.result()

    # 6: chat templates.
    for template, name, messages in (
        (
            RAISING,
            "template raising on a system message",
            [{"role": "system", "content": "w7"}, {"role": "user", "content": "w8 w9"}],
        ),
        (TRIMMING, "template trimming content 'w8 w9\\n'", [{"role": "user", "content": "w8 w9\n"}]),
    ):
        app = app_of(
            target,
            draft,
            tokenizer_with(template),
            model_name=MODEL,
            dropped=dropped,
            defaults={"method": "full", "max_tokens": 2},
        )
        with running(app) as base:
            response, seconds = post(base, CHAT, {"model": MODEL, "messages": messages})
            audit.row("6", name, brief(response))

    # 14: the key check.
    app = app_of(
        target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, api_key=KEY, dropped=dropped
    )
    with running(app) as base:
        response = httpx.get(base + "/v1/models", headers={"Authorization": f"bearer {KEY}"}, timeout=10)
        audit.row("14", "'Authorization: bearer KEY' (lower case)", str(response.status_code))

    # 13: connections.
    app = app_of(target, draft, tokenizer, model_name=MODEL, defaults={"method": "full"}, dropped=dropped)
    with running(app) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        slowloris = socket.create_connection(("127.0.0.1", port))
        slowloris.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        status = httpx.get(base + "/health", timeout=10).status_code
        time.sleep(12)
        closed = 0
        for sock in [*idle, slowloris]:
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError, OSError):
                closed += sock.recv(1) == b""
            sock.close()
        audit.row(
            "13",
            "200 idle connections + 1 half-sent header, 12 s later",
            f"/health {status} meanwhile; {closed} of 201 closed by the server",
        )


def tokenizer_with(template: str):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def upstream_mode(audit: Audit, draft, tokenizer) -> None:
    recorder = Recorder()
    per_token = 2 * 2 * 2 * 16 * 4
    with running(recorder, lifespan="off", log_level="critical") as up:

        def front(prefix: str = "", **kwargs):
            dropped: list[str] = []
            app = app_of(
                None,
                draft,
                tokenizer,
                upstream=f"{up}{prefix}/v1",
                upstream_timeout=10,
                dropped=dropped,
                **kwargs,
            )
            return app, dropped

        app, dropped = front(upstream_api_key=UPSTREAM_KEY, max_request_bytes=400 * per_token)
        with running(app) as base:
            recorder.seen.clear()
            response = httpx.get(base + "/v1/models/%2e%2e/%2e%2e/slots", timeout=10)
            reached = [s for s in recorder.seen if "slots" in s["path"]]
            audit.row(
                "2",
                "GET /v1/models/%2e%2e/%2e%2e/slots",
                f"{response.status_code}; upstream saw {reached[0]['path'] if reached else 'nothing'}"
                + (f" with {reached[0]['authorization']!r}" if reached else ""),
            )
            content = " ".join(["w7"] * 2000)
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "draftwise": {"method": "specpc", "budget": 64, "window": 8},
            }
            response, seconds = post(base, CHAT, body)
            audit.row(
                "3",
                "prompt of 2,000 tokens (draft context 1,024)",
                f"{brief(response)} in {seconds:.1f} s",
                dropped,
            )
            body["messages"][0]["content"] = " ".join(["w7"] * 600)
            response, seconds = post(base, CHAT, body)
            audit.row(
                "3",
                "prompt of 600 tokens (memory limit: 400 tokens)",
                f"{brief(response)} in {seconds:.1f} s",
                dropped,
            )
            for name, raw in (
                ("user message without content", b'{"model": "tiny", "messages": [{"role": "user"}]}'),
                (
                    "lone surrogate \\ud800",
                    b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
                ),
            ):
                response, _ = post(base, CHAT, raw)
                audit.row("9", name, brief(response))
            health = httpx.get(base + "/health", timeout=10).text
            audit.row("10", "/health shows the upstream URL", str(up in health))

        app, dropped = front(api_key=KEY)
        with running(app) as base:
            recorder.seen.clear()
            post(
                base,
                TEXT,
                {"model": MODEL, "prompt": "w7 w8", "draftwise": {"method": "full"}},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            sent = recorder.seen[-1]["authorization"] if recorder.seen else None
            audit.row("4", "--api-key without --upstream-api-key: what goes upstream", repr(sent))

        for prefix, item, name in (("/nan", "9", "upstream JSON with NaN"), ("/fail", "10", "upstream 500")):
            app, _ = front(prefix)
            with running(app) as base:
                response, _ = post(
                    base, TEXT, {"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}}
                )
                leak = "/srv/secret" in response.text or up in response.text
                audit.row(item, name, f"{brief(response)}; leaks upstream URL or text: {leak}")

        app, _ = front("/gzip")
        with running(app) as base:
            response, _ = post(
                base, TEXT, {"model": MODEL, "prompt": "w7", "stream": True, "draftwise": {"method": "full"}}
            )
            audit.row("11", "upstream gzips its stream", f"client got {response.content[:12]!r}")

        app, dropped = front("/slow", max_forwarded=2)
        with running(app) as base:
            recorder.cancelled = 0
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(
                    base + TEXT,
                    json={"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}},
                    timeout=0.5,
                )
            time.sleep(3.5)
            audit.row(
                "7",
                "client leaves a non-streaming forward",
                f"upstream request cancelled: {recorder.cancelled == 1}",
            )
            body = {"model": MODEL, "prompt": "w7", "draftwise": {"method": "full"}}
            with ThreadPoolExecutor(6) as pool:
                statuses = sorted(pool.map(lambda _: post(base, TEXT, body)[0].status_code, range(6)))
            audit.row("7", "6 slow forwards at once (max_forwarded 2)", str(statuses), dropped)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write the rows as a Markdown table here")
    parser.add_argument("--label", default="", help="a title for the table (e.g. the commit)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    target, draft, tokenizer = tiny_model(0, layers=2), tiny_model(1, layers=2), tiny_tokenizer()
    audit = Audit()
    normal_mode(audit, target, draft, tokenizer)
    upstream_mode(audit, draft, tokenizer)
    if args.out:
        lines = [
            f"### {args.label}",
            "",
            f"`{' '.join(sys.argv)}`",
            "",
            "| item | attack | result |",
            "|---|---|---|",
        ]
        lines += [f"| {item} | {attack} | {result} |" for item, attack, result, _ in audit.rows]
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
