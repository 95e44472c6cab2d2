"""How a run is measured: RULER samples x methods x budgets, one JSONL record per answer.

Records are appended as they come, so a killed run resumes where it stopped (finished
``(task, length, index, label)`` entries are skipped). Per prompt, the target's plain pre-fill and
the draft's lookaheads are shared between KV methods through
:class:`draftwise.shared_prefill.SharedPrefill`, which changes no answer; every record's seconds
include the shared work, as if the method ran alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from draftwise.bench import ruler
from draftwise.bench.entries import Entry
from draftwise.bench.records import make_record, read_records, record_key
from draftwise.generate import generate
from draftwise.mapping import render, same_tokenizer
from draftwise.shared_prefill import SharedPrefill


def _observed_queries(entries: list[Entry], n: int) -> int:
    """The most trailing queries a method that prunes the whole prompt's cache reads: one observed
    pre-fill (:class:`~draftwise.shared_prefill.SharedPrefill`) serves them all."""
    pruning = [e.method.kv_stage() for e in entries if e.method.prompt_stage() is None]
    return max([stage.observed_queries(n) for stage in pruning if stage is not None] + [0])


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
                    shared = SharedPrefill(observed_queries=_observed_queries(pending, ids.shape[1]))
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
                        record = make_record(task, length, case, entry.label, entry.method, result, target)
                        sink.write(json.dumps(record) + "\n")
                        sink.flush()
                        bar.update()
                        yield record
    bar.close()
