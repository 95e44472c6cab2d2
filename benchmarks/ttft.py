"""Time to first token of a needle prompt through OpenAI-compatible servers that are already running,
side by side, one request at a time: e.g. an engine and `draftwise serve --upstream` in front of it.

    .venv/bin/python benchmarks/ttft.py --path vLLM=http://127.0.0.1:8001/v1 \\
        --path "draftwise SpecPC -> vLLM=http://127.0.0.1:8002/v1" --lengths 16384 --out ttft.md

The first ``--path`` is the baseline of the ratios. ``--warm NAME`` sends that path one untimed needle
of the same length first (another seed): a draftwise front with the fused sparse kernel compiles it
then, once per length bucket. `benchmarks/upstream.py` starts the servers itself; this script is for
servers started by hand, or by a run that is busy with something else (pause that run's client).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from openai import OpenAI
from transformers import AutoTokenizer
from upstream import timed_chat

from draftwise.bench.needle import needle_case
from draftwise.generate import encode
from draftwise.models import DEFAULT_TARGET, resolve
from draftwise.timing import machine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--path", action="append", required=True, metavar="NAME=URL", help="a server's /v1 URL"
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--warm", action="append", default=[], metavar="NAME", help="a path sent one untimed needle first"
    )
    parser.add_argument("--out", help="write a Markdown report here (and the raw rows as JSON)")
    args = parser.parse_args()
    paths = dict(item.rsplit("=", 1) for item in args.path)
    clients = {
        name: OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
        for name, url in paths.items()
    }
    tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_TARGET))
    rows, warm = [], []
    for length in args.lengths:
        case = needle_case(tokenizer, context_tokens=length, seed=length)  # as benchmarks/upstream.py
        prompt_tokens = encode(tokenizer, case.messages).shape[1]
        for name, client in clients.items():
            if name in args.warm:
                other = needle_case(tokenizer, context_tokens=length, seed=length + 1)
                warm.append((prompt_tokens, name, timed_chat(client, other.messages, 4)["ttft"]))
            print(f"[{length}] {name} ...", file=sys.stderr, flush=True)
            result = timed_chat(client, case.messages, args.max_tokens)
            rows.append(
                dict(prompt_tokens=prompt_tokens, path=name, found=case.answer in result["text"], **result)
            )
    base = {r["prompt_tokens"]: r for r in rows if r["path"] == next(iter(paths))}
    lines = [
        "| prompt tokens | path | TTFT s | total s | TTFT ratio | total ratio | needle found |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b = base[r["prompt_tokens"]]
        lines.append(
            f"| {r['prompt_tokens']} | {r['path']} | {r['ttft']:.1f} | {r['total']:.1f} | "
            f"{r['ttft'] / b['ttft']:.2f} | {r['total'] / b['total']:.2f} | {'yes' if r['found'] else 'no'} |"
        )
    if warm:
        lines += [
            "",
            "Untimed first requests (another needle of the same length), their time to first token:",
            "",
        ]
        lines += [f"- {n} tokens, {name}: {ttft:.1f} s" for n, name, ttft in warm]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(
            json.dumps({"rows": rows, "warm": warm}, indent=1) + "\n"
        )
        command = shlex.join([".venv/bin/python", *sys.argv])
        Path(args.out).write_text(
            f"# Time to first token, side by side\n\n- Command: `{command}`\n- Machine: {machine('cpu')}; "
            f"one request at a time, streamed chat, at most {args.max_tokens} new tokens.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
