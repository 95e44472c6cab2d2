"""Pruning a cache layer in place (draftwise/cache.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import DynamicCache

from draftwise.cache import keep_positions


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
