"""AdaKV: unequal per-head budgets, padded in the cache and masked at decode."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, random_ids, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from draftwise import AdaKV, SnapKV, generate
from draftwise.decoding import decode
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
    assert clean.valid, "heads got unequal counts"
    expected = decode(target, clean.cache, clean.logits, n, steps, valid=clean.valid)
    assert expected.shape[1] == steps
    corrupted = prefill(target, ids, method)
    for layer, valid in corrupted.valid.items():
        state = corrupted.cache.layers[layer]
        noise = torch.randn_like(state.keys) * 100
        state.keys = torch.where(valid[..., None], state.keys, noise)
        state.values = torch.where(valid[..., None], state.values, noise)
    assert torch.equal(
        decode(target, corrupted.cache, corrupted.logits, n, steps, valid=corrupted.valid), expected
    )
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
