"""How a run is measured: RULER samples x methods x budgets, one JSONL record per answer.

Records are appended as they come, so a killed run resumes where it stopped (finished
``(task, length, index, label)`` entries are skipped). Per prompt, the target's plain pre-fill and
the draft's lookaheads are shared between KV methods through :class:`draftwise.reuse.Reuse`, which
changes no answer; every record's seconds include the shared work, as if the method ran alone.
"""

from __future__ import annotations

import json
import resource
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from draftwise.bench import ruler
from draftwise.generate import generate
from draftwise.mapping import render, same_tokenizer
from draftwise.methods import H2O, METHODS, TOVA, AdaKV, Method, PyramidKV, SnapKV, build_method
from draftwise.reuse import Reuse

# Names for combinations: the draft lookahead over another scorer, CAOTE over another scorer.
ALIASES: dict[str, tuple[type[Method], dict]] = {
    "ada-speckv": (AdaKV, {"lookahead": None}),
    "pyramid-speckv": (PyramidKV, {"lookahead": None}),
    "snapkv-caote": (SnapKV, {"caote": True}),
    # SnapKV as kvpress 0.5.5's SnapKVPress sets it: 64 observation queries, their attention averaged
    # (over queries and grouped heads) and smoothed by a width-5 average
    "snapkv-kvpress": (SnapKV, {"window": 64, "kernel": 5, "pool": "avg", "reduce": "mean"}),
    "h2o-caote": (H2O, {"caote": True}),
    "tova-caote": (TOVA, {"caote": True}),
}


@dataclass(frozen=True)
class Entry:
    """One column of a comparison: a label such as ``speckv@256`` and its method."""

    label: str
    method: Method


def build_entries(names: Iterable[str], budgets: Iterable[int], prompt_budgets: Iterable[int]) -> list[Entry]:
    """KV methods at each of ``budgets``, prompt methods at each of ``prompt_budgets``, SpecKV-PC at
    each KV budget with the largest prompt budget, Full once."""
    budgets, prompt_budgets = list(budgets), list(prompt_budgets)
    entries: list[Entry] = []
    for name in names:
        if name in ALIASES:
            cls, options = ALIASES[name]
        elif name in METHODS:
            cls, options = METHODS[name], {}
        else:
            known = ", ".join([*METHODS, *ALIASES])
            raise ValueError(f"unknown method {name!r}; choose from {known}")
        probe = cls(**options)
        kv_stage, prompt_stage = probe.kv_stage(), probe.prompt_stage()
        if kv_stage is None and prompt_stage is None:  # Full: nothing to budget
            entries.append(Entry(name, probe))
        elif kv_stage is not None and prompt_stage is not None:  # a cascade, over the largest prompt budget
            top = max(prompt_budgets)
            entries += [
                Entry(f"{name}@{b}", build_method(cls.name, **options, budget=b, prompt_budget=top))
                for b in budgets
            ]
        else:
            sizes = budgets if kv_stage is not None else prompt_budgets
            entries += [Entry(f"{name}@{b}", replace(probe, budget=b)) for b in sizes]
    return entries


def read_records(path: str | Path) -> list[dict]:
    """All records of a results file (a torn last line, from a killed run, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def record_key(record: dict) -> tuple:
    return record["task"], record["length"], record["index"], record["label"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _observed_queries(entries: list[Entry], n: int) -> int:
    """The most trailing queries a method that prunes the whole prompt's cache reads: one observed
    pre-fill (:class:`~draftwise.reuse.Reuse`) serves them all."""
    pruning = [e.method.kv_stage() for e in entries if e.method.prompt_stage() is None]
    return max([stage.observed(n) for stage in pruning if stage is not None] + [0])


def _budget(method: Method) -> int | None:
    """What a record calls the budget: the KV pairs kept if the method prunes the cache (SpecKV-PC
    included), else the prompt tokens kept; ``None`` for Full."""
    stage = method.kv_stage() or method.prompt_stage()
    return None if stage is None else stage.budget


def run_ruler(
    target: nn.Module,
    draft: nn.Module | None,
    tokenizer,
    entries: list[Entry],
    tasks: Iterable[str],
    lengths: Iterable[int],
    samples: int,
    out: str | Path,
    seed: int = 0,
    max_new_tokens: int | None = None,
    progress: bool = True,
    draft_tokenizer=None,
) -> Iterator[dict]:
    """Run every entry on ``samples`` samples of each task and length; append and yield each record.

    ``max_new_tokens`` caps RULER's per-task generation length (its answers come first). A draft with
    another tokenizer (``draft_tokenizer``) needs the prompt as text: then every entry, Full included,
    reads RULER's question as chat messages, the answer prefix as the start of the assistant's turn.
    """
    cross = draft_tokenizer is not None and not same_tokenizer(tokenizer, draft_tokenizer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {record_key(r) for r in read_records(out)}
    tasks, lengths = list(tasks), list(lengths)
    total = len(tasks) * len(lengths) * samples * len(entries)
    bar = tqdm(total=total, desc="ruler", unit="answer", disable=not progress, initial=len(done))
    torn = out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n")
    with out.open("a") as sink:
        if torn:  # a killed run's half-written line: start the next record on a line of its own
            sink.write("\n")
        for length in lengths:
            for task in tasks:
                cases = ruler.load_or_generate(task, tokenizer, length, samples, seed=seed)
                new = ruler.TASKS[task].max_new_tokens
                new = min(new, max_new_tokens) if max_new_tokens else new
                for case in cases:
                    pending = [e for e in entries if (task, length, case.index, e.label) not in done]
                    if not pending:
                        continue
                    if cross:
                        prompt = ruler.prompt_messages(case.prompt, case.answer_prefix)
                        ids = render(tokenizer, prompt).ids
                    else:
                        ids = torch.tensor([ruler.prompt_ids(tokenizer, case.prompt, case.answer_prefix)])
                        prompt = ids
                    shared = Reuse(last=_observed_queries(pending, ids.shape[1]))
                    for entry in pending:
                        bar.set_postfix_str(f"{task} {entry.label}")
                        result = generate(
                            target,
                            draft,
                            tokenizer,
                            prompt,
                            method=entry.method,
                            max_new_tokens=new,
                            reuse=shared,
                            draft_tokenizer=draft_tokenizer if cross else None,
                        )
                        record = {
                            "task": task,
                            "length": length,
                            "index": case.index,
                            "label": entry.label,
                            "method": entry.method.name,
                            "budget": _budget(entry.method),
                            "score": ruler.score(task, result.text, case.answers),
                            "prediction": result.text,
                            "answers": case.answers,
                            **result.stats.as_dict(),
                            "peak_rss_mib": peak_rss_mib(),
                            "dtype": str(target.dtype).removeprefix("torch."),
                            "device": str(target.device),
                        }
                        sink.write(json.dumps(record) + "\n")
                        sink.flush()
                        bar.update()
                        yield record
    bar.close()


def summarize(records: list[dict]) -> dict:
    """Accuracy per (label, task) and overall, retained vs Full, mean KV fraction and stage seconds."""
    by = defaultdict(list)
    for r in records:
        by[r["label"], r["task"]].append(r)
    labels = sorted({r["label"] for r in records}, key=lambda label: (label != "full", label))
    tasks = [t for t in ruler.TASKS if any(r["task"] == t for r in records)]
    accuracy = {
        label: {t: 100 * statistics.mean(x["score"] for x in by[label, t]) for t in tasks if by[label, t]}
        for label in labels
    }
    summary = {
        "labels": labels,
        "tasks": tasks,
        "accuracy": accuracy,
        "overall": {},
        "retained": {},
        "cost": {},
    }
    full = accuracy.get("full", {})
    full_answers = {
        (r["task"], r["length"], r["index"]): r.get("prediction") for r in records if r["label"] == "full"
    }
    for label in labels:
        rows = [r for r in records if r["label"] == label]
        scores = accuracy[label]
        summary["overall"][label] = statistics.mean(scores.values())
        common = [t for t in scores if t in full]
        if common and statistics.mean(full[t] for t in common) > 0:
            summary["retained"][label] = statistics.mean(scores[t] for t in common) / statistics.mean(
                full[t] for t in common
            )
        keys = (
            "kv_fraction",
            "kv_bytes",
            "draft_seconds",
            "prefill_seconds",
            "decode_seconds",
            "total_seconds",
        )
        summary["cost"][label] = {key: _mean([r.get(key) for r in rows]) for key in keys}
        summary["cost"][label]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
        summary["cost"][label]["samples"] = len(rows)
        paired = [r for r in rows if (r["task"], r["length"], r["index"]) in full_answers]
        summary["cost"][label]["same_as_full"] = (
            sum(r.get("prediction") == full_answers[r["task"], r["length"], r["index"]] for r in paired)
            / len(paired)
            if paired
            else None
        )
    return summary


def _mean(values: list) -> float | None:
    """Mean of the measured values (``None`` marks a quantity a record did not measure)."""
    measured = [v for v in values if v is not None]
    return statistics.mean(measured) if measured else None


def _cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(scale * value, spec)


def _percent(fraction: float | None, spec: str) -> str:
    return "n/a" if fraction is None else format(100 * fraction, spec) + "%"


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown tables: accuracy per task, then retained accuracy (and how often the
    answer is Full's, word for word), KV kept and costs."""
    tasks, labels = summary["tasks"], summary["labels"]
    lines = ["| method | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for label in labels:
        cells = [f"{summary['accuracy'][label].get(t, float('nan')):.1f}" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {summary['overall'][label]:.1f} |")
    lines += [
        "",
        "| method | answers | retained vs full | answer = full's | KV kept | draft s | pre-fill s | decode s "
        "| total s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        c = summary["cost"][label]
        retained = summary["retained"].get(label)
        cells = [
            str(c["samples"]),
            _cell(retained, ".3f"),
            _percent(c.get("same_as_full"), ".0f"),
            _percent(c["kv_fraction"], ".1f"),
            *(
                _cell(c[k], ".1f")
                for k in ("draft_seconds", "prefill_seconds", "decode_seconds", "total_seconds")
            ),
            _cell(c["peak_rss_mib"], ".0f"),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
