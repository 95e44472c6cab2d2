"""Mapping between two tokenizers through the prompt's characters (drafts with another tokenizer).

Each model reads the prompt in its own format (its chat template, or plain text with its own special
tokens), so the only common ground is the messages' *content*. :func:`render` records, for one
tokenizer, each token's character span and where each message's content sits in the rendered text;
:func:`transfer_scores` carries per-token scores from one tokenization to another through the content
characters they cover. Tokens outside the content (template and special tokens) score ``+inf``: they
are always kept.

Content coordinates are the characters of the messages' contents as given, one after another. A
template that trims a content (Llama 3, Gemma) renders a part of it; that part is found by its
stripped text, and the trimmed characters have no token. A content a template changes beyond that is
not located: its tokens count as template tokens (kept).
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import jinja2
import torch


@dataclass
class Rendered:
    """A prompt as one tokenizer reads it."""

    ids: torch.Tensor  # [1, n]
    offsets: list[tuple[int, int]]  # per token, its character span in `text` ((0, 0) for added specials)
    text: str
    contents: list[tuple[int, int]]  # each located message content's span in `text`, in order
    anchors: list[int]  # where each of `contents` starts in content coordinates
    content_length: int  # characters of all contents as given

    def content_spans(self) -> list[tuple[int, int] | None]:
        """Per token, the span it covers in content coordinates, or ``None`` outside the contents."""
        bases = [anchor - start for (start, _), anchor in zip(self.contents, self.anchors, strict=True)]
        spans: list[tuple[int, int] | None] = []
        for a, b in self.offsets:
            span = None
            for (start, end), shift in zip(self.contents, bases, strict=True):
                lo, hi = max(a, start), min(b, end)
                if lo < hi:
                    span = (lo + shift, hi + shift) if span is None else (span[0], hi + shift)
            spans.append(span)
        return spans


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"a message's content must be a string, got {type(content).__name__}")
    return content


def apply_template(tokenizer, messages: list[dict]) -> str:
    """The chat template's text for ``messages``, continuing a final assistant message (the start of
    the answer); a template that refuses the messages (``raise_exception``) raises ``ValueError``."""
    answering = messages[-1].get("role") == "assistant"
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not answering, continue_final_message=answering
        )
    except jinja2.TemplateError as error:
        raise ValueError(f"the chat template refused these messages: {error}") from None


def _locate(text: str, content: str, cursor: int) -> tuple[int, int, int] | None:
    """``(start, end, skipped)``: where ``content`` (or, trimmed by the template, its stripped text,
    after ``skipped`` leading characters) sits in ``text`` from ``cursor`` on; ``None`` if nowhere."""
    start = text.find(content, cursor)
    if start >= 0:
        return start, start + len(content), 0
    stripped = content.strip()
    start = text.find(stripped, cursor) if stripped else -1
    if start >= 0:
        return start, start + len(stripped), len(content) - len(content.lstrip())
    return None


def _layout(tokenizer, prompt: str | Sequence[dict]) -> tuple[str, bool, list[str]]:
    """``(text, special, contents)``: the text ``tokenizer``'s model reads for ``prompt``, whether the
    tokenizer adds its own special tokens to it, and the messages' contents."""
    if isinstance(prompt, str):
        return prompt, True, [prompt]
    contents = [_content(m) for m in prompt]
    if getattr(tokenizer, "chat_template", None):
        return apply_template(tokenizer, list(prompt)), False, contents
    return "\n\n".join(contents), True, contents


def _ids(ids: list[int]) -> torch.Tensor:
    """``[1, n]`` from a list, through a buffer (``torch.tensor`` of a long list holds the GIL for long)."""
    if not ids:
        return torch.zeros(1, 0, dtype=torch.long)
    return torch.frombuffer(array.array("q", ids), dtype=torch.long)[None]


def tokenize(tokenizer, prompt: str | Sequence[dict]) -> torch.Tensor:
    """The token ids ``[1, n]`` of :func:`render`, without the offsets (the same tokenizer's path)."""
    text, special, _ = _layout(tokenizer, prompt)
    return _ids(tokenizer(text, add_special_tokens=special).input_ids)


def render(tokenizer, prompt: str | Sequence[dict]) -> Rendered:
    """Tokenize ``prompt`` as ``tokenizer``'s model reads it, with character offsets.

    Text is tokenized as is (with the tokenizer's own special tokens); chat messages go through the
    chat template, or, for a model without one (a base model), become their contents joined by blank
    lines, with the tokenizer's own special tokens (such as BOS). Messages ending with an assistant
    message are continued from it (the start of the answer, such as RULER's answer prefix).
    """
    text, special, contents = _layout(tokenizer, prompt)
    encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    spans, anchors, cursor, anchor = [], [], 0, 0
    for content in contents:
        found = _locate(text, content, cursor)
        if found is not None:
            start, end, skipped = found
            spans.append((start, end))
            anchors.append(anchor + skipped)
            cursor = end
        anchor += len(content)
    ids = _ids(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    return Rendered(ids, offsets, text, spans, anchors, anchor)


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
