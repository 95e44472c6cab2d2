"""Speculative decoding with the draft: decode speed and acceptance, plain vs fixed k vs AdaEDL, in one run.

Prompts: ``--documents`` summaries (``--tokens``-token essays from the haystack, "summarize" asked,
``--summary-tokens`` new tokens) and RULER samples (``--ruler-tasks`` at ``--tokens``, their own answer
lengths, at most 48 tokens). For each prompt and draft (``qwen``: the embedded 0.5B, ``self``: the
target's first half as an early-exit draft), each cache method (Full, SpecKV@256) generates greedily:
plainly, and speculatively with each ``--modes`` entry (``kN``: fixed N; ``edlN``: up to N tokens with
AdaEDL's entropy stop at ``--entropy-threshold``; ``lookupN``: up to N tokens looked up in the
prompt, no model proposing, run with the first draft only). The target's pre-fill and the draft's
lookahead are shared per prompt and draft (``SharedPrefill``; every record's seconds count them as
if alone), and so is the draft's cache of the prompt where the method's lookahead built it; Full pays
a draft pre-fill, counted in its decode seconds.

Decode tokens/s: tokens decoded (the answer but the accepted lookahead) over decode seconds (the
draft's work included). Every speculative answer is compared with the plain one (greedy: they match
unless bf16 rounding differs between reading 1 and k+1 tokens at an exact tie).

    .venv/bin/python benchmarks/specdec.py --out docs/results/specdec.md

Records go to ``--records`` (JSONL, resumable: a rerun skips what is there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from draftwise import SpecKV, SpeculativeConfig, generate, self_draft
from draftwise.bench import ruler
from draftwise.bench.needle import haystack
from draftwise.generate import encode
from draftwise.methods import Full
from draftwise.models import load_model
from draftwise.options import ModelOptions, add_arguments
from draftwise.shared_prefill import SharedPrefill
from draftwise.timing import machine as describe_machine


def document_prompts(tokenizer, count: int, tokens: int) -> list[tuple[str, torch.Tensor]]:
    """``count`` essay excerpts of ``tokens`` tokens, each followed by a request for a summary."""
    text = haystack()
    prompts = []
    for i in range(count):
        start = (i + 1) * len(text) // (count + 2)
        ids = tokenizer(text[start : start + tokens * 6], add_special_tokens=False).input_ids[:tokens]
        content = tokenizer.decode(ids) + "\n\nSummarize the text above in detail, point by point."
        prompts.append((f"summary-{i}", encode(tokenizer, [{"role": "user", "content": content}])))
    return prompts


def ruler_prompts(
    tokenizer, tasks: list[str], samples: int, length: int
) -> list[tuple[str, torch.Tensor, int]]:
    out = []
    for task in tasks:
        for case in ruler.load_or_generate(task, tokenizer, length, samples):
            ids = torch.tensor([ruler.prompt_ids(tokenizer, case.prompt, case.answer_prefix)])
            out.append((f"{task}-{case.index}", ids, min(48, ruler.TASKS[task].max_new_tokens)))
    return out


def config_for(mode: str, threshold: float) -> SpeculativeConfig | None:
    if mode == "plain":
        return None
    if mode.startswith("lookup"):
        return SpeculativeConfig(k=int(mode[6:]), proposer="lookup")
    if mode.startswith("edl"):
        return SpeculativeConfig(k=int(mode[3:]), entropy_threshold=threshold)
    return SpeculativeConfig(k=int(mode.removeprefix("k")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, ModelOptions)
    parser.add_argument("--drafts", default="qwen,self", help="qwen (the --draft model) and/or self")
    parser.add_argument(
        "--modes", default="k4,edl8,lookup8", help="speculative settings besides plain (lookupN: first draft)"
    )
    parser.add_argument("--entropy-threshold", type=float, default=0.4)
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--summary-tokens", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ruler-tasks", default="niah_single_2,niah_multikey_1,vt,qa_1")
    parser.add_argument("--ruler-samples", type=int, default=1)
    parser.add_argument("--budget", type=int, default=256, help="SpecKV's budget")
    parser.add_argument("--records", default="docs/results/specdec.jsonl")
    parser.add_argument("--out", help="write the Markdown report here")
    parser.add_argument("--report-only", action="store_true", help="only summarize --records")
    args = parser.parse_args()
    modes = ["plain", *args.modes.split(",")]
    if args.report_only:
        records = [json.loads(line) for line in Path(args.records).read_text().splitlines() if line.strip()]
        write_report(args, records, modes, None)
        return

    target, tokenizer = load_model(args.target, dtype=args.dtype, device=args.device)
    drafts = {}
    for name in args.drafts.split(","):
        if name == "self":
            drafts[name] = self_draft(target)
        else:
            drafts[name] = load_model(args.draft, dtype=args.dtype, device=args.device)[0]
    prompts = [
        (label, ids, args.summary_tokens)
        for label, ids in document_prompts(tokenizer, args.documents, args.tokens)
    ]
    if args.ruler_tasks:
        prompts += ruler_prompts(tokenizer, args.ruler_tasks.split(","), args.ruler_samples, args.tokens)
    methods = {"full": Full(), f"speckv@{args.budget}": SpecKV(budget=args.budget)}
    # warm-up: the first forwards of a process may take other kernels (and round differently) than the
    # rest; nothing before this is measured
    for draft in drafts.values():
        generate(target, draft, tokenizer, "Warm up.", max_new_tokens=4, speculative=SpeculativeConfig(k=2))

    path = Path(args.records)
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[(record["prompt"], record["draft"], record["method"], record["mode"])] = record
    records = list(done.values())
    with path.open("a") as sink:
        for prompt_label, ids, new_tokens in prompts:
            for d, (draft_name, draft) in enumerate(drafts.items()):
                stages = [m.kv_stage() for m in methods.values()]
                shared = SharedPrefill(
                    observed_queries=max([s.observed_queries(ids.shape[1]) for s in stages if s] + [0])
                )
                plain_tokens = {}
                for method_label, method in methods.items():
                    for mode in modes:
                        if d and mode.startswith("lookup"):
                            continue  # no draft model proposes: measured once
                        key = (prompt_label, draft_name, method_label, mode)
                        if key in done:
                            if mode == "plain":
                                plain_tokens[method_label] = done[key]["token_ids"]
                            continue
                        print(" ".join(key), "...", file=sys.stderr, flush=True)
                        out = generate(
                            target,
                            draft,
                            tokenizer,
                            ids,
                            method=method,
                            max_new_tokens=new_tokens,
                            reuse=shared,
                            speculative=config_for(mode, args.entropy_threshold),
                        )
                        stats = out.stats
                        if mode == "plain":
                            plain_tokens[method_label] = out.token_ids
                        decoded = stats.new_tokens - stats.lookahead_accepted
                        record = {
                            "prompt": prompt_label,
                            "draft": draft_name,
                            "method": method_label,
                            "mode": mode,
                            "prompt_tokens": ids.shape[1],
                            "token_ids": out.token_ids,
                            "same_as_plain": out.token_ids == plain_tokens.get(method_label),
                            "decoded_tokens": decoded,
                            "decode_tokens_per_second": decoded / stats.decode_seconds
                            if stats.decode_seconds
                            else None,
                            **stats.as_dict(),
                        }
                        sink.write(json.dumps(record) + "\n")
                        sink.flush()
                        records.append(record)
    write_report(args, records, modes, target.dtype)


def write_report(args, records: list[dict], modes: list[str], dtype) -> None:
    report = summarize(records, modes)
    print(report)
    if args.out:
        machine = describe_machine(args.device)
        header = (
            "# Speculative decoding with the draft\n\n"
            f"- Command: `{' '.join(['python', *sys.argv])}`\n"
            f"- Target {args.target}, drafts {args.drafts} (qwen: {args.draft}; self: the target's first "
            "half), "
            f"{str(dtype or 'dtype ' + args.dtype).removeprefix('torch.')}, {args.device} ({machine}).\n"
            f"- Records: `{args.records}`.\n\n"
        )
        Path(args.out).write_text(header + report + "\n")


def summarize(records: list[dict], modes: list[str]) -> str:
    """Per prompt kind (summaries, RULER), draft and cache method: decode tokens/s of each mode (mean
    over prompts), its ratio to plain, acceptance, and answers equal to plain's."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    key = ("prompt", "draft", "method")
    answers = {tuple(r[k] for k in key): r["token_ids"] for r in records if r["mode"] == "plain"}

    for r in records:
        r["same_as_plain"] = r["token_ids"] == answers.get(tuple(r[k] for k in key))
        kind = "summary" if r["prompt"].startswith("summary") else "ruler"
        groups.setdefault((kind, r["draft"], r["method"]), {}).setdefault(r["mode"], []).append(r)
    lines = [
        "| prompts | draft | cache | mode | answers | decode tok/s | vs plain | drafted | accepted | "
        "same as plain | total s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (kind, draft, method), by_mode in sorted(groups.items()):
        plain = by_mode.get("plain", [])
        base = _rate(plain)
        for mode in modes:
            rows = by_mode.get(mode, [])
            if not rows:
                continue
            rate = _rate(rows)
            drafted = sum(r["speculative_drafted"] for r in rows)
            accepted = sum(r["speculative_accepted"] for r in rows)
            share = f"{100 * accepted / drafted:.0f}%" if drafted else "-"
            same = sum(bool(r["same_as_plain"]) for r in rows) if mode != "plain" else len(rows)
            ratio = f"{rate / base:.2f}x" if base and rate else "-"
            total = statistics.mean(r["total_seconds"] for r in rows)
            lines.append(
                f"| {kind} | {draft} | {method} | {mode} | {len(rows)} | {rate:.2f} | {ratio} | {drafted} | "
                f"{share} | {same}/{len(rows)} | {total:.1f} |"
            )
    return "\n".join(lines)


def _rate(rows: list[dict]) -> float:
    """Decode tokens over decode seconds, summed over ``rows`` (answers done within pre-fill count 0 s)."""
    seconds = sum(r["decode_seconds"] for r in rows)
    return sum(r["decoded_tokens"] for r in rows) / seconds if seconds else 0.0


if __name__ == "__main__":
    main()
