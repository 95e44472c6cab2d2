"""The draft: its lookahead (a short greedy answer), and a draft made from the target itself."""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.cache import tentative
from draftwise.decoding import decode
from draftwise.windowed import windowed_prefill


@torch.no_grad()
def lookahead(
    draft: nn.Module, input_ids: torch.Tensor, steps: int, stop_ids: Iterable[int] = ()
) -> torch.Tensor:
    """The draft's greedy continuation ``[1, m]`` (``m <= steps``) of ``input_ids`` ``[1, n]``."""
    return lookahead_with_cache(draft, input_ids, steps, stop_ids)[0]


@torch.no_grad()
def lookahead_with_cache(
    draft: nn.Module, input_ids: torch.Tensor, steps: int, stop_ids: Iterable[int] = ()
) -> tuple[torch.Tensor, DynamicCache]:
    """:func:`lookahead`, and the draft's cache of the prompt alone (the lookahead taken back out), for
    the draft's next job (speculative decoding)."""
    input_ids = input_ids.to(draft.device)
    cache = DynamicCache(config=draft.config)
    with windowed_prefill(draft, input_ids.shape[1]):
        out = draft(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    with tentative(cache, 0) as trial:
        ids = decode(draft, cache, out.logits[:, -1], input_ids.shape[1], steps, stop_ids=stop_ids)
        trial.tokens = ids.shape[1] - 1  # every token but the last was read
    return ids, cache


def self_draft(target: nn.Module, layers: int | None = None) -> nn.Module:
    """An early-exit draft built from ``target`` itself: its embeddings, first ``layers`` decoder layers
    (default: half), final norm and LM head, sharing the target's weights (nothing is copied).

    Untrained for early exit (unlike LayerSkip or Kangaroo), its predictions are rough; it suits
    targets with no small sibling. Returns a causal LM of the target's class.
    """
    total = target.config.num_hidden_layers
    layers = max(1, total // 2) if layers is None else layers
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be in 1..{total} for this target, got {layers}")
    config = deepcopy(target.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:layers]
    with torch.device("meta"):
        draft = type(target)(config)
    inner, source = draft.model, target.model
    inner.embed_tokens, inner.norm = source.embed_tokens, source.norm
    inner.layers = nn.ModuleList(source.layers[:layers])
    for name, module in source.named_children():
        if "rotary" in name:
            setattr(inner, name, module)
    draft.lm_head = target.lm_head
    left = [n for n, t in [*draft.named_parameters(), *draft.named_buffers()] if t.is_meta]
    if left:
        raise TypeError(f"cannot build a self-draft of {type(target).__name__}: unshared {', '.join(left)}")
    draft.generation_config = deepcopy(target.generation_config)
    return draft.eval()
