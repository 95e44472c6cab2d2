"""SpecPC in front of a real third-party engine: time to first token, total time and RULER accuracy,
straight to the engine and through `draftwise serve --upstream`, side by side in one run.

The engine is llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``, built from PyPI) serving
the target's GGUF; the front is `draftwise serve --upstream` with the draft alone. This script starts
both servers on loopback, sends the same requests both ways, one at a time, and stops them:

    bash scripts/setup.sh && python3 -m venv .venv-llamacpp \\
        && .venv-llamacpp/bin/pip install "llama-cpp-python[server]==0.3.36"
    .venv/bin/python benchmarks/upstream.py --lengths 4096 8192 \\
        --tasks niah_single_1,niah_multikey_1,vt,qa_1 --samples 2 --out docs/results/upstream.md
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from openai import OpenAI
from transformers import AutoTokenizer

from draftwise.bench import ruler
from draftwise.bench.needle import needle_case
from draftwise.generate import encode
from draftwise.models import DEFAULT_DRAFT, DEFAULT_TARGET, gguf_path, resolve

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process``; kill it if it is still busy (llama.cpp finishes its prompt first)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start(command: list[str], log: Path, url: str, stack: ExitStack, timeout: float = 600) -> None:
    """Start a server, stop it when ``stack`` closes; return once ``url/models`` answers."""
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    stack.callback(handle.close)
    stack.callback(stop, process)
    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log}")
        try:
            client.models.list()
            return
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout} s; see {log}")


def timed_chat(client: OpenAI, messages: list[dict], max_tokens: int) -> dict:
    """Stream one greedy chat completion; time to the first content and to the end, and the text."""
    start = time.perf_counter()
    first, parts = None, []
    stream = client.chat.completions.create(
        model="target", messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            parts.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - start
    return {"ttft": first if first is not None else total, "total": total, "text": "".join(parts)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine-python", default=str(ROOT / ".venv-llamacpp" / "bin" / "python"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--budget", type=int, default=1024, help="SpecPC prompt tokens kept by the front")
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,vt,qa_1")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--logs", default="out/upstream")
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_TARGET))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    engine_port, front_port = free_port(), free_port()
    engine_url = f"http://127.0.0.1:{engine_port}/v1"
    front_url = f"http://127.0.0.1:{front_port}/v1"
    context = 2 * max(args.lengths) + 1024
    engine = [
        args.engine_python, "-m", "llama_cpp.server", "--model", str(gguf_path(DEFAULT_TARGET)),
        "--n_ctx", str(context), "--n_threads", str(args.threads), "--host", "127.0.0.1",
        "--port", str(engine_port),
    ]  # fmt: skip
    front = [
        str(ROOT / ".venv" / "bin" / "draftwise"), "serve", "--draft", DEFAULT_DRAFT,
        "--upstream", engine_url,
        "--port", str(front_port), "--budget", str(args.budget), "--upstream-timeout", "1200",
        "--max-new-tokens-limit", str(args.max_tokens), "--log-level", "warning",
    ]  # fmt: skip
    rows, ruler_rows = [], []
    with ExitStack() as stack:
        print("starting llama.cpp and draftwise ...", file=sys.stderr, flush=True)
        start(engine, logs / "llamacpp.log", engine_url, stack)
        start(front, logs / "draftwise.log", front_url, stack)
        version = subprocess.run(
            [args.engine_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        paths = {
            "llama.cpp": OpenAI(base_url=engine_url, api_key="unused", timeout=1800, max_retries=0),
            f"draftwise SpecPC@{args.budget} -> llama.cpp": OpenAI(
                base_url=front_url, api_key="unused", timeout=1800, max_retries=0
            ),
        }
        engine_client = paths["llama.cpp"]

        def reset() -> None:
            """llama.cpp reuses the longest prefix it holds: evict the last prompt first, so that no
            request starts from the one before it (both paths send the same text)."""
            timed_chat(engine_client, [{"role": "user", "content": "Say hi."}], 1)

        for client in paths.values():  # warm-up: model pages, the draft's first pass
            timed_chat(client, [{"role": "user", "content": "Say hi."}], 4)
        for length in args.lengths:
            case = needle_case(tokenizer, context_tokens=length, seed=length)
            prompt_tokens = encode(tokenizer, case.messages).shape[1]
            for name, client in paths.items():
                print(f"[{length}] {name} ...", file=sys.stderr, flush=True)
                reset()
                result = timed_chat(client, case.messages, args.max_tokens)
                rows.append((prompt_tokens, name, result, case.answer in result["text"]))
        for task in args.tasks.split(","):
            for sample in ruler.load_or_generate(task, tokenizer, 4096, args.samples):
                messages = [{"role": "user", "content": sample.prompt}]
                for name, client in paths.items():
                    print(f"[ruler {task} {sample.index}] {name} ...", file=sys.stderr, flush=True)
                    reset()
                    result = timed_chat(client, messages, args.max_tokens)
                    score = ruler.score(task, result["text"], sample.answers)
                    ruler_rows.append((task, sample.index, name, score, result["total"]))

    if args.out:  # the raw measurements beside the report
        raw = {"needle": [dict(prompt_tokens=n, path=name, found=found, **r) for n, name, r, found in rows]}
        raw["ruler"] = [
            dict(zip(("task", "index", "path", "score", "total"), r, strict=True)) for r in ruler_rows
        ]
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    base = {n: r for n, name, r, _ in rows if name == "llama.cpp"}
    lines = [
        "| prompt tokens | path | TTFT s | total s | TTFT ratio | total ratio | needle found |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, name, r, found in rows:
        lines.append(
            f"| {n} | {name} | {r['ttft']:.1f} | {r['total']:.1f} | {r['ttft'] / base[n]['ttft']:.2f} "
            f"| {r['total'] / base[n]['total']:.2f} | {'yes' if found else 'no'} |"
        )
    timing = "\n".join(lines)
    names = list(paths)
    tasks = args.tasks.split(",")
    lines = ["| path | " + " | ".join(tasks) + " | mean | mean total s |", "|---" * (len(tasks) + 3) + "|"]
    for name in names:
        mine = [r for r in ruler_rows if r[2] == name]
        per_task = [
            100 * sum(r[3] for r in mine if r[0] == t) / len([r for r in mine if r[0] == t]) for t in tasks
        ]
        seconds = sum(r[4] for r in mine) / len(mine)
        lines.append(
            f"| {name} | " + " | ".join(f"{a:.1f}" for a in per_task)
            + f" | {sum(per_task) / len(per_task):.1f} | {seconds:.1f} |"
        )  # fmt: skip
    accuracy = "\n".join(lines)
    print(timing + "\n\n" + accuracy)
    if args.out:
        command = " ".join([".venv/bin/python", *sys.argv])
        Path(args.out).write_text(
            "# SpecPC in front of llama.cpp's server (a third-party OpenAI-compatible engine)\n\n"
            f"- Command: `{command}`\n"
            f"- Engine: llama-cpp-python[server] {version} (built from PyPI), serving the target "
            f"{DEFAULT_TARGET} from its GGUF, n_ctx {context}, {args.threads} threads. Front: `draftwise "
            f"serve --upstream` with the draft {DEFAULT_DRAFT} (bf16, PyTorch), SpecPC keeping "
            f"{args.budget} prompt tokens. Greedy, at most {args.max_tokens} new tokens, streamed.\n"
            f"- Machine: {platform.machine()}, {args.threads} threads for the engine; both servers on "
            "one machine, one request at a time, so the front's draft and the engine never overlap.\n"
            "- One request per row after a warm-up request on each path; before each request a short one "
            "evicts the previous prompt from llama.cpp's prefix cache.\n\n"
            f"## Needle in a haystack\n\n{timing}\n\n"
            f"## RULER at 4k through both paths ({args.samples} samples per task, no answer prefix: the "
            f"chat API takes the question alone)\n\n{accuracy}\n"
        )


if __name__ == "__main__":
    main()
