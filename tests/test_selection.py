"""Selection rules: SpecPC's token choice, SpecKV's per-head budgets, pooling and top-k."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, random_ids, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from draftwise import SpecKV, SpecPC, generate
from draftwise.cache import prunable_layers
from draftwise.prefill import prefill
from draftwise.scoring import smooth, top_indices
from draftwise.token_selection import select_tokens


@st.composite
def selection_case(draw):
    n = draw(st.integers(1, 300))
    window = draw(st.integers(1, n))
    budget = draw(st.integers(window, n + 20))
    neighbourhood = draw(st.integers(1, 70))
    scores = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n))
    return torch.tensor(scores), budget, window, neighbourhood


@settings(max_examples=300, deadline=None)
@given(selection_case())
def test_select_tokens_keeps_window_order_and_budget(case):
    scores, budget, window, neighbourhood = case
    n = scores.shape[0]
    kept = select_tokens(scores, budget, window, neighbourhood)
    assert kept.shape[0] == min(budget, n)
    assert torch.all(kept[1:] > kept[:-1]), "original order, no duplicates"
    assert kept.min() >= 0 and kept.max() < n
    assert set(range(n - window, n)) <= set(kept.tolist()), "the window is always kept"
    if budget > window and n > window:
        best = int(torch.argmax(scores[: n - window]))
        assert best in kept.tolist(), "the top-scored token is kept"


def test_select_tokens_grows_neighbourhoods_nearest_first():
    scores = torch.zeros(40)
    scores[10] = 1.0
    kept = select_tokens(scores, budget=4 + 5, window=4, neighbourhood=5)
    assert kept.tolist() == [8, 9, 10, 11, 12, 36, 37, 38, 39]
    # An even neighbourhood reaches one further to the left: offsets 0, -1, +1, -2.
    kept = select_tokens(scores, budget=4 + 4, window=4, neighbourhood=4)
    assert kept.tolist() == [8, 9, 10, 11, 36, 37, 38, 39]
    # A budget that cuts a neighbourhood keeps its nearest tokens.
    kept = select_tokens(scores, budget=4 + 3, window=4, neighbourhood=5)
    assert kept.tolist() == [9, 10, 11, 36, 37, 38, 39]


@settings(max_examples=100, deadline=None)
@given(selection_case(), st.integers(0, 10**9))
def test_a_neighbourhood_wider_than_the_prompt_acts_as_the_whole_prompt(case, extra):
    """Any neighbourhood of at least 2n tokens reaches every prefix token from every centre, so all
    choose alike (and the time does not grow with it)."""
    scores, budget, window, _ = case
    n = scores.shape[0]
    wide = select_tokens(scores, budget, window, 2 * n + 1)
    assert torch.equal(select_tokens(scores, budget, window, 2 * n + 1 + extra), wide)


def test_huge_pool_and_neighbourhood_cost_no_more_than_wide_ones():
    """A kernel or neighbourhood of 10**9 must not allocate or loop over 10**9 entries."""
    scores = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(smooth(scores, 10**9 + 1, "max"), torch.full_like(scores, float(scores.max())))
    assert torch.allclose(smooth(scores, 10**9, "avg"), torch.full_like(scores, float(scores.mean())))
    kept = select_tokens(scores, 2000, 64, 10**9)
    assert torch.equal(kept, select_tokens(scores, 2000, 64, 8001))


def test_select_tokens_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        select_tokens(torch.zeros(5), budget=10, window=8)
    with pytest.raises(ValueError, match="at least the window"):
        select_tokens(torch.zeros(50), budget=4, window=8)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=60),
    st.integers(1, 200),
    st.sampled_from(["max", "avg"]),
)
def test_smooth_is_a_centred_pool(values, kernel, pool):
    """Kernels up to several times the row's length included: the edges pool what exists."""
    x = torch.tensor(values)
    out = smooth(x, kernel, pool)
    assert out.shape == x.shape
    left, right = kernel // 2, (kernel - 1) // 2
    for i in range(len(values)):
        span = x[max(0, i - left) : i + right + 1]
        expected = span.max() if pool == "max" else span.mean()
        assert torch.isclose(out[i], expected, atol=1e-5)


def test_top_indices_are_the_largest_in_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    assert top_indices(scores, 2).tolist() == [[1, 3]]
    assert top_indices(scores, 10).tolist() == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_speckv_keeps_exactly_budget_pairs_per_head_per_layer(arch):
    target = tiny_model(arch)
    n, budget, window = 70, 24, 8
    ids = torch.tensor([random_ids(n)])
    guess = torch.tensor([random_ids(5, seed=9)])
    filled = prefill(target, ids, SpecKV(budget=budget, window=window), lookahead_ids=guess)
    full_layers = prunable_layers(filled.cache)
    assert full_layers
    for i, layer in enumerate(filled.cache.layers):
        if i in full_layers:
            assert layer.keys.shape[2] == budget and layer.values.shape[2] == budget
        else:  # Gemma 3's sliding layers hold their window, untouched by the lookahead
            assert layer.keys.shape[2] == target.config.sliding_window - 1
            assert layer.cumulative_length == n


def test_pruning_keeps_original_prefix_keys_in_order_then_the_window():
    """Per head, the pruned cache holds ``budget - window`` distinct keys of the original prefix, in their
    original order, then the window's keys. (Which keys, with and without a lookahead, is checked
    against independent references in ``test_references.py``.)"""
    target = tiny_model("llama")
    n, budget, window = 50, 20, 4
    ids = torch.tensor([random_ids(n, seed=4)])
    full = prefill(target, ids)
    pruned = prefill(target, ids, SpecKV(budget=budget, window=window, kernel=1), lookahead_ids=None)
    for layer in range(target.config.num_hidden_layers):
        kept = pruned.cache.layers[layer].keys[0]  # [G, budget, d]
        original = full.cache.layers[layer].keys[0]  # [G, n, d]
        for head in range(kept.shape[0]):
            window_keys = original[head, n - window :]
            torch.testing.assert_close(kept[head, -window:], window_keys)
            # every kept prefix key is one of the original prefix keys, in order
            matches = [
                int(torch.nonzero((original[head, : n - window] == k).all(-1))[0])
                for k in kept[head, :-window]
            ]
            assert matches == sorted(matches) and len(set(matches)) == budget - window


def test_specpc_keeps_the_budget_in_generate(tokenizer):
    target = tiny_model("qwen2")
    draft = tiny_model("qwen2", seed=1, layers=2)
    out = generate(
        target,
        draft,
        tokenizer,
        random_ids(120),
        method=SpecPC(budget=40, window=8, kernel=4, neighbourhood=4, first_layer=1, lookahead=3),
        max_new_tokens=4,
    )
    assert out.stats.prompt_tokens == 120
    assert out.stats.prompt_tokens_kept == 40
    assert out.stats.lookahead_tokens == 3
    assert out.stats.kv_bytes * 3 == out.stats.kv_bytes_full


@pytest.mark.parametrize(
    ("budget", "window", "neighbourhood"), [(0, 2, 1), (4, 0, 1), (4, 2, 0), (-1, 2, 1), (4, 2, -3)]
)
def test_select_tokens_needs_positive_sizes(budget, window, neighbourhood):
    with pytest.raises(ValueError, match="^budget, window and neighbourhood must be positive$"):
        select_tokens(torch.rand(10), budget, window, neighbourhood)


def test_select_tokens_needs_one_score_per_token():
    with pytest.raises(ValueError, match=r"^scores must be 1-D \[n\], got shape \(2, 5\)$"):
        select_tokens(torch.rand(2, 5), 4, 2)


def test_a_neighbourhood_of_one_keeps_only_the_scored_tokens():
    """Token 5 ranks first and token 9 second: with no neighbours, they are what is kept, not token 5's
    free neighbour 4."""
    scores = torch.zeros(14)
    scores[5], scores[9] = 2.0, 1.0
    assert select_tokens(scores, budget=4, window=2, neighbourhood=1).tolist() == [5, 9, 12, 13]
