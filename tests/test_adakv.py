"""AdaKV: unequal per-head budgets, padded in the cache and masked at decode."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import ARCHITECTURES, random_ids, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from draftwise import AdaKV, SnapKV, generate
from draftwise.attention import attention_modules
from draftwise.cache import head_masks
from draftwise.decoding import decode
from draftwise.headmask import HeadMaskedAttention
from draftwise.methods.adakv import adaptive_selection
from draftwise.prefill import prefill


def test_adaptive_selection_by_hand():
    scores = torch.tensor([[[9.0, 8, 7, 6, 5, 4, 3, 2], [0.8, 0.1, 0.7, 0.2, 0.6, 0.3, 0.5, 0.4]]])
    indices, valid = adaptive_selection(scores, count=4, floor=0.5)
    assert valid.sum(-1).tolist() == [[6, 2]]
    assert indices[0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert indices[0, 1][valid[0, 1]].tolist() == [0, 2]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.floats(0, 1), st.integers(0, 10_000))
def test_adaptive_selection_properties(heads, length, count, floor, seed):
    scores = torch.rand(1, heads, length, generator=torch.Generator().manual_seed(seed))
    indices, valid = adaptive_selection(scores, count, floor)
    count = min(count, length)
    assert int(valid.sum()) == heads * count, "the layer total is the budget"
    for head in range(heads):
        chosen = indices[0, head][valid[0, head]]
        assert len(chosen) >= int(floor * count), "each head keeps its floor"
        assert torch.all(chosen[1:] > chosen[:-1]), "ascending and unique"


def test_full_floor_is_snapkv(tokenizer):
    target = tiny_model("llama")
    ids = random_ids(70)
    snap = generate(target, None, tokenizer, ids, method=SnapKV(budget=24, window=4), max_new_tokens=6)
    ada = generate(
        target, None, tokenizer, ids, method=AdaKV(budget=24, window=4, floor=1.0), max_new_tokens=6
    )
    assert ada.token_ids == snap.token_ids


@pytest.mark.parametrize(
    "arch, attn, steps",
    [(arch, attn, 6) for arch in ARCHITECTURES for attn in ("eager", "sdpa")]
    + [("qwen2", "sdpa", 300)],  # past the head mask's first allocation (prompt + 256)
)
def test_padding_is_never_attended(arch, attn, steps):
    target = tiny_model(arch, attn=attn)
    n = 70
    ids = torch.tensor([random_ids(n, seed=2)])
    method = AdaKV(budget=24, window=4, floor=0.0)
    clean = prefill(target, ids, method)
    assert head_masks(clean.cache), "heads got unequal counts"
    expected = decode(target, clean.cache, clean.logits, n, steps)
    assert expected.shape[1] == steps
    corrupted = prefill(target, ids, method)
    for layer, valid in head_masks(corrupted.cache).items():
        state = corrupted.cache.layers[layer]
        noise = torch.randn_like(state.keys) * 100
        state.keys = torch.where(valid[..., None], state.keys, noise)
        state.values = torch.where(valid[..., None], state.values, noise)
    assert torch.equal(decode(target, corrupted.cache, corrupted.logits, n, steps), expected)
    assert target.config._attn_implementation == attn


def test_ada_speckv_lookahead_changes_what_is_kept(tokenizer, kept_positions):
    """Ada-SpecKV (AdaKV with a lookahead) keeps the budget and the lookahead's queries change which
    keys each head keeps (what exactly: ``test_references.py``)."""
    target = tiny_model("qwen2")
    draft = tiny_model("qwen2", seed=1, layers=2)
    ids = random_ids(90)
    out = generate(
        target, draft, tokenizer, ids, method=AdaKV(budget=30, window=4, lookahead=5), max_new_tokens=4
    )
    assert out.stats.kv_pairs_kept == 30 and out.stats.lookahead_tokens == 5
    with_lookahead = dict(kept_positions)
    generate(target, draft, tokenizer, ids, method=AdaKV(budget=30, window=4), max_new_tokens=4)
    assert kept_positions != with_lookahead


def test_padding_is_never_attended_in_bfloat16():
    """The head mask takes the queries' dtype (``sdpa`` refuses a float32 mask on bfloat16 queries)."""
    target = tiny_model("qwen2", attn="sdpa").to(torch.bfloat16)
    n = 70
    ids = torch.tensor([random_ids(n, seed=2)])
    method = AdaKV(budget=24, window=4, floor=0.0)
    clean = prefill(target, ids, method)
    assert head_masks(clean.cache)
    expected = decode(target, clean.cache, clean.logits, n, 4)
    corrupted = prefill(target, ids, method)
    for layer, valid in head_masks(corrupted.cache).items():
        state = corrupted.cache.layers[layer]
        state.keys = torch.where(valid[..., None], state.keys, torch.randn_like(state.keys) * 100)
    assert torch.equal(decode(target, corrupted.cache, corrupted.logits, n, 4), expected)


def _masked(attn: str):
    """A tiny model, its first attention module and a head mask hiding position 1 of KV head 0."""
    target = tiny_model("qwen2", attn=attn)
    module = attention_modules(target)[0]
    heads, groups = target.config.num_attention_heads, target.config.num_key_value_heads
    valid = torch.ones(1, groups, 4, dtype=torch.bool)
    valid[0, 0, 1] = False
    return target, module, heads, groups, HeadMaskedAttention(target, {0: valid})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_head_mask_calls_the_models_own_attention(attn):
    target, module, *_, masked = _masked(attn)
    with masked:
        inner = masked.inner(module)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    assert inner is (ALL_ATTENTION_FUNCTIONS["sdpa"] if attn == "sdpa" else eager)
    assert target.config._attn_implementation == attn


def test_head_mask_refuses_flash_attention_by_name():
    target, *_, masked = _masked("eager")
    target.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="need 'eager' or 'sdpa' attention, not 'flash_attention_2'"):
        masked.__enter__()


def test_head_mask_joins_the_models_own_mask():
    """A float mask from the model is added to the head mask; a boolean one (True: visible) first
    becomes 0 / the dtype's minimum. Each query head sees its KV group's padding."""
    _, module, heads, groups, masked = _masked("eager")
    seen = {}

    def inner(module, query, key, value, attention_mask, **kwargs):
        seen["mask"] = attention_mask
        return query, None

    masked.inner = lambda module: inner
    query, key = torch.zeros(1, heads, 1, 8), torch.zeros(1, groups, 5, 8)
    low = torch.finfo(torch.float32).min
    padding = torch.zeros(1, heads, 1, 5)
    padding[:, : heads // groups, :, 1] = low  # the query heads of KV head 0
    masked.attention(module, query, key, key, None)
    assert torch.equal(seen["mask"], padding)
    model_mask = torch.zeros(1, 1, 1, 7)
    model_mask[..., -1] = -5.0  # the model's own mask is longer: its last 5 positions are the keys'
    masked.attention(module, query, key, key, model_mask)
    assert torch.equal(seen["mask"], padding + model_mask[..., -5:])
    visible = torch.ones(1, 1, 1, 5, dtype=torch.bool)
    visible[..., 3] = False
    masked.attention(module, query, key, key, visible)
    assert torch.equal(seen["mask"], padding + torch.zeros(1, 1, 1, 5).masked_fill(~visible, low))


def test_head_mask_is_built_once_per_layer():
    """Decoding steps reuse one mask per layer (sliced, no new work) until it must grow."""
    _, module, heads, groups, masked = _masked("eager")
    query = torch.zeros(1, heads, 1, 8)
    first = masked.mask(module, query, torch.zeros(1, groups, 5, 8))
    again = masked.mask(module, query, torch.zeros(1, groups, 6, 8))
    assert again.data_ptr() == first.data_ptr() and again.shape[-1] == 6
    assert torch.equal(again[..., :5], first)
    grown = masked.mask(module, query, torch.zeros(1, groups, 4 + 257, 8))
    assert grown.shape[-1] == 4 + 257 and torch.equal(grown[..., :6], again)
