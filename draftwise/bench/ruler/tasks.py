"""RULER's 13 tasks: their templates and answer prefixes, configurations and metrics (``TASKS``), and
how a sample's prompt becomes the model's input (``prompt_ids``, ``prompt_messages``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
class Built:
    prompt: str
    answer_prefix: str
    answers: list[str]


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
