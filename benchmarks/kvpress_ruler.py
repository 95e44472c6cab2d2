"""kvpress's presses on draftwise's RULER samples, scored by the same code, records in the same format.

kvpress 0.5.5 pins ``transformers<5.3``, so it runs in a side environment with its own pins
(``benchmarks/kvpress.lock``: kvpress 0.5.5, transformers 5.2.0, torch 2.13.0), while draftwise's own
environment keeps transformers 5.23::

    bash scripts/setup.sh && bash scripts/setup-kvpress.sh
    .venv-kvpress/bin/python benchmarks/kvpress_ruler.py --tasks all --samples 5 --budgets 256,1024 \\
        --dtype float32 --batch-decode --out results/kvpress.jsonl

It reads the samples draftwise's harness caches (``draftwise bench samples`` makes them without loading
a model; same length, count and seed), splits each RULER prompt into context and question (the question
is its last line: kvpress compresses the context before it sees the question, unlike draftwise, whose
window holds the question), turns each budget into kvpress's per-sample
``compression_ratio = 1 - budget / context``, and appends one record per answer labelled
``kvpress-<press>@<budget>``. Only draftwise's RULER module is imported (no transformers-5.23 code),
through a namespace package.

**One pre-fill per sample** (the default): a kvpress press compresses a layer's cache *after* that
layer's attention has run over the whole context, so the hidden states every layer sees do not depend
on the press. The context is therefore pre-filled once, and at every layer each (press, budget) gets a
copy of the full keys and values and runs kvpress's own ``press.forward_hook`` on it, which leaves each
its own compressed cache, equal to what ``pipe(context, press=...)`` builds alone. Answers then come
from kvpress's own ``pipe.generate_answer``, or with ``--batch-decode`` from the same greedy loop run
on the presses whose caches have the same length together. ``--check`` compares those caches with
kvpress's own pre-fill, press by press, tensor for tensor (and batched answers with answers decoded
alone); ``--separate`` runs kvpress's pipeline end to end instead. ``--question-in-context`` compresses
the whole prompt, question included, as draftwise does (labels ``kvpress-<press>[q]@<budget>``).
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
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline  # noqa: E402

from draftwise.bench import ruler  # noqa: E402


def presses(names: list[str]) -> dict:
    """Press classes by the short names used in labels."""
    import kvpress

    table = {
        "snapkv": kvpress.SnapKVPress,
        "keydiff": kvpress.KeyDiffPress,
        "streamingllm": kvpress.StreamingLLMPress,
        "expectedattention": kvpress.ExpectedAttentionPress,
        "knorm": kvpress.KnormPress,
    }
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise SystemExit(f"unknown press(es) {unknown}; choose from {sorted(table)}")
    return {name: table[name] for name in names}


def language_model(model):
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


@torch.no_grad()
def shared_prefill(model, context_ids: torch.Tensor, by_label: dict) -> dict:
    """Pre-fill ``context_ids`` (1, n) once; return one compressed ``DynamicCache`` per label of
    ``by_label`` (label -> press), each made by that press's own ``forward_hook`` on a copy of the
    layer's full keys and values (batch, kv_heads, n, head_dim)."""
    full = DynamicCache()
    caches = {label: DynamicCache() for label in by_label}
    for press in by_label.values():
        press.post_init_from_model(model)

    def hook(module, args, kwargs, output):
        layer = module.layer_idx
        keys, values = full.layers[layer].keys, full.layers[layer].values
        for label, press in by_label.items():
            caches[label].update(keys, values, layer)  # a copy: the press replaces it with its choice
            press.forward_hook(module, args, {**kwargs, "past_key_values": caches[label]}, output)
        return output

    base = language_model(model)
    hooks = []
    try:
        for layer in base.layers:
            layer.self_attn.rotary_emb = base.rotary_emb  # as BasePress.__call__ does
            hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
        base(input_ids=context_ids, past_key_values=full)
    finally:
        for handle in hooks:
            handle.remove()
    return caches


@torch.no_grad()
def alone_prefill(model, context_ids: torch.Tensor, press) -> DynamicCache:
    """kvpress's own pre-fill for one press, as its pipeline runs it."""
    cache = DynamicCache()
    with press(model):
        language_model(model)(input_ids=context_ids, past_key_values=cache)
    return cache


def same_cache(a: DynamicCache, b: DynamicCache) -> bool:
    return len(a.layers) == len(b.layers) and all(
        torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
        for x, y in zip(a.layers, b.layers, strict=True)
    )


@torch.no_grad()
def batched_answers(pipe, question_ids: torch.Tensor, caches: list, context_length: int, max_new_tokens: int):
    """kvpress's ``generate_answer`` (greedy, stop at EOS) for several caches of the same length at once,
    one batched forward per step (on 2 CPU cores a batch of 4 took about 0.75x the time of 4 answers
    one by one). ``question_ids`` (1, q); ``caches`` are left as they were; returns one answer each."""
    model, batch = pipe.model, len(caches)
    cache = DynamicCache()
    for layer in range(len(caches[0].layers)):
        keys = torch.cat([c.layers[layer].keys for c in caches])
        values = torch.cat([c.layers[layer].values for c in caches])
        cache.update(keys, values, layer)
    ids = question_ids.expand(batch, -1)
    position_ids = torch.arange(context_length, context_length + ids.shape[1], device=ids.device)
    logits = model(
        input_ids=ids, past_key_values=cache, position_ids=position_ids.expand(batch, -1), logits_to_keep=1
    ).logits
    stop = model.generation_config.eos_token_id
    stop = torch.tensor(stop if isinstance(stop, list) else [stop], device=ids.device)
    tokens = [logits[:, -1].argmax(-1)]
    finished = torch.isin(tokens[-1], stop)
    next_position = position_ids[-1:] + 1
    for step in range(max_new_tokens - 1):
        if finished.all():
            break
        logits = model(
            input_ids=tokens[-1][:, None],
            past_key_values=cache,
            position_ids=(next_position + step).expand(batch, -1),
        ).logits
        tokens.append(logits[:, -1].argmax(-1))
        finished |= torch.isin(tokens[-1], stop)
    rows = torch.stack(tokens, dim=1)
    answers = []
    for row in rows:
        ends = torch.isin(row, stop).nonzero()
        kept = row if len(ends) == 0 else row[: int(ends[0]) + 1]  # up to and with the first EOS, as kvpress
        answers.append(str(pipe.tokenizer.decode(kept, skip_special_tokens=True)))
    return answers


def cache_shape(cache: DynamicCache) -> tuple:
    return tuple(layer.keys.shape for layer in cache.layers)


def done_labels(out: Path) -> set:
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: its answer is run again
            done.add((r["task"], r["length"], r["index"], r["label"]))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="the target's converted checkpoint (default: draftwise's cache)")
    parser.add_argument("--tasks", default="niah_single_1", help="comma-separated RULER tasks, or 'all'")
    parser.add_argument("--presses", default="snapkv,keydiff,streamingllm,expectedattention")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", "--budget", default="256", help="comma-separated KV budgets")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--separate", action="store_true", help="kvpress's pipeline end to end per answer")
    mode.add_argument(
        "--batch-decode",
        action="store_true",
        help="decode the answers whose compressed caches have the same length in one batch",
    )
    parser.add_argument(
        "--question-in-context",
        action="store_true",
        help="compress the whole prompt, question included (labels kvpress-<press>[q]@<budget>), "
        "as draftwise's methods do, instead of kvpress's context-then-question split",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="also pre-fill (and with --batch-decode, decode) each press alone; stop unless the compressed "
        "caches are identical (and the answers the same)",
    )
    parser.add_argument("--out", default="docs/results/ruler-4k.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    tasks = list(ruler.TASKS) if args.tasks == "all" else args.tasks.split(",")
    press_classes = presses(args.presses.split(","))

    checkpoint = args.checkpoint or next(
        str(p)
        for p in sorted((models.cache_dir() / "converted").glob("qwen2.5-coder-1.5b-instruct-*bfloat16"))
    )
    import kvpress  # noqa: F401  (registers the kv-press-text-generation pipeline)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, args.dtype)).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    out = Path(args.out)
    done = done_labels(out)
    engine = "pipeline per answer" if args.separate else "one pre-fill per sample"
    if args.batch_decode:
        engine += ", batched decode"
    common = {
        "length": args.length,
        "dtype": args.dtype,
        "device": "cpu",
        "engine": f"kvpress 0.5.5 ({engine})",
    }
    common |= {"kv_bytes": None, "draft_seconds": None}  # not measured through kvpress's pipeline
    samples = {}
    for task in tasks:
        try:
            samples[task] = ruler.load_or_generate(task, tokenizer, args.length, args.samples, seed=args.seed)
        except Exception as error:  # generating some tasks needs packages only draftwise's venv has
            raise SystemExit(
                f"no cached {task} samples and generating them here failed ({error!r}); run "
                f"`.venv/bin/draftwise bench samples --lengths {args.length} --samples {args.samples} "
                f"--seed {args.seed}` first"
            ) from error
    # sample-major: a run cut short still has the same number of samples on every task
    work = [(task, cases[k]) for k in range(args.samples) for task, cases in samples.items()]
    tag = "[q]" if args.question_in_context else ""
    with out.open("a") as sink:
        for task, case in work:
            new = min(ruler.TASKS[task].max_new_tokens, args.max_new_tokens)
            if args.question_in_context:
                context, question = case.prompt, ""  # kvpress then appends only the chat template's tail
            else:
                context, question = case.prompt.rsplit("\n", 1)
            context_tokens = len(tokenizer(context).input_ids)
            ratios = {b: max(0.0, 1 - b / context_tokens) for b in budgets}
            todo = {
                f"kvpress-{name}{tag}@{b}": (name, b)
                for b in budgets
                for name in press_classes
                if (task, args.length, case.index, f"kvpress-{name}{tag}@{b}") not in done
            }
            if not todo:
                continue
            by_label = {
                label: press_classes[name](compression_ratio=ratios[b]) for label, (name, b) in todo.items()
            }
            answers, prefill_seconds = {}, None  # label -> (answer, seconds, answers decoded together)
            if args.separate:
                for label, press in by_label.items():
                    start = time.perf_counter()
                    answer = pipe(
                        context,
                        question=question,
                        answer_prefix=case.answer_prefix,
                        press=press,
                        max_new_tokens=new,
                    )["answer"]
                    answers[label] = (answer, time.perf_counter() - start, 1)
            else:
                preprocess, _, _ = pipe._sanitize_parameters(
                    question=question, answer_prefix=case.answer_prefix
                )
                inputs = pipe.preprocess(context, **preprocess)
                context_ids = inputs["context_ids"].to(model.device)
                question_ids = inputs["questions_ids"][0].to(model.device)
                start = time.perf_counter()
                caches = shared_prefill(model, context_ids, by_label)
                prefill_seconds = time.perf_counter() - start
                if args.check:
                    for label, (name, b) in todo.items():
                        alone = alone_prefill(
                            model, context_ids, press_classes[name](compression_ratio=ratios[b])
                        )
                        if not same_cache(alone, caches[label]):
                            raise SystemExit(
                                f"{task} #{case.index} {label}: shared pre-fill differs from alone"
                            )
                        print("check", task, case.index, label, "identical caches", flush=True)
                groups: dict = {}
                for label, cache in caches.items():
                    key = cache_shape(cache) if args.batch_decode else label
                    groups.setdefault(key, []).append(label)
                for labels in groups.values():
                    start = time.perf_counter()
                    if len(labels) == 1:
                        with torch.no_grad():
                            texts = [
                                pipe.generate_answer(
                                    question_ids, caches[labels[0]], context_ids.shape[1], new
                                )
                            ]
                    else:
                        texts = batched_answers(
                            pipe, question_ids, [caches[x] for x in labels], context_ids.shape[1], new
                        )
                    seconds = time.perf_counter() - start
                    for label, text in zip(labels, texts, strict=True):
                        answers[label] = (text, seconds / len(labels), len(labels))
                        if args.check and len(labels) > 1:  # the batch built its own cache: these are intact
                            with torch.no_grad():
                                alone = pipe.generate_answer(
                                    question_ids, caches[label], context_ids.shape[1], new
                                )
                            if alone != text:
                                raise SystemExit(
                                    f"{task} #{case.index} {label}: batched answer {text!r} differs "
                                    f"from kvpress's own decode {alone!r}"
                                )
                            print("check", task, case.index, label, "same answer decoded alone", flush=True)
            for label, (answer, seconds, together) in answers.items():
                name, budget = todo[label]
                record = {
                    "task": task,
                    "index": case.index,
                    "label": label,
                    "method": f"kvpress-{name}{tag}",
                    "budget": budget,
                    "score": ruler.score(task, answer, case.answers),
                    "prediction": answer,
                    "answers": case.answers,
                    "prompt_tokens": case.prompt_tokens,
                    "kv_fraction": 1 - ratios[budget],  # of the context; kvpress keeps what follows whole
                    # shared mode: the one pre-fill (every press's compression included) and this answer's
                    # share of its (batched) question pre-fill and decode; separate: the pipeline's total
                    "prefill_seconds": prefill_seconds,
                    "decode_seconds": None if args.separate else seconds,
                    "decoded_together": together,
                    "total_seconds": seconds + (prefill_seconds or 0.0),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    **common,
                }
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                print(label, task, case.index, record["score"], repr(answer[:80]), flush=True)


if __name__ == "__main__":
    main()
