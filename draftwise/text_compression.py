"""SpecPC on plain text with the draft alone, for a target served by another engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from draftwise.checks import check_draft_room, check_memory, context_length, peak_bytes
from draftwise.decoding import stop_token_ids
from draftwise.methods.base import PromptMethod
from draftwise.methods.specpc import SpecPC


@dataclass
class CompressedText:
    """A prompt compressed as text, for a target served anywhere (an OpenAI-compatible engine)."""

    text: str
    tokens: int  # tokens of the original text (draft's tokenizer)
    tokens_kept: int


def compress_text(
    draft: nn.Module,
    tokenizer,
    text: str,
    method: PromptMethod | None = None,
    max_bytes: int | None = None,
) -> CompressedText:
    """A prompt method (SpecPC by default) on plain text with the draft alone: the kept tokens, in
    order, decoded back to text.

    End ``text`` with the question, so the window (the last ``method.window`` tokens) holds it and the
    scores are query-aware. The budget counts the draft's tokens. Before any work, the options and the
    draft's context are checked (``ValueError``), and with ``max_bytes`` the draft's KV cache and
    attention weights (:class:`draftwise.checks.TooLarge`).
    """
    method = method if method is not None else SpecPC()
    if not text.strip():
        raise ValueError("the text to compress is empty")
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
    n = ids.shape[1]
    method.check_widths(context_length(draft))
    need = method.footprint(n, 0)
    check_draft_room(draft, n, need)
    check_memory(peak_bytes(None, draft, need, n), max_bytes, n, need)
    if not method.compresses(n):
        return CompressedText(text, n, n)
    positions = method.keep_tokens(draft, ids, stop_token_ids(tokenizer, draft)).positions
    kept = ids[0, positions].tolist()
    return CompressedText(tokenizer.decode(kept), n, len(kept))
