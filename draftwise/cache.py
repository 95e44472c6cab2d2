"""How a transformers cache is pruned, and what it costs.

Pruning keeps, per layer and KV head, a chosen set of positions of a ``DynamicCache``. Decoding
afterwards must pass true ``position_ids`` (``n, n+1, ...``): RoPE then sees real positions, and the
causal mask (built from the shorter cache length) still lets every new token see every kept key.
Sliding-window layers are never pruned: the model's own bookkeeping for them (``cumulative_length``)
assumes they hold the last ``sliding_window - 1`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


def is_sliding(cache: DynamicCache, layer: int) -> bool:
    return bool(getattr(cache.layers[layer], "is_sliding", False))


def prunable_layers(cache: DynamicCache) -> list[int]:
    """Indices of the layers whose KV pairs a method may drop (the full-attention ones)."""
    return [i for i in range(len(cache.layers)) if not is_sliding(cache, i)]


def keep_positions(cache: DynamicCache, layer: int, indices: torch.Tensor) -> None:
    """Keep only cache positions ``indices`` ``[B, G, C]`` of ``layer`` (per batch row and KV head)."""
    if is_sliding(cache, layer):
        raise ValueError(f"layer {layer} is a sliding-window layer and is not pruned")
    state = cache.layers[layer]
    index = indices.to(state.keys.device)[..., None]  # [B, G, C, 1]
    state.keys = state.keys.gather(2, index.expand(-1, -1, -1, state.keys.shape[-1])).contiguous()
    state.values = state.values.gather(2, index.expand(-1, -1, -1, state.values.shape[-1])).contiguous()


@dataclass
class SlidingSnapshot:
    """The state of the sliding-window layers, to undo a chunk of extra tokens (a lookahead)."""

    states: dict[int, tuple[torch.Tensor, torch.Tensor, int]]

    @classmethod
    def take(cls, cache: DynamicCache) -> SlidingSnapshot:
        # DynamicLayer.update concatenates into new tensors, so references are a free snapshot.
        return cls(
            {
                i: (layer.keys, layer.values, layer.cumulative_length)
                for i, layer in enumerate(cache.layers)
                if is_sliding(cache, i)
            }
        )

    def restore(self, cache: DynamicCache) -> None:
        for i, (keys, values, length) in self.states.items():
            layer = cache.layers[i]
            layer.keys, layer.values, layer.cumulative_length = keys, values, length


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of K and V the cache holds now."""
    total = 0
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.numel():
            total += layer.keys.numel() * layer.keys.element_size()
            total += layer.values.numel() * layer.values.element_size()
    return total


def full_cache_bytes(cache: DynamicCache, length: int) -> int:
    """Bytes of K and V an uncompressed cache of ``length`` tokens would hold, with ``cache``'s shapes."""
    total = 0
    for i, layer in enumerate(cache.layers):
        if layer.keys is None or not layer.keys.numel():
            continue
        held = min(length, layer.sliding_window - 1) if is_sliding(cache, i) else length
        batch, heads, _, key_dim = layer.keys.shape
        value_dim = layer.values.shape[-1]
        total += batch * heads * held * (key_dim + value_dim) * layer.keys.element_size()
    return total


def kept_per_head(cache: DynamicCache, valid: dict[int, torch.Tensor] | None = None) -> int:
    """KV pairs per KV head held by the full-attention layers, averaged over layers and heads
    (rounded); for a layer with a ``valid`` mask ``[B, G, L]``, only its valid (unpadded) pairs count."""
    valid = valid or {}
    layers = prunable_layers(cache)
    if not layers:
        return 0
    counts = [
        valid[i].sum().item() / valid[i][..., 0].numel() if i in valid else cache.layers[i].keys.shape[2]
        for i in layers
    ]
    return round(sum(counts) / len(counts))
