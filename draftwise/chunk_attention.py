"""Attention for a few new tokens read at once over a cache of any shape (speculative verification).

Decoding reads one token at a time, and every cached key is visible to it. Reading ``q`` tokens at once
over a pruned cache (a draft's proposals, verified by the target in one forward) needs the mask that
decoding them one by one implies, per layer: every cached key of a full-attention layer (pruned or not,
whatever its length) and the new tokens up to each one's own; in a sliding-window layer only the keys
inside each new token's window. transformers builds its masks from one layer's length and from
positions that pruning made untrue, so :class:`ChunkAttention` builds them from each layer's own
shapes instead, and hides padding as :class:`~draftwise.headmask.HeadMaskedAttention` does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from draftwise.cache import LayerMasks
from draftwise.headmask import HeadMaskedAttention

CHUNK_ATTENTION = "draftwise_chunk"


def chunk_mask(queries: int, keys: int, window: int | None, dtype: torch.dtype, device) -> torch.Tensor:
    """Additive mask ``[1, 1, queries, keys]``: the last ``queries`` keys are the new tokens (causal among
    themselves), the others are cached; with a sliding ``window``, new token ``i`` sees only the keys
    of the last ``window`` positions up to its own."""
    held = keys - queries
    row = torch.arange(queries, device=device)[:, None]
    column = torch.arange(keys, device=device)[None, :]
    visible = column <= held + row
    if window is not None:
        visible &= column > held + row - window
    hidden = torch.zeros(queries, keys, dtype=dtype, device=device)
    return hidden.masked_fill(~visible, torch.finfo(dtype).min)[None, None]


class ChunkAttention(HeadMaskedAttention):
    """While active, forwards of ``model`` over ``cache`` attend as decoding token by token would, for any
    number of new tokens (:func:`chunk_mask`), and never to the padding of ``cache``'s layers.

    Needs ``eager`` or ``sdpa`` attention. Pass a 4D placeholder ``attention_mask`` to the model (it is
    replaced) so that transformers builds no mask of its own.
    """

    implementation = CHUNK_ATTENTION
    purpose = "speculative decoding and chunked reads over a pruned cache"

    def __init__(self, model: nn.Module, cache: DynamicCache) -> None:
        super().__init__(model, LayerMasks(cache))
        self.cache = cache
        # (queries, window) -> (keys, dtype, mask): the last mask built for that shape; all layers of a
        # kind share it within a forward
        self._chunk: dict[tuple, tuple[int, torch.dtype, torch.Tensor]] = {}

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        queries, keys = query.shape[2], key.shape[2]
        layer = self.cache.layers[module.layer_idx]
        window = layer.sliding_window if getattr(layer, "is_sliding", False) else None
        mask = None
        if queries > 1 or (window is not None and keys > window):
            held, dtype, mask = self._chunk.get((queries, window), (None, None, None))
            if held != keys or dtype != query.dtype or mask.device != query.device:
                mask = chunk_mask(queries, keys, window, query.dtype, query.device)
                self._chunk[(queries, window)] = (keys, query.dtype, mask)
        padding = self.mask(module, query, key)
        if padding is not None:
            mask = padding if mask is None else padding + mask
        return self.inner(module)(module, query, key, value, mask, **kwargs)


def placeholder_mask(model: nn.Module) -> torch.Tensor:
    """A 4D mask transformers passes through untouched (:class:`ChunkAttention` replaces it)."""
    return torch.zeros(1, 1, 1, 1, dtype=model.dtype, device=model.device)
