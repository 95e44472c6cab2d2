"""The draft's lookahead: a short greedy answer written by the small model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.decoding import decode


@torch.no_grad()
def lookahead(
    draft: nn.Module, input_ids: torch.Tensor, steps: int, stop_ids: Iterable[int] = ()
) -> torch.Tensor:
    """The draft's greedy continuation ``[1, m]`` (``m <= steps``) of ``input_ids`` ``[1, n]``."""
    input_ids = input_ids.to(draft.device)
    cache = DynamicCache(config=draft.config)
    out = draft(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return decode(draft, cache, out.logits[:, -1], input_ids.shape[1], steps, stop_ids=stop_ids)
