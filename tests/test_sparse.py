"""Sparse pre-fill: vertical-slash attention against a dense reference, and SpecKV's sparse path."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, random_ids, tiny_model

from draftwise import SpecKV
from draftwise.cache import prunable_layers
from draftwise.decoding import decode
from draftwise.prefill import prefill, prefill_sparse
from draftwise.sparse import vertical_slash_attention


def dense_reference(query, key, value, visible, scaling):
    """Attention with an explicit ``visible`` mask ``[B, G, T, K]`` (per KV head)."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    mask = visible.repeat_interleave(group, dim=1)
    logits = (query @ k.transpose(-1, -2) * scaling).masked_fill(~mask, float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2)


def random_qkv(length=40, keys=40, heads=4, groups=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, heads, length, dim, generator=g),
        torch.randn(1, groups, keys, dim, generator=g),
        torch.randn(1, groups, keys, dim, generator=g),
    )


@pytest.mark.parametrize("block", [7, 256])
def test_vertical_slash_matches_its_mask(block):
    q, k, v = random_qkv(length=30, keys=40)
    verticals = torch.tensor([[[0, 3, 17, 25, 39], [1, 2, 8, 30, 31]]])
    band = 6
    got = vertical_slash_attention(q, k, v, verticals, band, 0.3, block=block)
    positions = torch.arange(10, 40)[:, None]
    keys = torch.arange(40)[None, :]
    in_band = (positions - keys >= 0) & (positions - keys < band)
    visible = in_band[None, None].repeat(1, 2, 1, 1)
    for head in range(2):
        for j in verticals[0, head].tolist():
            visible[0, head, :, j] |= positions[:, 0] >= j
    torch.testing.assert_close(got, dense_reference(q, k, v, visible, 0.3), rtol=1e-5, atol=1e-6)


def test_vertical_slash_with_everything_visible_is_dense_causal_attention():
    q, k, v = random_qkv()
    everything = torch.arange(40).expand(1, 2, -1)
    causal = torch.ones(40, 40, dtype=torch.bool).tril()[None, None].repeat(1, 2, 1, 1)
    expected = dense_reference(q, k, v, causal, 0.35)
    torch.testing.assert_close(vertical_slash_attention(q, k, v, everything, 3, 0.35), expected)
    torch.testing.assert_close(vertical_slash_attention(q, k, v, None, 40, 0.35), expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sparse_prefill_covering_everything_decodes_like_dense(arch):
    target = tiny_model(arch)
    n = 60
    ids = torch.tensor([random_ids(n, seed=6)])
    guess = torch.tensor([random_ids(5, seed=7)])
    dense = prefill(target, ids, SpecKV(budget=n, window=8), guess)
    # The last 8 + 5 queries score the other 52 keys: 52 verticals and a band of 13 hide nothing.
    covering = SpecKV(budget=n, window=8, sparse_prefill=True, vertical=52, slash=13)
    sparse = prefill_sparse(target, ids, covering, guess)
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(
        decode(target, sparse.cache, sparse.logits, n, 8), decode(target, dense.cache, dense.logits, n, 8)
    )
    assert target.config._attn_implementation == "eager", "the attention implementation is restored"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sparse_prefill_keeps_the_budget(arch):
    target = tiny_model(arch, attn="sdpa")
    n, budget = 80, 24
    ids = torch.tensor([random_ids(n, seed=8)])
    method = SpecKV(budget=budget, window=8, sparse_prefill=True, vertical=8, slash=8)
    filled = prefill(target, ids, method, torch.tensor([random_ids(4, seed=9)]))
    for i, layer in enumerate(filled.cache.layers):
        if i in prunable_layers(filled.cache):
            assert layer.keys.shape[2] == budget
        else:
            assert layer.keys.shape[2] == target.config.sliding_window - 1 and layer.cumulative_length == n
    assert target.config._attn_implementation == "sdpa"
    tokens = decode(target, filled.cache, filled.logits, n, 5)
    assert tokens.shape[1] >= 1


def test_sparse_parameters_are_checked():
    with pytest.raises(ValueError, match="vertical"):
        SpecKV(budget=64, sparse_prefill=True, vertical=0)


def test_sparse_prefill_runs_only_when_it_hides_something():
    """SpecKV's docstring: the sparse pre-fill applies when ``vertical + slash`` is less than the
    pre-filled length (prompt and lookahead), and only with ``sparse_prefill=True``."""
    method = SpecKV(budget=64, sparse_prefill=True, vertical=60, slash=40)
    assert method.sparse_for(101) and not method.sparse_for(100) and not method.sparse_for(50)
    dense = SpecKV(budget=64, vertical=8, slash=8)
    assert not dense.sparse_for(1000) and not dense.swaps_attention and method.swaps_attention
