"""Mapping between two tokenizers through the prompt's characters (drafts with another tokenizer).

Each model reads the prompt in its own format (its chat template, or plain text with its own special
tokens), so the only common ground is the messages' *content*. :func:`render` records, for one
tokenizer, each token's character span and where each message's content sits in the rendered text;
:func:`transfer_scores` carries per-token scores from one tokenization to another through the content
characters they cover. Tokens outside the content (template and special tokens) score ``+inf``: they
are always kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Rendered:
    """A prompt as one tokenizer reads it."""

    ids: torch.Tensor  # [1, n]
    offsets: list[tuple[int, int]]  # per token, its character span in `text` ((0, 0) for added specials)
    text: str
    contents: list[tuple[int, int]]  # each message content's span in `text`, in order

    def content_spans(self) -> list[tuple[int, int] | None]:
        """Per token, the span it covers in the concatenated contents, or ``None`` outside them."""
        bases, base = [], 0
        for start, end in self.contents:
            bases.append(base - start)
            base += end - start
        spans: list[tuple[int, int] | None] = []
        for a, b in self.offsets:
            span = None
            for (start, end), shift in zip(self.contents, bases, strict=True):
                lo, hi = max(a, start), min(b, end)
                if lo < hi:
                    span = (lo + shift, hi + shift) if span is None else (span[0], hi + shift)
            spans.append(span)
        return spans

    @property
    def content_length(self) -> int:
        return sum(end - start for start, end in self.contents)


def messages_of(prompt: str | Sequence[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render(tokenizer, prompt: str | Sequence[dict]) -> Rendered:
    """Tokenize ``prompt`` as ``tokenizer``'s model reads it, with character offsets.

    Text is tokenized as is (with the tokenizer's own special tokens); chat messages go through the
    chat template, or, for a model without one (a base model), become their contents joined by blank
    lines, with the tokenizer's own special tokens (such as BOS). Messages ending with an assistant
    message are continued from it (the start of the answer, such as RULER's answer prefix).
    """
    if isinstance(prompt, str):
        text, special, contents = prompt, True, [prompt]
    else:
        contents = [str(m.get("content", "")) for m in prompt]
        if getattr(tokenizer, "chat_template", None):
            answering = prompt[-1].get("role") == "assistant"
            text = tokenizer.apply_chat_template(
                list(prompt),
                tokenize=False,
                add_generation_prompt=not answering,
                continue_final_message=answering,
            )
            special = False
        else:
            text, special = "\n\n".join(contents), True
    encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    spans, cursor = [], 0
    for content in contents:
        start = text.find(content, cursor)
        if start < 0:
            raise ValueError("the chat template changed a message's content; cannot align tokenizers")
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    ids = torch.tensor([encoded["input_ids"]], dtype=torch.long)
    return Rendered(ids, [tuple(o) for o in encoded["offset_mapping"]], text, spans)


def transfer_scores(source: Rendered, scores: torch.Tensor, target: Rendered) -> torch.Tensor:
    """Scores ``[n_target]`` from per-token ``scores`` ``[n_source]``: each content character takes the
    highest score of the source tokens covering it, each target token the highest of its characters.
    Target tokens outside the contents score ``+inf``; content characters no source token covers
    take the lowest score."""
    if source.content_length != target.content_length:
        raise ValueError("the two renderings hold different contents")
    scores = scores.detach().float().cpu()
    floor = float(scores[torch.isfinite(scores)].min()) if torch.isfinite(scores).any() else 0.0
    chars = torch.full((source.content_length,), float("-inf"))
    for score, span in zip(scores.tolist(), source.content_spans(), strict=True):
        if span is not None:
            chars[span[0] : span[1]] = chars[span[0] : span[1]].clamp_min(score)
    chars[chars == float("-inf")] = floor
    out = torch.full((target.ids.shape[1],), float("inf"))
    for j, span in enumerate(target.content_spans()):
        if span is not None:
            out[j] = chars[span[0] : span[1]].max()
    return out


def translate(ids: torch.Tensor, source_tokenizer, target_tokenizer) -> torch.Tensor | None:
    """Token ids ``[1, m]`` of one tokenizer as ``[1, m']`` of another, through their text (``None`` if
    the text is empty)."""
    text = source_tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
    out = target_tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return out if out.shape[1] else None


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers map text to the same ids (same vocabulary)."""
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())
