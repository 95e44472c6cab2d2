"""The results file: one JSON record per answer, appended (JSONL), and read back for resuming."""

from __future__ import annotations

import json
import resource
from dataclasses import fields
from pathlib import Path

from draftwise.bench import ruler
from draftwise.generate import GenerationResult
from draftwise.methods import Method
from draftwise.timing import machine


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


def budget_of(method: Method) -> int | None:
    """What a record calls the budget: the KV pairs kept if the method prunes the cache (SpecKV-PC
    included), else the prompt tokens kept; ``None`` for Full."""
    stage = method.kv_stage() or method.prompt_stage()
    return None if stage is None else stage.budget


def make_record(
    task: str, length: int, case: ruler.Sample, label: str, method: Method, result: GenerationResult, target
) -> dict:
    """One answer's record: the sample, the method, RULER's score, the answer and its stats."""
    return {
        "task": task,
        "length": length,
        "index": case.index,
        "label": label,
        "method": method.name,
        "options": {f.name: getattr(method, f.name) for f in fields(method)},
        "budget": budget_of(method),
        "score": ruler.score(task, result.text, case.answers),
        "prediction": result.text,
        "answers": case.answers,
        **result.stats.as_dict(),
        "peak_rss_mib": peak_rss_mib(),
        "dtype": str(target.dtype).removeprefix("torch."),
        "device": str(target.device),
        "machine": machine(target.device),  # seconds compare only between records of one machine
    }
