"""kvpress's presses on draftwise's RULER samples, scored by the same code, records in the same format.

kvpress 0.5.5 pins ``transformers<5.3``, so it runs in a side environment with its own pins
(draftwise's own environment keeps transformers 5.23)::

    python3 -m venv .venv-kvpress
    .venv-kvpress/bin/pip install torch==2.13.0 "transformers>=4.56,<5.3" kvpress==0.5.5
    .venv-kvpress/bin/python benchmarks/kvpress_ruler.py --tasks niah_single_1,vt --samples 1 \\
        --budget 256 --out docs/results/ruler-4k.jsonl

It reads the samples draftwise's harness cached (run ``draftwise bench ruler`` first, same length and
seed), splits each RULER prompt into context and question (the question is its last line: kvpress
compresses the context before it sees the question, unlike draftwise, whose window holds the
question), turns the budget into kvpress's per-sample ``compression_ratio = 1 - budget / context``,
and appends one record per answer labelled ``kvpress-<press>@<budget>``. Only draftwise's RULER
module is imported (no transformers-5.23 code), through a namespace package.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
package = types.ModuleType("draftwise")  # import draftwise.bench.ruler without draftwise/__init__.py
package.__path__ = [str(ROOT / "draftwise")]
sys.modules.setdefault("draftwise", package)
models = types.ModuleType("draftwise.models")
models.cache_dir = lambda: Path.home() / ".cache" / "draftwise"
sys.modules.setdefault("draftwise.models", models)

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from draftwise.bench import ruler  # noqa: E402


def presses(names: list[str]):
    import kvpress

    table = {
        "snapkv": kvpress.SnapKVPress,
        "keydiff": kvpress.KeyDiffPress,
        "streamingllm": kvpress.StreamingLLMPress,
        "expectedattention": kvpress.ExpectedAttentionPress,
        "knorm": kvpress.KnormPress,
    }
    return {name: table[name] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="the target's converted checkpoint (default: draftwise's cache)")
    parser.add_argument("--tasks", default="niah_single_1")
    parser.add_argument("--presses", default="snapkv,keydiff,streamingllm,expectedattention")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", default="docs/results/ruler-4k.jsonl")
    args = parser.parse_args()

    checkpoint = args.checkpoint or next(
        str(p)
        for p in sorted((models.cache_dir() / "converted").glob("qwen2.5-coder-1.5b-instruct-*bfloat16"))
    )
    import kvpress  # noqa: F401  (registers the kv-press-text-generation pipeline)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, args.dtype)).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.add((r["task"], r["length"], r["index"], r["label"]))
    with out.open("a") as sink:
        for task in args.tasks.split(","):
            cases = ruler.load_or_generate(task, tokenizer, args.length, args.samples, seed=args.seed)
            new = min(ruler.TASKS[task].max_new_tokens, args.max_new_tokens)
            for case in cases:
                context, question = case.prompt.rsplit("\n", 1)
                context_tokens = len(tokenizer(context).input_ids)
                for name, press_class in presses(args.presses.split(",")).items():
                    label = f"kvpress-{name}@{args.budget}"
                    if (task, args.length, case.index, label) in done:
                        continue
                    ratio = max(0.0, 1 - args.budget / context_tokens)
                    start = time.perf_counter()
                    answer = pipe(
                        context,
                        question=question,
                        answer_prefix=case.answer_prefix,
                        press=press_class(compression_ratio=ratio),
                        max_new_tokens=new,
                    )["answer"]
                    record = {
                        "task": task,
                        "length": args.length,
                        "index": case.index,
                        "label": label,
                        "method": f"kvpress-{name}",
                        "budget": args.budget,
                        "score": ruler.score(task, answer, case.answers),
                        "prediction": answer,
                        "answers": case.answers,
                        "prompt_tokens": case.prompt_tokens,
                        "kv_fraction": 1 - ratio,  # of the context; kvpress keeps the question whole
                        "kv_bytes": None,  # not measured through kvpress's pipeline
                        "draft_seconds": None,
                        "prefill_seconds": None,
                        "decode_seconds": None,
                        "total_seconds": time.perf_counter() - start,
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    }
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()
                    print(label, task, case.index, record["score"], repr(answer[:80]), flush=True)


if __name__ == "__main__":
    main()
