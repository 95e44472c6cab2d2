"""Pre-fill time of a model with sliding-window layers: transformers' dense pre-fill (every query-key pair
of a sliding layer computed, then masked) against draftwise's windowed pre-fill (each block of queries
reads only its band, ``draftwise/windowed.py``), side by side in one process, on the same prompts.

Two jobs per length: the model's plain pre-fill, and SpecPC's draft pass (the pre-fill, the lookahead
and the scores: what `draftwise serve --upstream` does per request). Usage (after scripts/setup.sh):

    .venv/bin/python benchmarks/windowed.py --target gemma-3-270m --lengths 2048 4096 8192 16384 \
        --out docs/results/windowed.md

Rows alternate (dense, windowed, dense, ...) so that drift in the machine's speed hits both alike;
each row is the median of ``--repeats`` runs after one untimed warm-up of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import nullcontext

import torch
from transformers import DynamicCache

import draftwise.windowed
from draftwise import SpecPC, load_model
from draftwise.bench.needle import needle_ids
from draftwise.models import load_untrained
from draftwise.options import ModelOptions, add_arguments
from draftwise.timing import machine as describe_machine
from draftwise.timing import now
from draftwise.windowed import WindowedPrefill, sliding_window


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, ModelOptions, only=("target", "device", "dtype"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--budget", type=int, default=1024, help="SpecPC's prompt budget")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument(
        "--random-weights", action="store_true",
        help="the model's config and tokenizer with random weights: its time per token, meaningless answers "
        "(for a machine its weights cannot reach)",
    )  # fmt: skip
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()
    load = load_untrained if args.random_weights else load_model

    model, tokenizer = load(args.target, dtype=args.dtype, device=args.device)
    window = sliding_window(model)
    if window is None:
        parser.error(f"{args.target} has no sliding-window layer: nothing to compare")
    method = SpecPC(budget=args.budget)
    draftwise.windowed.WINDOWED_FROM = {}  # SpecPC opens none of its own: each side says which pre-fill

    def prefill(ids):
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return int(out.logits.argmax())

    def draft_pass(ids):
        scores, _ = method.token_scores(model, ids)
        return method.choose(scores)

    rows = []
    for length in args.lengths:
        ids = needle_ids(tokenizer, length).to(args.device)
        for job, run in (("pre-fill", prefill), (f"SpecPC@{args.budget} draft pass", draft_pass)):
            timings = {"dense": [], "windowed": []}
            answers = {}
            for repeat in range(args.repeats + 1):  # the first of each side is a warm-up
                for side in timings:
                    print(f"[{ids.shape[1]}] {job}, {side} ({repeat}) ...", file=sys.stderr, flush=True)
                    context = WindowedPrefill(model) if side == "windowed" else nullcontext()
                    with torch.no_grad(), context:
                        start = now()
                        answers[side] = run(ids)
                        seconds = now() - start
                    if repeat:
                        timings[side].append(seconds)
            dense, windowed = (statistics.median(timings[s]) for s in ("dense", "windowed"))
            dense_answer, windowed_answer = answers["dense"], answers["windowed"]
            if isinstance(dense_answer, int):  # the next token
                same = "yes" if dense_answer == windowed_answer else "no"
            else:  # SpecPC's kept tokens: the share both kept
                shared = len(set(dense_answer.tolist()) & set(windowed_answer.tolist()))
                same = f"{100 * shared / len(dense_answer):.1f}% shared"
            rows.append((ids.shape[1], job, dense, windowed, same))

    lines = [
        "| prompt tokens | job | dense s | windowed s | ratio | same result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {job} | {d:.2f} | {w:.2f} | {w / d:.2f} | {same} |" for n, job, d, w, same in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = " ".join(["python", *sys.argv])
        dtype = str(model.dtype).removeprefix("torch.")
        weights = "; random weights: the same time per token" if args.random_weights else ""
        with open(args.out, "w") as handle:
            handle.write(
                "# Windowed pre-fill: sliding-window layers read only their band\n\n"
                f"- Command: `{command}`\n"
                f"- Model: {args.target} (sliding window {window}{weights}), {dtype}, {args.device} "
                f"({describe_machine(args.device)}).\n"
                f"- Median of {args.repeats} runs per row after a warm-up, dense and windowed alternating. "
                "Same result: the pre-fill's next token; for SpecPC, the share of its kept tokens both sides "
                "kept (bf16 rounding moves near-ties).\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
