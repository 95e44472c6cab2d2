"""RULER's five generator families (niah, vt, cwe, fwe, qa) and ``generate_task``: samples whose
prompts fill a token budget, found by searching the haystack size (``_fit``)."""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import uuid
from collections.abc import Callable

from draftwise.bench.ruler.data import cwe_words, essay_words, key_words, qa_data
from draftwise.bench.ruler.tasks import (
    DEPTHS,
    DOCUMENT,
    NEEDLE,
    NOISE,
    TASKS,
    TEMPLATES,
    Built,
    Sample,
    TaskConfig,
    prompt_ids,
)

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


def _fit(
    measure: Callable[[int], tuple[int, Built]], budget: int, lo: int, hi: int, guess: int | None = None
) -> tuple[int, int, Built]:
    """The largest haystack size ``n`` in ``[lo, hi]`` whose prompt takes at most ``budget`` tokens, for
    token counts that grow about linearly in ``n``: extrapolate from the measured slope until the edge is
    bracketed, then interpolate inside the bracket (bisecting when that stalls). ``measure(n)`` gives
    ``(tokens, built)``. Returns ``(n, tokens, built)``."""
    seen: dict[int, tuple[int, Built]] = {}

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
            return 1, len(essay_words())
        return self.num_k * self.num_v, 10**8

    def _random(self, rng: random.Random, kind: str) -> str:
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "words":
            adjectives, nouns = key_words()
            i = rng.randrange(len(adjectives) * len(nouns))
            return f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}"
        raise ValueError(f"unknown needle type {kind!r}")

    def build(self, rng: random.Random, index: int, n: int) -> Built:
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
            sentences = split_sentences(" ".join(essay_words()[:n]).strip())
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
        return Built(prompt, prefix.format(type_needle_v=type_v, query=query), answers)


class _VariableTracking:
    """Chains ``VAR B = VAR A`` from ``VAR A = 12345`` hidden among noise lines, after one worked
    example (RULER's variable_tracking.py): the answers are the chain's variables."""

    ICL_TOKENS = 500

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        self.chains, self.hops = cfg.args["num_chains"], cfg.args["num_hops"]
        new = cfg.max_new_tokens
        icl_seed = _stream_seed(seed, "vt", "example")

        def measure(n: int) -> tuple[int, Built]:
            built = self._task(random.Random(icl_seed), n, letters=3, hops=min(10, self.hops))
            text = built.prompt + built.answer_prefix + " " + " ".join(built.answers)
            return len(tokenizer(text).input_ids), built

        _, _, example = _fit(measure, self.ICL_TOKENS - new, min(10, self.hops) + 1, 10**6)
        self.example = example.prompt + example.answer_prefix + " " + " ".join(example.answers) + "\n\n"
        self.example_vars = example.answers

    def bounds(self, index: int) -> tuple[int, int]:
        return self.hops + 1, 10**8

    def _task(self, rng: random.Random, n: int, letters: int, hops: int) -> Built:
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
        return Built(prompt, prefix.format(num_v=hops + 1, query=value), names[: hops + 1])

    def build(self, rng: random.Random, index: int, n: int) -> Built:
        example = self.example  # RULER renames the example's variables for every sample
        fresh = _unique_names(rng, len(self.example_vars), 3, avoid=frozenset(self.example_vars))
        for old, new in zip(self.example_vars, fresh, strict=True):
            example = example.replace(old, new)
        task = self._task(rng, n, letters=5, hops=self.hops)
        return Built(example + "\n\n" + task.prompt, task.answer_prefix, task.answers)


class _CommonWords:
    """A numbered list where ``num_cw`` words repeat ``freq_cw`` times and the rest ``freq_ucw`` times
    (6 and 1 below 4k tokens), after one worked example (RULER's common_words_extraction.py)."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        a = cfg.args
        self.num_cw = a["num_cw"]
        self.small = length < 4096
        self.common, self.uncommon = (6, 1) if self.small else (a["freq_cw"], a["freq_ucw"])

    def bounds(self, index: int) -> tuple[int, int]:
        return self.num_cw, len(cwe_words())

    def _list(self, rng: random.Random, words: int, common: int, uncommon: int) -> tuple[str, list[str]]:
        chosen = rng.sample(cwe_words(), words)
        top = chosen[: self.num_cw]
        listed = top * common + chosen[self.num_cw :] * uncommon
        rng.shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), top

    def build(self, rng: random.Random, index: int, n: int) -> Built:
        template, prefix = TEMPLATES["cwe"]
        shot = (20, 3, 1) if self.small else (40, 10, 3)
        shot_context, shot_answer = self._list(rng, *shot)
        context, answers = self._list(rng, n, self.common, self.uncommon)
        example = template.format(context=shot_context) + prefix  # RULER: "...are:1. word 2. ..."
        example += " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_answer))
        return Built(example + "\n" + template.format(context=context), prefix, answers)


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

    def build(self, rng: random.Random, index: int, n: int) -> Built:
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
        return Built(template.format(context=" ".join(text)), prefix, words[1:4])


class _QA:
    """A question with its gold document(s) among distractor documents (RULER's qa.py): sample ``i``
    asks the dataset's question ``i``."""

    def __init__(self, cfg: TaskConfig, tokenizer, length: int, seed: int) -> None:
        self.qas, self.docs = qa_data(cfg.args["dataset"])

    def bounds(self, index: int) -> tuple[int, int]:
        return len(self.qas[index % len(self.qas)]["context"]), len(self.docs)

    def build(self, rng: random.Random, index: int, n: int) -> Built:
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
        return Built(template.format(context=context, query=qa["query"]), prefix, list(qa["outputs"]))


_FAMILIES = {"niah": _Niah, "vt": _VariableTracking, "cwe": _CommonWords, "fwe": _FreqWords, "qa": _QA}


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

        def measure(n: int, index: int = index, stream: int = stream) -> tuple[int, Built]:
            built = family.build(random.Random(stream), index, n)
            return len(prompt_ids(tokenizer, built.prompt, built.answer_prefix)), built

        try:
            n, tokens, built = _fit(measure, budget, *family.bounds(index), guess=guess)
        except ValueError as e:
            raise ValueError(f"{task} at length {length}: {e}") from e
        guess = n
        out.append(Sample(task, index, length, built.prompt, built.answer_prefix, built.answers, tokens))
    return out
