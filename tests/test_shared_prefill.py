"""A shared pre-fill gives each method exactly the answer it gives alone."""

from __future__ import annotations

import pytest
import torch
from helpers import random_ids, tiny_model

from draftwise import H2O, TOVA, AdaKV, Full, KNorm, PyramidKV, SnapKV, SpecKV, SpecPC, generate
from draftwise.prefill import observe, prune_observed
from draftwise.shared_prefill import SharedPrefill


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_shared_prefill_changes_no_answer(arch, tokenizer):
    target = tiny_model(arch)
    draft = tiny_model(arch, seed=1, layers=2)
    ids = random_ids(70, seed=4)
    methods = [
        Full(),
        SnapKV(budget=24, window=4),
        SpecKV(budget=24, window=4, lookahead=5),
        SpecKV(budget=30, window=8, lookahead=5, caote=True),
        PyramidKV(budget=24, window=4, lookahead=5),
        AdaKV(budget=24, window=4),
        H2O(budget=24, window=4),
        TOVA(budget=24, window=4),
        KNorm(budget=24, window=4),
        SpecPC(budget=40, window=8, first_layer=1, kernel=4, neighbourhood=4),
        SpecKV(budget=24, window=4, sparse_prefill=True, vertical=8, slash=8),
    ]
    shared = SharedPrefill(observed_queries=70)
    for method in methods:
        alone = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=6)
        reused = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=6, reuse=shared)
        assert reused.token_ids == alone.token_ids, method
        assert reused.stats.kv_bytes == alone.stats.kv_bytes


def test_reuse_refuses_another_prompt_or_too_few_queries(tokenizer):
    target = tiny_model("llama")
    shared = SharedPrefill(observed_queries=4)
    generate(target, None, tokenizer, random_ids(50), method=SnapKV(budget=20, window=4), reuse=shared)
    with pytest.raises(ValueError, match="one prompt"):
        generate(target, None, tokenizer, random_ids(60), method=SnapKV(budget=20, window=4), reuse=shared)
    with pytest.raises(ValueError, match="observes 50 queries"):
        generate(target, None, tokenizer, random_ids(50), method=H2O(budget=20, window=4), reuse=shared)


def test_pruning_an_observed_prefill_copies_it_by_default():
    target = tiny_model("qwen2")
    ids = torch.tensor([random_ids(40, seed=3)])
    method = SnapKV(budget=16, window=4)
    observed = observe(target, ids, method.observed_queries(40))
    first = prune_observed(target, observed, method)
    assert observed.cache.get_seq_length() == 40, "the observed pre-fill is left whole"
    second = prune_observed(target, observed, method)
    assert torch.equal(first.cache.layers[0].keys, second.cache.layers[0].keys)
    with pytest.raises(ValueError, match=r"^window \(41\) is larger than the prompt \(40 tokens\)$"):
        prune_observed(target, observed, SnapKV(budget=64, window=41))
