"""Attention over a cache whose KV heads hold different numbers of pairs (AdaKV's budgets).

A ``DynamicCache`` layer holds the same length for every KV head, so heads that keep fewer pairs are
padded, and the padding must never be attended to. :class:`HeadMaskedAttention` switches the model to
:data:`HEAD_MASKED_ATTENTION` (registered in transformers' attention interface) while it decodes: it
adds ``-inf`` at each layer's padded positions and calls the model's own ``eager`` or ``sdpa``
attention. Flash attention takes no per-head mask, so it is refused with a clear error.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

HEAD_MASKED_ATTENTION = "draftwise_head_masked"


class HeadMaskedAttention:
    """While active, ``model`` ignores cache positions where ``valid[layer]`` ``[B, G, L]`` is False
    (positions past ``L``, the newly decoded tokens, are always valid)."""

    def __init__(self, model: nn.Module, valid: dict[int, torch.Tensor]) -> None:
        self.model, self.valid = model, valid
        self._previous: str | None = None

    def __enter__(self) -> HeadMaskedAttention:
        self._previous = self.model.config._attn_implementation
        if self._previous not in ("eager", "sdpa"):
            raise ValueError(
                f"unequal per-head budgets (AdaKV) need 'eager' or 'sdpa' attention, not {self._previous!r}"
            )
        AttentionInterface.register(HEAD_MASKED_ATTENTION, _dispatch)
        _ACTIVE[id(self.model.config)] = self
        self.model.set_attn_implementation(HEAD_MASKED_ATTENTION)
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.pop(id(self.model.config), None)
        self.model.set_attn_implementation(self._previous)

    def inner(self, module: nn.Module):
        if self._previous == "sdpa":
            return ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sys.modules[type(module).__module__].eager_attention_forward

    def mask(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
        """Additive mask ``[B, H, q, K]`` hiding the padded positions of ``module``'s layer."""
        valid = self.valid.get(module.layer_idx)
        if valid is None:
            return None
        extra = key.shape[2] - valid.shape[-1]
        valid = torch.cat([valid, valid.new_ones(*valid.shape[:2], extra)], dim=-1).to(key.device)
        valid = valid.repeat_interleave(query.shape[1] // key.shape[1], dim=1)[:, :, None]  # [B, H, 1, K]
        hidden = torch.zeros(valid.shape, dtype=query.dtype, device=query.device)
        return hidden.masked_fill(~valid, torch.finfo(query.dtype).min).expand(-1, -1, query.shape[2], -1)


_ACTIVE: dict[int, HeadMaskedAttention] = {}


def _dispatch(module, query, key, value, attention_mask, **kwargs):
    active = _ACTIVE.get(id(module.config))
    if active is None:
        raise RuntimeError(f"{HEAD_MASKED_ATTENTION} attention is only valid inside HeadMaskedAttention")
    padding = active.mask(module, query, key)
    if padding is not None:
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                attention_mask = torch.zeros_like(padding).masked_fill(
                    ~attention_mask, torch.finfo(query.dtype).min
                )
            padding = padding + attention_mask[..., -key.shape[2] :]
        attention_mask = padding
    return active.inner(module)(module, query, key, value, attention_mask, **kwargs)
