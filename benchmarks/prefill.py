"""Pre-fill time and memory of the target: dense vs SpecKV's sparse (vertical-slash) pre-fill, with the
fused FlexAttention kernel and the plain reference.

Runs each configuration on the same needle prompt in one process and reports ratios to the dense
pre-fill. Usage (after scripts/setup.sh):

    .venv/bin/python benchmarks/prefill.py --lengths 4096 8192 --sizes 1024 --out docs/results/prefill.md
    python benchmarks/prefill.py --device cuda --lengths 4096 16384 32000 --repeats 5 --out prefill-gpu.md

On a GPU each configuration is warmed up once, timed ``--repeats`` times (median, synchronized), and
its peak GPU memory is the allocator's peak during one run. On a CPU one short dense pre-fill warms the
process up first, and the fused kernel is compiled for each row's shapes before its timed runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from draftwise import SpecKV, load_model
from draftwise.bench.needle import needle_ids
from draftwise.flex_sparse import flex_vertical_slash_attention
from draftwise.models import load_untrained
from draftwise.options import ModelOptions, add_arguments
from draftwise.prefill import prefill
from draftwise.timing import machine as describe_machine


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_kernel(target, length: int, method: SpecKV) -> float:
    """Compile the fused sparse kernel for ``length`` tokens of ``target``'s attention shapes (once per
    padded shape; inductor's disk cache may already hold it); the seconds it took."""
    config = target.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    query = torch.zeros(1, heads, length, dim, dtype=target.dtype)
    key = torch.zeros(1, kv_heads, length, dim, dtype=target.dtype)
    verticals = torch.arange(method.vertical).expand(1, kv_heads, -1)
    start = time.perf_counter()
    flex_vertical_slash_attention(query, key, key, verticals, method.slash, dim**-0.5)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, ModelOptions, only=("target", "device", "dtype"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024], help="vertical = slash sizes to try")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--lookahead", type=int, default=24, help="lookahead tokens appended (random ids)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (median)")
    parser.add_argument(
        "--kernels", nargs="+", default=["flex", "reference"], help="sparse kernels to try (flex, reference)"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], metavar="LENGTH:SIZE:KERNEL", help="sparse rows left out"
    )
    parser.add_argument(
        "--random-weights", action="store_true",
        help="the model's config and tokenizer with random weights: its time per token, meaningless answers "
        "(for a machine its weights cannot reach)",
    )  # fmt: skip
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()
    load = load_untrained if args.random_weights else load_model
    args.skip = {(int(n), int(v), k) for n, v, k in (item.split(":") for item in args.skip)}
    compiled: dict[tuple[str, int], float] = {}  # CPU: seconds compiling the fused kernel, per row

    cuda = torch.device(args.device).type == "cuda"
    target, tokenizer = load(args.target, dtype=args.dtype, device=args.device)
    rows = []
    if not cuda:  # the first pre-fill of a process pays for paging the weights in: not any row's
        warm = needle_ids(tokenizer, 1024).to(args.device)
        prefill(target, warm, SpecKV(budget=args.budget, sparse_prefill=False))
    for length in args.lengths:
        ids = needle_ids(tokenizer, length).to(args.device)
        guess = torch.randint(0, 1000, (1, args.lookahead), generator=torch.Generator().manual_seed(0))
        guess = guess.to(args.device)
        configs = [("dense pre-fill + SpecKV pruning", SpecKV(budget=args.budget, sparse_prefill=False))]
        configs += [
            (
                f"sparse pre-fill V=S={size}, {kernel}",
                SpecKV(
                    budget=args.budget, sparse_prefill=True, vertical=size, slash=size, sparse_kernel=kernel
                ),
            )
            for size in args.sizes
            for kernel in args.kernels
            if (length, size, kernel) not in args.skip
        ]
        baseline = None
        for label, method in configs:
            print(f"[{length}] {label} ...", file=sys.stderr, flush=True)
            if cuda:  # warm-up: kernels, allocator
                prefill(target, ids, method, guess)
                torch.cuda.reset_peak_memory_stats()
            elif method.sparse_prefill and method.sparse_kernel == "flex":
                compiled[label, length] = compile_kernel(target, ids.shape[1] + args.lookahead, method)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                prefilled = prefill(target, ids, method, guess)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                top = int(prefilled.logits.argmax())
                del prefilled
            seconds = statistics.median(times)
            baseline = baseline or (seconds, top)
            memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
            rows.append((ids.shape[1], label, seconds, seconds / baseline[0], top == baseline[1], memory))

    memory = "peak GPU MiB" if cuda else "peak RSS MiB"
    lines = [
        f"| prompt tokens | configuration | pre-fill s | ratio to dense | same first token | {memory} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {n} | {label} | {s:.2f} | {r:.2f} | {'yes' if same else 'no'} | {rss:.0f} |"
        for n, label, s, r, same, rss in rows
    ]
    if compiled:
        lines += ["", "Compiling the fused kernel before its timed row (not in its seconds):", ""]
        lines += [f"- {n} tokens, {label}: {s:.1f} s" for (label, n), s in compiled.items()]
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = " ".join(["python", *sys.argv])
        dtype = str(target.dtype).removeprefix("torch.")
        machine = describe_machine(args.device)
        weights = (
            ' (its architecture, random weights: the same time per token; its answers, hence "same first '
            'token", mean nothing)'
        ) * args.random_weights
        with open(args.out, "w") as handle:
            handle.write(
                "# Pre-fill: dense vs SpecKV sparse pre-fill\n\n"
                f"- Command: `{command}`\n"
                f"- Target: {args.target}{weights}, {dtype}, {args.device} ({machine}).\n"
                f"- Budget {args.budget}, {args.lookahead} lookahead tokens; median of {args.repeats} "
                "run(s) per row, one process.\n"
                + (
                    "- Peak GPU memory: the allocator's peak over the timed runs of the row.\n\n"
                    if cuda
                    else "- Peak RSS is the process's peak so far (it only grows down the table).\n\n"
                )
                + f"{table}\n"
            )


if __name__ == "__main__":
    main()
