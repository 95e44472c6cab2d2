"""Pre-fill and decode speed of the target in each dtype, on one needle prompt, in one process.

Answers "which dtype on this machine?": on CPUs without native bfloat16 (no AVX512-BF16 or AMX),
torch emulates it and float32 is faster; ``--dtype auto`` (the default everywhere) picks for you.
Usage (after scripts/setup.sh):

    .venv/bin/python benchmarks/dtype.py --dtypes bfloat16 float32 --out docs/results/dtype-cpu.md
"""

from __future__ import annotations

import argparse
import sys

from draftwise import Full, generate, load_model
from draftwise.bench.needle import needle_case
from draftwise.models import DEFAULT_TARGET, default_dtype
from draftwise.timing import machine as describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--tokens", type=int, default=4096, help="haystack length in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()

    rows = []
    for name in args.dtypes:
        print(f"{name} ...", file=sys.stderr, flush=True)
        target, tokenizer = load_model(args.target, dtype=name, device=args.device)
        case = needle_case(tokenizer, context_tokens=args.tokens)
        warm = needle_case(tokenizer, context_tokens=64).messages  # first-call set-up, not timed
        generate(target, None, tokenizer, warm, method=Full(), max_new_tokens=2)
        out = generate(
            target, None, tokenizer, case.messages, method=Full(), max_new_tokens=args.max_new_tokens
        )
        s = out.stats
        per_token = s.decode_seconds / max(s.new_tokens, 1)
        rows.append((name, s.prompt_tokens, s.prefill_seconds, per_token, out.text))
        del target
    base_prefill, base_decode = rows[0][2], rows[0][3]
    lines = [
        "| dtype | prompt tokens | pre-fill s | ratio | decode s/token | ratio | needle found "
        "| same answer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {n} | {p:.1f} | {p / base_prefill:.2f} | {d:.3f} | {d / base_decode:.2f} | "
        f"{'yes' if case.answer in text else 'no'} | {'yes' if text == rows[0][4] else 'no'} |"
        for name, n, p, d, text in rows
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        auto = str(default_dtype(args.device)).removeprefix("torch.")
        machine = describe_machine(args.device)
        with open(args.out, "w") as handle:
            handle.write(
                "# Target speed per dtype\n\n"
                f"- Command: `{' '.join(['python', *sys.argv])}`\n"
                f"- Target: {args.target}, {args.device} ({machine}); `--dtype auto` picks {auto} here.\n"
                f"- Full cache, greedy, at most {args.max_new_tokens} new tokens; one timed run per row "
                f"(after a short warm-up), one process; ratios to {rows[0][0]}.\n\n{table}\n"
            )


if __name__ == "__main__":
    main()
