"""Exactness: a budget at least the prompt length is Full's own path (nothing runs but Full), the
pruning machinery keeping everything is exact, and a draft in another dtype stays exact when forced.
The methods' whole compression paths, forced with budgets that keep everything, are in
``test_forced_exactness.py``."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, every_method, forced, random_ids, tiny_model

from draftwise import Full, Perplexity, SpecKV, SpecKVPC, SpecPC, generate
from draftwise.decoding import decode
from draftwise.draft import lookahead
from draftwise.prefill import prefill

N = 80
NEW = 12


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_budget_at_least_prompt_takes_fulls_path(arch, tokenizer, kept_positions, target_inputs):
    """README: "A budget at least the prompt length means no compression, and the answer is exactly
    Full's". Nothing of the method runs: no draft, no pruning, the target reads the whole prompt once."""
    target = tiny_model(arch, seed=0)
    draft = target_inputs.watch(tiny_model(arch, seed=1, layers=2))
    ids = random_ids(N)
    full = generate(target, draft, tokenizer, ids, method=Full(), max_new_tokens=NEW)
    assert len(full.token_ids) > 1
    for budget in (N, N + 50):
        for method in every_method(budget):
            assert not method.compresses(N)
            out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=NEW)
            assert out.token_ids == full.token_ids, (arch, method)
            assert out.stats.kv_bytes == full.stats.kv_bytes
            assert out.stats.draft_seconds == 0 and out.stats.lookahead_tokens == 0
    assert not kept_positions and not target_inputs, "Full's path: no pruning and no draft forward"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pruning_machinery_keeping_everything_is_exact(arch):
    """Run the real scoring and pruning path (lookahead chunk, gather, sliding-layer restore) with a
    budget equal to the prompt length: the cache must decode exactly as Full's."""
    target = tiny_model(arch, seed=0)
    draft = tiny_model(arch, seed=1, layers=2)
    ids = torch.tensor([random_ids(N, seed=3)])
    full = prefill(target, ids)
    expected = decode(target, full.cache, full.logits, N, NEW)
    guess = lookahead(draft, ids, 7)
    assert guess.shape[1] >= 1
    pruned = prefill(target, ids, SpecKV(budget=N, window=8), lookahead_ids=guess)
    assert torch.equal(pruned.logits, full.logits)
    got = decode(target, pruned.cache, pruned.logits, N, NEW)
    assert torch.equal(got, expected)


def test_a_draft_in_another_dtype(tokenizer):
    """A bfloat16 draft for a float32 target (e.g. a draft loaded as shipped beside a target loaded in
    float32): the draft's ids and scores cross over; with the compression path forced, budgets >= the
    prompt stay exact; a small budget keeps less than Full's cache."""
    target = tiny_model("qwen2", seed=0, attn="sdpa")
    draft = tiny_model("qwen2", seed=1, attn="sdpa", layers=2).to(torch.bfloat16)
    ids = random_ids(N)
    full = generate(target, draft, tokenizer, ids, method=Full(), max_new_tokens=NEW)
    drafted = [
        lambda b: SpecKV(budget=b, window=8, lookahead=6),
        lambda b: SpecPC(budget=b, window=8, neighbourhood=4, kernel=4, first_layer=1),
        lambda b: SpecKVPC(kv_budget=b, prompt_budget=b, kv_window=8, prompt_window=8, lookahead=4),
        lambda b: Perplexity(budget=b, window=8),
    ]
    for make in drafted:
        out = generate(target, draft, tokenizer, ids, method=forced(make(N)), max_new_tokens=NEW)
        assert out.token_ids == full.token_ids, make(N)
        assert out.stats.draft_seconds > 0, "the bfloat16 draft ran"
        small = generate(target, draft, tokenizer, ids, method=make(32), max_new_tokens=NEW)
        assert len(small.token_ids) >= 1
        assert small.stats.kv_bytes < full.stats.kv_bytes, make(32)
