"""Throughput of batched decoding over compressed caches, side by side with serving one at a time.

For each method, ``max(--concurrency)`` distinct needle prompts of ``--tokens`` tokens are compressed once
each (draft work, pre-fill, pruning: :func:`draftwise.generate.compress`, timed). Then, from copies of
the same compressed caches:

- **one at a time**: each row decodes alone (:func:`draftwise.decoding.decode`), timed;
- **batched**: for each concurrency ``c``, the first ``c`` rows decode together
  (:class:`draftwise.batching.BatchDecoder`: one forward per step over every running row), timed, with
  each row's finishing time.

Both modes run greedy, up to ``--max-new-tokens`` (rows stop at the end-of-sequence token), and every
batched row is checked to give the tokens it gives alone. All ``c`` requests arrive at once. Latency of
request ``i`` (its answer complete):

- one at a time: the compressions and decodes of requests ``1..i``, one after the other;
- batched (as ``generate_batch`` and the server's scheduler run them when all arrive together): all
  ``c`` compressions, then the row's finishing time in the batched decode.

Requests per minute: ``c`` over the last latency. Aggregate decode tokens/s: the tokens decoded over
decode seconds (lookahead tokens the target accepted come with the compression and are not counted
there; their count is in the "accepted" column). KV bytes: the most the batch's cache held (one at a
time: the largest single cache). Peak RSS: the process's resident memory (both models and every
compressed cache the run holds), sampled every 20 ms during each decode phase. The memory-limit
table applies the server's admission rule (:func:`draftwise.checks.reserved_kv_bytes`, rows padded to
the widest) to each method's requests under one ``--kv-cache-memory``.

    .venv/bin/python benchmarks/throughput.py --methods full,speckv@256,snapkv@256,specpc@1024 \\
        --concurrency 1,4,8,16 --tokens 4000 --out docs/results/throughput.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from draftwise.batching import BatchDecoder, Row
from draftwise.bench.entries import ALIASES
from draftwise.bench.needle import needle_case
from draftwise.cache import cache_bytes
from draftwise.checks import kv_cache_bytes, reserved_kv_bytes
from draftwise.decoding import Sampler, decode
from draftwise.generate import compress, plan_generation
from draftwise.methods import build_method
from draftwise.models import load_model
from draftwise.options import ModelOptions, add_arguments
from draftwise.timing import machine as describe_machine
from draftwise.timing import now


class RSSPeak:
    """The most resident memory (MiB) seen while inside, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()

    @staticmethod
    def current() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def parse_method(spec: str):
    """``name@budget``: a method or an alias of the RULER harness (e.g. ``speckv-noaccept@256``)."""
    name, _, budget = spec.partition("@")
    if name in ALIASES:
        cls, options = ALIASES[name]
        return build_method(cls.name, **options, budget=int(budget) if budget else None)
    return build_method(name, budget=int(budget) if budget else None)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_method(target, draft, tokenizer, spec: str, prompts: list, concurrency: list[int], args) -> dict:
    method = parse_method(spec)
    ready, compress_seconds, plans = [], [], []
    for prompt in tqdm(prompts, desc=f"{spec}: compress", unit="prompt"):
        plan = plan_generation(target, draft, tokenizer, prompt, method, args.max_new_tokens)
        start = now()
        ready.append(compress(target, plan))
        compress_seconds.append(now() - start)
        plans.append(plan)
    stop_ids = plans[0].stop_ids

    def fresh_row(r, max_new_tokens: int) -> Row:
        """A row decoding from a copy of ``r``'s cache (its accepted lookahead first)."""
        fresh = replace(r.prefilled, cache=deepcopy(r.prefilled.cache))
        made = Row.after(fresh, r.kept_length, max_new_tokens, Sampler())
        made.stop_ids = stop_ids
        return made

    # warm-up (first-call set-up is not timed): one short decode alone and one batched step
    decode(target, deepcopy(ready[0].prefilled.cache), ready[0].prefilled.logits, ready[0].kept_length, 2)
    warm = BatchDecoder(target)
    for r in ready[:2]:
        warm.add(fresh_row(r, 2))
    while warm.rows:
        warm.step()
    del warm

    alone_tokens, alone_seconds, alone_accepted = [], [], []
    with RSSPeak() as alone_rss:
        for r in tqdm(ready, desc=f"{spec}: decode one at a time", unit="request"):
            prefilled, cache = r.prefilled, deepcopy(r.prefilled.cache)
            start = now()
            tokens = list(prefilled.accepted[: args.max_new_tokens])  # as generate: the accepted first
            alone_accepted.append(len(tokens))
            if len(tokens) < args.max_new_tokens and not (tokens and tokens[-1] in stop_ids):
                more = decode(
                    target,
                    cache,
                    prefilled.logits,
                    r.kept_length + len(tokens),
                    args.max_new_tokens - len(tokens),
                    None,
                    stop_ids,
                    first_token=prefilled.next_token,
                )
                tokens += more[0].tolist()
            alone_seconds.append(now() - start)
            alone_tokens.append(tokens)
            del cache

    results = []
    for c in concurrency:
        rows = [fresh_row(r, args.max_new_tokens) for r in ready[:c]]
        finished_at: dict[int, float] = {}
        most_bytes = 0
        with RSSPeak() as batch_rss:
            decoder = BatchDecoder(target)
            start = now()
            for i, row in enumerate(rows):
                if not decoder.add(row):
                    finished_at[i] = now() - start
            while decoder.rows:
                most_bytes = max(most_bytes, cache_bytes(decoder.cache))
                for row in decoder.step():
                    finished_at[rows.index(row)] = now() - start
            batch_seconds = now() - start
        del decoder
        same = sum(row.tokens == alone_tokens[i] for i, row in enumerate(rows))
        new_tokens = sum(len(row.tokens) for row in rows)
        decoded = new_tokens - sum(row.accepted for row in rows)  # accepted lookahead: not decoded
        # latencies when all c requests arrive at once
        serial, clock = [], 0.0
        for i in range(c):
            clock += compress_seconds[i] + alone_seconds[i]
            serial.append(clock)
        compressed_all = sum(compress_seconds[:c])
        batched = [compressed_all + finished_at[i] for i in range(c)]
        alone_decode = sum(alone_seconds[:c])
        alone_decoded = sum(len(t) for t in alone_tokens[:c]) - sum(alone_accepted[:c])
        results.append(
            {
                "concurrency": c,
                "new_tokens": new_tokens,
                "accepted_tokens": new_tokens - decoded,
                "same_tokens_as_alone": same,
                "decode_tps_alone": alone_decoded / alone_decode if alone_decode else 0.0,
                "decode_tps_batched": decoded / batch_seconds,
                "decode_seconds_alone": alone_decode,
                "decode_seconds_batched": batch_seconds,
                "requests_per_minute_alone": 60 * c / serial[-1],
                "requests_per_minute_batched": 60 * c / max(batched),
                "latency_p50_alone": percentile(serial, 50),
                "latency_p95_alone": percentile(serial, 95),
                "latency_p50_batched": percentile(batched, 50),
                "latency_p95_batched": percentile(batched, 95),
                "kv_bytes_alone": max(r.kv_bytes for r in ready[:c]),
                "kv_bytes_batched": most_bytes,
                "peak_rss_mib_alone": alone_rss.peak,
                "peak_rss_mib_batched": batch_rss.peak,
            }
        )
        print(json.dumps({"method": spec, **results[-1]}), file=sys.stderr, flush=True)
    return {
        "method": spec,
        "prompt_tokens": statistics.mean(p.prompt_length for p in plans),
        "prompt_tokens_read": statistics.mean(r.kept_length for r in ready),
        "kv_pairs_kept": statistics.mean(r.kv_pairs_kept for r in ready),
        "kv_bytes_per_request": statistics.mean(r.kv_bytes for r in ready),
        "compress_seconds": statistics.mean(compress_seconds),
        "reserved_bytes": reserved_kv_bytes(target, method, plans[0].prompt_length, args.max_new_tokens),
        "by_concurrency": results,
    }


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"  # nothing decoded: every token was accepted


def rows_at_once(reserved: int, limit: int, max_batch: int) -> int:
    """How many equal requests the server's admission rule lets decode together under ``limit``."""
    return max(1, min(max_batch, limit // reserved))


def report(runs: list[dict], args, machine: str, limit: int) -> str:
    command = "python " + " ".join(sys.argv)
    lines = [
        "# Throughput: batched decoding over compressed caches vs one at a time",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Prompts: {args.tokens}-token needle chats (distinct seeds), greedy, up to "
        f"{args.max_new_tokens} new tokens (rows stop at end of sequence). Method of measurement: "
        "`benchmarks/throughput.py`'s docstring.",
        "",
        "## Decode throughput and latency (all requests arrive at once)",
        "",
        "| method | c | decode tok/s alone | batched | batched / alone | req/min alone | batched | "
        "p50 latency alone (s) | batched | p95 alone | batched | KV MiB alone | batched | "
        "peak RSS MiB alone | batched | accepted | same tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: |",
    ]
    full = {r["concurrency"]: r for run in runs if run["method"] == "full" for r in run["by_concurrency"]}
    for run in runs:
        for r in run["by_concurrency"]:
            mib = 2**20
            lines.append(
                f"| {run['method']} | {r['concurrency']} | {r['decode_tps_alone']:.2f} | "
                f"{r['decode_tps_batched']:.2f} | {_ratio(r['decode_tps_batched'], r['decode_tps_alone'])} | "
                f"{r['requests_per_minute_alone']:.2f} | {r['requests_per_minute_batched']:.2f} | "
                f"{r['latency_p50_alone']:.1f} | {r['latency_p50_batched']:.1f} | "
                f"{r['latency_p95_alone']:.1f} | {r['latency_p95_batched']:.1f} | "
                f"{r['kv_bytes_alone'] / mib:.1f} | {r['kv_bytes_batched'] / mib:.1f} | "
                f"{r['peak_rss_mib_alone']:.0f} | {r['peak_rss_mib_batched']:.0f} | "
                f"{r.get('accepted_tokens', 0)}/{r['new_tokens']} | "
                f"{r['same_tokens_as_alone']}/{r['concurrency']} |"
            )
    if full:
        lines += [
            "",
            "## Batched, as a ratio to Full batched at the same concurrency",
            "",
            "| method | c | decode tok/s vs Full | req/min vs Full | p50 latency vs Full | "
            "KV bytes vs Full |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in runs:
            for r in run["by_concurrency"]:
                f = full.get(r["concurrency"])
                if f is None:
                    continue
                lines.append(
                    f"| {run['method']} | {r['concurrency']} | "
                    f"{_ratio(r['decode_tps_batched'], f['decode_tps_batched'])} | "
                    f"{r['requests_per_minute_batched'] / f['requests_per_minute_batched']:.2f}x | "
                    f"{r['latency_p50_batched'] / f['latency_p50_batched']:.2f}x | "
                    f"{r['kv_bytes_batched'] / f['kv_bytes_batched']:.3f} |"
                )
    lines += [
        "",
        f"## Requests at once under `--kv-cache-memory {limit / 2**20:.0f}` (the server's admission rule)",
        "",
        "| method | prompt tokens | tokens the target read | KV pairs kept per head | compress s | "
        "reserved per request MiB | rows at once "
        f"(max batch {args.max_batch}) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run['method']} | {run['prompt_tokens']:.0f} | {run['prompt_tokens_read']:.0f} | "
            f"{run['kv_pairs_kept']:.0f} | "
            f"{run['compress_seconds']:.1f} | {run['reserved_bytes'] / 2**20:.1f} | "
            f"{rows_at_once(run['reserved_bytes'], limit, args.max_batch)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, ModelOptions)
    parser.add_argument("--methods", default="full,speckv@256,snapkv@256,specpc@1024")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=4000, help="haystack tokens per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--kv-cache-memory", type=float, default=None, metavar="MIB",
        help="the limit of the memory table (default: 8 Full requests' worth)",
    )  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=64, help="the memory table's batch limit")
    parser.add_argument("--out", help="write a Markdown report here (and the raw numbers next to it, .json)")
    parser.add_argument(
        "--merge", action="append", default=[], metavar="JSON",
        help="also report the runs of an earlier run's .json (listed first)",
    )  # fmt: skip
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    target, tokenizer = load_model(args.target, dtype=args.dtype, device=args.device)
    draft = None
    if args.draft and args.draft != "none":
        draft, _ = load_model(args.draft, dtype=args.dtype, device=args.device)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    prompts = [
        needle_case(tokenizer, context_tokens=args.tokens, seed=s).messages for s in range(max(concurrency))
    ]
    runs = [run for path in args.merge for run in json.loads(Path(path).read_text())]
    runs += [
        run_method(target, draft, tokenizer, spec, prompts, concurrency, args)
        for spec in args.methods.split(",")
    ]
    n = round(runs[0]["prompt_tokens"])
    limit = (
        int(args.kv_cache_memory * 2**20)
        if args.kv_cache_memory
        else 8 * kv_cache_bytes(target, n + args.max_new_tokens)
    )
    text = report(runs, args, describe_machine(), limit)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
