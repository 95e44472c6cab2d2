"""Pruning a cache layer (draftwise/cache.py): a PrunedLayer replaces it."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config
from transformers import DynamicCache

from draftwise.cache import (
    PrunedLayer,
    cache_bytes,
    full_cache_bytes,
    head_masks,
    keep_positions,
    kept_per_head,
    sliding_layers_drop,
)


def test_each_batch_row_and_head_keeps_its_own_positions():
    keys = torch.randn(2, 2, 6, 4)  # [B, G, L, d]
    values = torch.randn(2, 2, 6, 3)  # another head size, as some models have
    cache = DynamicCache()
    cache.update(keys, values, 0)
    kept = torch.tensor([[[0, 2], [1, 5]], [[3, 4], [0, 1]]])  # [B, G, C]
    keep_positions(cache, 0, kept)
    for b in range(2):
        for g in range(2):
            torch.testing.assert_close(cache.layers[0].keys[b, g], keys[b, g, kept[b, g]])
            torch.testing.assert_close(cache.layers[0].values[b, g], values[b, g, kept[b, g]])


def test_a_sliding_window_layer_is_not_pruned():
    cache = DynamicCache(config=tiny_config("gemma3_text"))  # layer 0 slides, layer 1 does not
    for layer in (0, 1):
        cache.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), layer)
    keep_positions(cache, 1, torch.tensor([[[0, 1], [2, 3]]]))
    assert cache.layers[1].keys.shape[2] == 2
    with pytest.raises(ValueError, match="^layer 0 is a sliding-window layer and is not pruned$"):
        keep_positions(cache, 0, torch.tensor([[[0, 1], [2, 3]]]))


def test_kept_per_head_averages_the_full_attention_layers():
    cache = DynamicCache(config=tiny_config("gemma3_text", layers=4))  # layers 1 and 3 are full
    for layer, length in enumerate((16, 10, 16, 4)):
        cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), layer)
    assert kept_per_head(cache) == 7
    valid = torch.tensor([[[True] * 4 + [False] * 6, [True] * 8 + [False] * 2]])  # layer 1: 4 and 8 valid
    keep_positions(cache, 1, torch.arange(10).expand(1, 2, 10), valid)
    assert kept_per_head(cache) == 5  # (6 + 4) / 2: padding does not count
    only_sliding = DynamicCache(config=tiny_config("gemma3_text", layers=1))
    only_sliding.update(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), 0)
    assert kept_per_head(only_sliding) == 0, "no full-attention layer holds any prunable pair"


def test_full_cache_bytes_counts_the_layers_that_hold_something():
    """K and V of ``length`` tokens per layer holding any (a sliding one at most its window - 1), in the
    cache's dtype; a layer never written to counts nothing."""
    cache = DynamicCache(config=tiny_config("gemma3_text", layers=4))  # sliding (window 16), full, ...
    for layer in (0, 1, 3):  # not layer 2
        cache.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), layer)
    assert cache.layers[2].keys is None or not cache.layers[2].keys.numel()
    per_token = 2 * (4 + 4) * 4  # heads x (key + value size) x float32 bytes
    assert full_cache_bytes(cache, 100) == (15 + 100 + 100) * per_token


def test_a_pruned_layer_knows_its_positions_and_padding_and_grows_when_decoding():
    cache = DynamicCache()
    cache.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), 0)
    kept = torch.tensor([[[0, 2, 2], [1, 4, 5]]])
    valid = torch.tensor([[[True, True, False], [True, True, True]]])
    keep_positions(cache, 0, kept, valid)
    layer = cache.layers[0]
    assert isinstance(layer, PrunedLayer) and torch.equal(layer.positions, kept)
    assert layer.kept_per_head == 2.5
    masks = head_masks(cache)
    assert list(masks) == [0] and torch.equal(masks[0], valid)
    keys, _ = cache.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), 0)  # one decoded token
    assert keys.shape[2] == 4 and cache.get_seq_length(0) == 4
    assert torch.equal(keys[:, :, -1], torch.ones(1, 2, 4))
    assert layer.kept_per_head == 2.5, "decoded tokens are not prompt pairs kept"
    equal = DynamicCache()
    equal.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), 0)
    keep_positions(equal, 0, kept[..., :2])
    assert head_masks(equal) == {}, "heads keeping equal counts need no mask"


@pytest.mark.parametrize("prompt, lookahead", [(40, 5), (12, 8), (5, 3), (20, 0)])
def test_sliding_layers_drop_what_was_added_inside(prompt, lookahead):
    """A sliding layer (window 16) holds the same states after a lookahead read inside the block as
    before it, whether the prompt already filled its window, the lookahead filled it, or neither."""
    cache = DynamicCache(config=tiny_config("gemma3_text"))  # layer 0 slides
    keys, values = torch.randn(1, 2, prompt, 4), torch.randn(1, 2, prompt, 4)
    cache.update(keys, values, 0)
    layer = cache.layers[0]
    before = (layer.keys.clone(), layer.values.clone(), layer.cumulative_length)
    with sliding_layers_drop(cache, lookahead):
        if lookahead:
            cache.update(torch.randn(1, 2, lookahead, 4), torch.randn(1, 2, lookahead, 4), 0)
    assert torch.equal(layer.keys, before[0]) and torch.equal(layer.values, before[1])
    assert layer.cumulative_length == before[2] == prompt and not layer.record_past
    assert torch.equal(layer.keys, keys[:, :, -15:]), "the window's last 15 states"


def test_cache_bytes_counts_what_the_layers_hold():
    cache = DynamicCache(config=tiny_config("gemma3_text", layers=3))
    cache.update(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 3), 0)  # layer 1 and 2 never written
    assert cache_bytes(cache) == 2 * 6 * (4 + 3) * 4
    assert cache_bytes(DynamicCache(config=tiny_config("gemma3_text"))) == 0
