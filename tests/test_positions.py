"""After eviction, new tokens keep their true positions."""

from __future__ import annotations

import torch
from helpers import random_ids, tiny_model

from draftwise import SpecKV, generate
from draftwise.cache import keep_positions
from draftwise.prefill import prefill


def test_decode_after_eviction_matches_hand_computed_positions():
    """One layer: K/V of a kept token depend only on its embedding and position, so decoding token
    ``t`` after keeping positions ``S`` must equal a fresh forward over ``x[S] + [t]`` at positions
    ``S + [n]``, and differ from the shifted positions ``0..|S|``."""
    model = tiny_model("llama", seed=0, layers=1)
    n = 40
    ids = torch.tensor([random_ids(n, seed=5)])
    kept = torch.tensor([0, 1, 2, 7, 8, 9, 20, 21, 33, 34, 35, 36, 37, 38, 39])
    new_token = torch.tensor([[11]])

    filled = prefill(model, ids)
    groups = model.config.num_key_value_heads
    keep_positions(filled.cache, 0, kept.expand(1, groups, -1))
    with torch.no_grad():
        after = model(
            input_ids=new_token, past_key_values=filled.cache, position_ids=torch.tensor([[n]])
        ).logits[0, -1]
        sequence = torch.cat([ids[:, kept], new_token], dim=1)
        true_positions = torch.cat([kept, torch.tensor([n])])[None]
        by_hand = model(input_ids=sequence, position_ids=true_positions).logits[0, -1]
        shifted = model(input_ids=sequence).logits[0, -1]
    torch.testing.assert_close(after, by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, shifted, atol=1e-3)


def test_generate_decodes_at_true_positions(tokenizer):
    target = tiny_model("qwen2", seed=0)
    draft = tiny_model("qwen2", seed=1, layers=2)
    n, budget = 60, 24
    seen: list[list[int]] = []

    def record(module, args, kwargs):
        if kwargs.get("position_ids") is not None:
            seen.append(kwargs["position_ids"][0].tolist())

    handle = target.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = generate(
            target,
            draft,
            tokenizer,
            random_ids(n),
            method=SpecKV(budget=budget, window=8, lookahead=5),
            max_new_tokens=6,
        )
    finally:
        handle.remove()
    assert out.stats.kv_pairs_kept == budget
    decode_calls = [p for p in seen if len(p) == 1]
    assert decode_calls == [[n + i] for i in range(len(decode_calls))]
    assert len(decode_calls) == len(out.token_ids) - 1


def test_on_token_streams_every_token_in_order(tokenizer):
    target = tiny_model("llama")
    streamed: list[int] = []
    out = generate(target, None, tokenizer, random_ids(20), max_new_tokens=7, on_token=streamed.append)
    assert streamed == out.token_ids
