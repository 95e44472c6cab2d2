"""Generated samples cached on disk, keyed by everything that changes them."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

from draftwise.bench.ruler.generators import generate_task
from draftwise.bench.ruler.tasks import TASKS, Sample
from draftwise.models import cache_dir as draftwise_cache

GENERATOR_VERSION = 1  # part of the cache key: bump when generated samples change


def tokenizer_id(tokenizer) -> str:
    """A short identity for cache keys: the tokenizer's name or path, its size and chat template."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    template = getattr(tokenizer, "chat_template", None) or ""
    digest = hashlib.sha256(f"{name}|{len(tokenizer)}|{template}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name)[:48] or "tokenizer"
    return f"{stem}-{digest}"


def load_or_generate(
    task: str,
    tokenizer,
    length: int,
    samples: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    max_new_tokens: int | None = None,
) -> list[Sample]:
    """:func:`generate_task`'s samples, cached as JSONL (one :class:`Sample` a line) under ``cache_dir``
    (default ``draftwise.models.cache_dir() / "ruler"``), keyed by task, length, samples, seed,
    generated tokens, tokenizer identity and generator version; generated when missing or unreadable."""
    if cache_dir is None:
        cache_dir = draftwise_cache() / "ruler"
    new = TASKS[task].max_new_tokens if max_new_tokens is None else max_new_tokens
    name = f"{task}_L{length}_n{samples}_s{seed}_g{new}_v{GENERATOR_VERSION}_{tokenizer_id(tokenizer)}.jsonl"
    path = Path(cache_dir) / name
    if path.is_file():
        try:
            cached = [Sample(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, TypeError):
            cached = []
        if len(cached) == samples:
            return cached
    out = generate_task(task, tokenizer, length, samples, seed=seed, max_new_tokens=new)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(s)) + "\n" for s in out))
    tmp.replace(path)
    return out
