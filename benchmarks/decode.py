"""Decode cost per KV method: milliseconds per generated token from each method's pruned cache.

One needle prompt, pre-filled once (``draftwise.shared_prefill.SharedPrefill``); each method prunes
its own copy, then decodes exactly ``--steps`` tokens (no early stop), timed. Full's cache holds the whole
prompt; SnapKV, PyramidKV and StreamingLLM hold ``budget`` pairs per head (PyramidKV unequally per
layer); AdaKV pads unequal heads and masks the padding. Usage (after scripts/setup.sh):

    .venv/bin/python benchmarks/decode.py --methods full,snapkv,pyramidkv,adakv --budgets 256,1024 \
        --out docs/results/decode-cpu.md
"""

from __future__ import annotations

import argparse
import sys

from draftwise.bench.needle import needle_case
from draftwise.decoding import decode
from draftwise.generate import encode
from draftwise.methods import build_method
from draftwise.models import load_model
from draftwise.options import ModelOptions, add_arguments
from draftwise.shared_prefill import SharedPrefill
from draftwise.timing import machine as describe_machine
from draftwise.timing import now


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, ModelOptions, only=("target", "device", "dtype"))
    parser.add_argument("--methods", default="full,snapkv,pyramidkv,adakv")
    parser.add_argument("--budgets", default="256,1024")
    parser.add_argument("--tokens", type=int, default=4096, help="haystack length in tokens")
    parser.add_argument("--steps", type=int, default=32, help="tokens decoded per method")
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()

    target, tokenizer = load_model(args.target, dtype=args.dtype, device=args.device)
    ids = encode(tokenizer, needle_case(tokenizer, context_tokens=args.tokens).messages).to(args.device)
    n = ids.shape[1]
    methods = []
    for name in args.methods.split(","):
        budgets = [None] if name == "full" else [int(b) for b in args.budgets.split(",")]
        methods += [(name if b is None else f"{name}@{b}", build_method(name, budget=b)) for b in budgets]
    reuse = SharedPrefill(
        observed_queries=max([m.observed_queries(n) for label, m in methods if label != "full"], default=0)
    )

    rows = []
    for i, (label, method) in enumerate(methods):
        print(f"{label} ...", file=sys.stderr, flush=True)
        kv_method = None if label == "full" else method
        prefilled, _ = reuse.prefill(target, ids, kv_method, None)
        if i == 0:  # warm-up on a copy of the first cache: first-call set-up is not timed
            warm, _ = reuse.prefill(target, ids, kv_method, None)
            decode(target, warm.cache, warm.logits, n, 2)
            del warm
        kept = prefilled.cache.layers[0].keys.shape[2]
        start = now()
        out = decode(target, prefilled.cache, prefilled.logits, n, args.steps)
        seconds = now() - start
        rows.append((label, kept, 1000 * seconds / (out.shape[1] - 1)))  # the first token is pre-fill's
        del prefilled
    base = rows[0][2]
    lines = ["| method | cache length (layer 0) | decode ms/token | ratio to first row |"]
    lines += ["| --- | --- | --- | --- |"]
    lines += [f"| {label} | {kept} | {ms:.1f} | {ms / base:.2f} |" for label, kept, ms in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        machine = describe_machine(args.device)
        dtype = str(target.dtype).removeprefix("torch.")
        with open(args.out, "w") as handle:
            handle.write(
                "# Decode cost per KV method\n\n"
                f"- Command: `{' '.join(['python', *sys.argv])}`\n"
                f"- Target: {args.target}, {dtype}, {args.device} ({machine}); prompt {n} tokens.\n"
                f"- {args.steps} tokens decoded per method, timed after one shared pre-fill; one process, "
                "one run per row.\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
