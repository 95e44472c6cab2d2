"""Attention over a cache whose KV heads hold different numbers of pairs (AdaKV's budgets).

A ``DynamicCache`` layer holds the same length for every KV head, so heads that keep fewer pairs are
padded, and the padding must never be attended to. :class:`HeadMaskedAttention` switches the model to
:data:`HEAD_MASKED_ATTENTION` (an :class:`~draftwise.attention.AttentionOverride`) while it decodes: it
adds ``-inf`` at each layer's padded positions and calls the model's own ``eager`` or ``sdpa``
attention. Flash attention takes no per-head mask, so it is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from draftwise.attention import WrappingOverride

HEAD_MASKED_ATTENTION = "draftwise_head_masked"


class HeadMaskedAttention(WrappingOverride):
    """While active, ``model`` ignores cache positions where ``valid[layer]`` ``[B, G, L]`` is False
    (positions past ``L``, the newly decoded tokens, are always valid)."""

    implementation = HEAD_MASKED_ATTENTION
    purpose = "unequal per-head budgets (AdaKV)"  # what needs it, for the error under other attention

    def __init__(self, model: nn.Module, valid: Mapping[int, torch.Tensor]) -> None:
        super().__init__(model)
        self.valid = valid  # a dict, or a live view (draftwise.cache.LayerMasks) read at each call
        # layer -> (the valid mask it was built from, additive [B, H, 1, capacity])
        self._masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def mask(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
        """Additive mask ``[B, H, q, K]`` hiding the padded positions of ``module``'s layer.

        Built once per layer and ``valid`` mask with room for the tokens to come (zeros: always
        visible), then sliced, so a decoding step adds no work per layer beyond attention itself.
        """
        layer = module.layer_idx
        valid = self.valid.get(layer)
        if valid is None:
            self._masks.pop(layer, None)  # a batch layer whose padding is gone
            return None
        length = key.shape[2]
        source, mask = self._masks.get(layer, (None, None))
        if source is not valid or mask.shape[-1] < length or mask.dtype != query.dtype:
            capacity = max(length, valid.shape[-1]) + 256
            grown = torch.cat([valid, valid.new_ones(*valid.shape[:2], capacity - valid.shape[-1])], dim=-1)
            grown = grown.to(key.device).repeat_interleave(query.shape[1] // key.shape[1], dim=1)[:, :, None]
            hidden = torch.zeros(grown.shape, dtype=query.dtype, device=query.device)
            mask = hidden.masked_fill(~grown, torch.finfo(query.dtype).min)
            self._masks[layer] = (valid, mask)
        return mask[..., :length].expand(-1, -1, query.shape[2], -1)

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        padding = self.mask(module, query, key)
        if padding is not None:
            if attention_mask is not None:
                if attention_mask.dtype == torch.bool:
                    blocked = torch.finfo(query.dtype).min
                    attention_mask = torch.zeros_like(padding).masked_fill(~attention_mask, blocked)
                padding = padding + attention_mask[..., -key.shape[2] :]
            attention_mask = padding
        return self.inner(module)(module, query, key, value, attention_mask, **kwargs)
