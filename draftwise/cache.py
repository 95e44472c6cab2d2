"""How a transformers cache is pruned, and what it costs.

Pruning replaces a full-attention layer of a ``DynamicCache`` by a :class:`PrunedLayer`, which holds,
per KV head, a chosen set of the prompt's positions (and, when heads keep unequal counts, which of
its entries are padding), then grows like any layer as tokens are decoded. Decoding
afterwards must pass true ``position_ids`` (``n, n+1, ...``): RoPE then sees real positions, and the
causal mask (built from the shorter cache length) still lets every new token see every kept key.
Sliding-window layers are never pruned: the model's own bookkeeping for them (``cumulative_length``)
assumes they hold the last ``sliding_window - 1`` tokens; a lookahead read for its queries is taken
back out of them with transformers' own rollback (:func:`sliding_layers_drop`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def is_sliding(cache: DynamicCache, layer: int) -> bool:
    return bool(cache.layers[layer].is_sliding)  # every transformers cache layer says


def prunable_layers(cache: DynamicCache) -> list[int]:
    """Indices of the layers whose KV pairs a method may drop (the full-attention ones)."""
    return [i for i in range(len(cache.layers)) if not is_sliding(cache, i)]


class PrunedLayer(DynamicLayer):
    """A full-attention layer that kept some of the prompt's positions, per batch row and KV head.

    ``positions`` ``[B, G, C]`` are the kept positions in the prompt; ``valid`` ``[B, G, C]`` marks the
    real entries when heads kept unequal counts (the others are padding, never attended: see
    :mod:`draftwise.headmask`), ``None`` when every entry is real. Tokens decoded afterwards are
    appended as in any ``DynamicLayer`` and are always real.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, valid=None) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.positions = positions
        self.valid: torch.Tensor | None = valid

    @classmethod
    def keep(
        cls,
        layer: DynamicLayer,
        indices: torch.Tensor,
        valid: torch.Tensor | None = None,
        after: torch.Tensor | None = None,
    ) -> PrunedLayer:
        """``layer`` keeping only its positions ``indices`` ``[B, G, C]``; ``valid`` as above. ``after``
        ``[k]``: entries kept after those as already decoded tokens (a lookahead the target accepted)."""
        if after is not None and after.numel():
            indices_and_after = torch.cat([indices, after.to(indices).expand(*indices.shape[:2], -1)], dim=-1)
        else:
            indices_and_after = indices
        index = indices_and_after.to(layer.keys.device)[..., None]  # [B, G, C + k, 1]
        keys = layer.keys.gather(2, index.expand(-1, -1, -1, layer.keys.shape[-1])).contiguous()
        values = layer.values.gather(2, index.expand(-1, -1, -1, layer.values.shape[-1])).contiguous()
        return cls(keys, values, indices, valid)

    @property
    def kept_per_head(self) -> float:
        """Real (unpadded) prompt pairs per KV head, averaged over batch rows and heads."""
        if self.valid is None:
            return float(self.positions.shape[-1])
        return self.valid.sum().item() / self.valid[..., 0].numel()


def keep_positions(
    cache: DynamicCache,
    layer: int,
    indices: torch.Tensor,
    valid: torch.Tensor | None = None,
    after: torch.Tensor | None = None,
) -> None:
    """Keep only cache positions ``indices`` ``[B, G, C]`` of ``layer`` (per batch row and KV head):
    the layer becomes a :class:`PrunedLayer` (``valid``: which entries are real, if not all;
    ``after``: positions kept after them as decoded tokens)."""
    if is_sliding(cache, layer):
        raise ValueError(f"layer {layer} is a sliding-window layer and is not pruned")
    cache.layers[layer] = PrunedLayer.keep(cache.layers[layer], indices, valid, after)


def head_masks(cache: DynamicCache) -> dict[int, torch.Tensor]:
    """Per layer whose heads kept unequal counts, its ``valid`` mask ``[B, G, C]``."""
    return {
        i: layer.valid for i, layer in enumerate(cache.layers) if getattr(layer, "valid", None) is not None
    }


class LayerMasks(Mapping[int, torch.Tensor]):
    """A live view of ``cache``'s padding masks: layer index -> that layer's ``valid`` now (a batch's
    layers replace theirs as rows join and leave and as a sliding window moves)."""

    def __init__(self, cache: DynamicCache) -> None:
        self.cache = cache

    def __getitem__(self, layer: int) -> torch.Tensor:
        valid = getattr(self.cache.layers[layer], "valid", None) if layer < len(self.cache.layers) else None
        if valid is None:
            raise KeyError(layer)
        return valid

    def __iter__(self) -> Iterator[int]:
        return iter(head_masks(self.cache))

    def __len__(self) -> int:
        return len(head_masks(self.cache))


class Drop:
    """How many of the tokens read last the sliding-window layers drop on leaving
    :func:`sliding_layers_drop` (lowered when the target accepts some of a lookahead)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens


@contextmanager
def sliding_layers_drop(cache: DynamicCache, tokens: int) -> Iterator[Drop]:
    """While inside, the sliding-window layers keep every state the model adds; on leaving, they drop
    the last ``tokens`` of them (a lookahead; set ``.tokens`` on the yielded :class:`Drop` to drop
    fewer) and return to their window, as if those tokens had never been read. This is transformers'
    own rollback (``activate_past_recording``, then ``crop``)."""
    layers = [cache.layers[i] for i in range(len(cache.layers)) if is_sliding(cache, i)]
    drop = Drop(tokens)
    for layer in layers:
        layer.activate_past_recording()
    try:
        yield drop
    finally:
        for layer in layers:
            if not layer.is_initialized:  # a layer the model never wrote to holds nothing to drop
                pass
            elif drop.tokens:
                layer.crop(-drop.tokens)
            elif layer.get_seq_length() >= layer.sliding_window:
                layer.crop(0)  # nothing dropped: only back to the window
            layer.record_past = False  # transformers has no call to end the recording


@contextmanager
def tentative(cache: DynamicCache, tokens: int) -> Iterator[Drop]:
    """While inside, every layer keeps what the model adds; on leaving, every layer drops the last
    ``tokens`` entries it received (set ``.tokens`` on the yielded :class:`Drop` to drop fewer): tokens
    read on trial, e.g. a draft's proposals the target rejected. Full-attention layers (pruned or not)
    are cut at the end; sliding-window layers roll back as in :func:`sliding_layers_drop`."""
    others = [layer for i, layer in enumerate(cache.layers) if not is_sliding(cache, i)]
    with sliding_layers_drop(cache, tokens) as drop:
        yield drop
        for layer in others:
            layer.crop(-drop.tokens)


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


def kept_per_head(cache: DynamicCache) -> int:
    """KV pairs per KV head held by the full-attention layers, averaged over layers and heads
    (rounded); a pruned layer's padding does not count."""
    layers = [cache.layers[i] for i in prunable_layers(cache)]
    if not layers:
        return 0
    counts = [
        layer.kept_per_head if isinstance(layer, PrunedLayer) else layer.keys.shape[2] for layer in layers
    ]
    return round(sum(counts) / len(counts))
