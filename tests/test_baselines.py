"""Selection rules of the key-only baselines, on hand-made keys and through a real pre-fill."""

from __future__ import annotations

import pytest
import torch
from helpers import random_ids, tiny_model

from draftwise import (
    H2O,
    TOVA,
    HeadTail,
    KeyDiff,
    KNorm,
    Perplexity,
    PyramidKV,
    RandomDrop,
    SnapKV,
    SpecKV,
    SpecKVPC,
    SpecPC,
    StreamingLLM,
    generate,
)
from draftwise.cache import kept_per_head
from draftwise.methods import build_method
from draftwise.methods.perplexity import surprisal
from draftwise.methods.pyramidkv import pyramid_budgets
from draftwise.prefill import prefill
from draftwise.scoring import caote_correction, top_indices


def kept(method, keys: torch.Tensor) -> list[int]:
    return top_indices(method.score(None, keys), method.budget - method.window)[0, 0].tolist()


def test_streamingllm_keeps_sinks_and_the_most_recent():
    keys = torch.randn(1, 1, 20, 4)
    assert kept(StreamingLLM(budget=10, window=2, sinks=4), keys) == [0, 1, 2, 3, 16, 17, 18, 19]
    assert kept(StreamingLLM(budget=10, window=2, sinks=0), keys) == list(range(12, 20))


def test_knorm_keeps_the_smallest_norms():
    norms = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
    keys = norms[None, None, :, None] * torch.tensor([0.6, 0.8])  # unit direction times norm
    assert kept(KNorm(budget=4, window=1), keys) == [1, 3, 5]


def test_keydiff_keeps_the_keys_least_like_the_mean():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [-1.0, 0.2], [0.0, 1.0], [1.0, -0.1]])[
        None, None
    ]
    assert kept(KeyDiff(budget=3, window=1), keys) == [3, 4]


def test_baselines_prune_a_real_cache_to_the_budget():
    target = tiny_model("llama")
    ids = torch.tensor([random_ids(60)])
    full = prefill(target, ids)
    for method in (
        StreamingLLM(budget=20, window=4),
        KNorm(budget=20, window=4),
        KeyDiff(budget=20, window=4),
    ):
        pruned = prefill(target, ids, method)
        for layer, state in enumerate(pruned.cache.layers):
            assert state.keys.shape[2] == 20
            original = full.cache.layers[layer].keys
            expected = top_indices(method.score(None, original[:, :, :56]), 16)
            torch.testing.assert_close(
                state.keys[:, :, :16], original.gather(2, expected[..., None].expand(-1, -1, -1, 16))
            )
            torch.testing.assert_close(state.keys[:, :, 16:], original[:, :, 56:])


def test_cli_builds_baselines():
    assert build_method("streamingllm", budget=64, window=8) == StreamingLLM(budget=64, window=8)
    with pytest.raises(ValueError, match="knorm takes no option 'lookahead'"):
        build_method("knorm", budget=64, lookahead=3)


def test_pyramid_budgets_fall_with_depth_and_keep_the_total():
    for spare, layers in ((224, 28), (100, 3), (7, 5), (50, 1)):
        counts = pyramid_budgets(spare, layers, beta=20)
        assert sum(counts) == spare * layers
        assert counts == sorted(counts, reverse=True)
    method = PyramidKV(budget=64, window=8)
    budgets = [method.layer_budget(i, 4) for i in range(4)]
    assert sum(budgets) == 4 * 64 and budgets[0] > budgets[-1] >= 8


def test_pyramidkv_prunes_layers_to_their_budgets(tokenizer):
    target = tiny_model("llama", layers=4)
    method = PyramidKV(budget=24, window=4)
    pruned = prefill(target, torch.tensor([random_ids(60)]), method)
    lengths = [layer.keys.shape[2] for layer in pruned.cache.layers]
    assert lengths == [method.layer_budget(i, 4) for i in range(4)]
    assert kept_per_head(pruned.cache) == 24


def eager_attention(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_attentions=True).attentions  # per layer [B, H, n, n]


@pytest.mark.parametrize("caote", [False, True])
def test_tova_and_h2o_keep_what_eager_attention_says(caote):
    target = tiny_model("qwen2")
    n, window, budget = 50, 4, 20
    ids = torch.tensor([random_ids(n, seed=11)])
    attentions = eager_attention(target, ids)
    groups = target.config.num_key_value_heads
    full = prefill(target, ids)
    for method, queries in (
        (TOVA(budget=budget, window=window, caote=caote), slice(n - 1, n)),
        (H2O(budget=budget, window=window, caote=caote), slice(0, n)),
    ):
        pruned = prefill(target, ids, method)
        for layer, attention in enumerate(attentions):
            rows = attention.float()[:, :, queries].unflatten(1, (groups, -1))  # [B, G, g, q, n]
            if caote:
                rows = caote_correction(rows, full.cache.layers[layer].values)
            per_group = rows.sum(dim=(2, 3))[..., : n - window]
            expected = top_indices(per_group, budget - window)
            original = full.cache.layers[layer].keys
            index = expected[..., None].expand(-1, -1, -1, original.shape[-1])
            torch.testing.assert_close(
                pruned.cache.layers[layer].keys[:, :, :-window], original.gather(2, index)
            )


def test_speckvpc_compresses_when_either_stage_does():
    assert SpecKVPC(kv_budget=16, prompt_budget=100, kv_window=8).compresses(50), "the KV stage alone"
    assert SpecKVPC(kv_budget=64, prompt_budget=64, kv_window=8, prompt_window=8).compresses(50) is False
    assert SpecKVPC(kv_budget=16, prompt_budget=32, kv_window=8, prompt_window=8).compresses(50)


@pytest.mark.parametrize("prompt_budget", [100, 32])
def test_speckvpc_looks_ahead_its_own_number_of_tokens(tokenizer, prompt_budget):
    """Whether SpecPC's lookahead is reused (prompt budget 32 of 50 tokens) or, the prompt stage keeping
    everything (budget 100), SpecKV drafts its own, the lookahead is ``lookahead`` tokens long."""
    method = SpecKVPC(kv_budget=16, prompt_budget=prompt_budget, lookahead=3, kv_window=8, prompt_window=8)
    out = generate(tiny_model("qwen2"), tiny_model("qwen2", seed=1, layers=2), tokenizer, random_ids(50),
                   method=method, max_new_tokens=6)  # fmt: skip
    assert out.stats.lookahead_tokens == 3


def test_specpc_scores_a_prompt_as_long_as_its_window():
    draft = tiny_model("llama", seed=3)
    ids = torch.tensor([random_ids(8, seed=12)])
    scores, _ = SpecPC(budget=8, window=8, lookahead=2).token_scores(draft, ids)
    assert scores.shape == (8,)
    with pytest.raises(ValueError, match=r"^window \(9\) is larger than the prompt \(8 tokens\)$"):
        SpecPC(budget=9, window=9, lookahead=2).token_scores(draft, ids)


def test_specpc_needs_a_draft_with_a_full_attention_layer():
    """A one-layer Gemma 3 draft has only a sliding-window layer, which no longer holds the prompt."""
    draft = tiny_model("gemma3_text", layers=1)
    message = "^the draft has no full-attention layer to read the prompt's importance from$"
    with pytest.raises(ValueError, match=message):
        SpecPC(budget=16, window=8, lookahead=2).token_scores(draft, torch.tensor([random_ids(40)]))


def test_head_tail_and_random_drop_choose_as_documented():
    ids = torch.arange(100)[None]
    out = HeadTail(budget=20, window=4, head=0.5).keep_tokens(None, ids)
    assert out.positions.tolist() == list(range(8)) + list(range(88, 100))
    assert out.scores.dtype == torch.float32
    assert out.scores.shape == (100,) and out.scores[:8].min() > out.scores[8:].max(), "the head ranks first"
    first = RandomDrop(budget=20, window=4, seed=1).keep_tokens(None, ids).positions
    again = RandomDrop(budget=20, window=4, seed=1).keep_tokens(None, ids).positions
    other = RandomDrop(budget=20, window=4, seed=2).keep_tokens(None, ids).positions
    assert torch.equal(first, again) and not torch.equal(first, other)
    drawn = RandomDrop(budget=20, window=4, seed=1).keep_tokens(None, ids).scores
    assert drawn.shape == (100,) and set(first[:16].tolist()) == set(drawn[:96].topk(16).indices.tolist())
    assert len(first) == 20 and set(range(96, 100)) <= set(first.tolist())


@pytest.mark.parametrize("n", [40, 100])  # 100: longer than the hidden size (64), as real prompts are
def test_perplexity_keeps_the_most_surprising_tokens(n):
    draft = tiny_model("llama", seed=3)
    ids = torch.tensor([random_ids(n, seed=12)])
    scores = surprisal(draft, ids)
    with torch.no_grad():
        logits = draft(input_ids=ids).logits[0].float()
    expected = -logits[:-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(scores[1:], expected, rtol=1e-4, atol=1e-4)
    assert scores[0] == float("inf")
    for block in (1, 7, n - 1, n):  # the LM head a block at a time gives the same values
        torch.testing.assert_close(surprisal(draft, ids, block=block), scores, rtol=1e-5, atol=1e-5)
    kept = Perplexity(budget=12, window=4).keep_tokens(draft, ids).positions.tolist()
    assert kept[0] == 0 and kept[-4:] == list(range(n - 4, n))
    best = set(torch.topk(scores[1 : n - 4], 7).indices.add(1).tolist())
    assert best == set(kept[1:-4])


def test_lookahead_wraps_any_scorer_of_the_snapkv_family(tokenizer, kept_positions, target_inputs):
    """``lookahead`` on PyramidKV (lookahead-PyramidKV): the draft's lookahead is pre-filled in the
    target after the prompt and its queries change which keys each layer keeps (what exactly it keeps
    is checked against a reference in ``test_references.py``)."""
    assert not SnapKV(budget=64).needs_draft and SpecKV(budget=64).needs_draft
    assert SnapKV(budget=64, lookahead=None).lookahead_length(7) == 7
    target = target_inputs.watch(tiny_model("qwen2"))
    draft = tiny_model("qwen2", seed=1, layers=2)
    ids = random_ids(80)
    method = PyramidKV(budget=32, window=4, lookahead=5)
    assert method.needs_draft
    out = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=3)
    assert out.stats.lookahead_tokens == 5 and out.stats.kv_pairs_kept == 32
    assert target_inputs[0] == ids and len(target_inputs[1]) == 5, "the prompt, then the lookahead"
    with_lookahead = dict(kept_positions)
    generate(target, draft, tokenizer, ids, method=PyramidKV(budget=32, window=4), max_new_tokens=3)
    assert kept_positions != with_lookahead, "the lookahead's queries change what is kept"
    with pytest.raises(ValueError, match="needs a draft"):
        generate(target, None, tokenizer, ids, method=method)


def test_caote_correction_by_hand():
    rows = torch.tensor([0.5, 0.25, 0.25]).view(1, 1, 1, 1, 3)
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(1, 1, 3, 2)
    out = torch.tensor([0.5, 0.25])  # rows @ values
    expected = [
        a / (1 - a) * float((values[0, 0, j] - out).norm()) for j, a in enumerate(rows.flatten().tolist())
    ]
    torch.testing.assert_close(caote_correction(rows, values).flatten(), torch.tensor(expected))


def test_a_prompt_methods_compress_stops_the_drafts_lookahead_and_returns_its_scores():
    draft = tiny_model("llama", seed=3)
    ids = torch.tensor([random_ids(40, seed=12)])
    method = SpecPC(budget=16, window=4, lookahead=6)
    free = method.keep_tokens(draft, ids)
    assert free.lookahead_ids.shape == (1, 6)
    second = free.lookahead_ids[0, 1].item()
    stopped = method.keep_tokens(draft, ids, stop_ids=[second])
    assert stopped.lookahead_ids.shape[1] < 6, "the lookahead ends at a stop token"
    scores, lookahead_ids = method.token_scores(draft, ids, [second])
    torch.testing.assert_close(stopped.scores, scores)
    torch.testing.assert_close(stopped.lookahead_ids, lookahead_ids)
    assert torch.equal(stopped.positions, method.choose(scores))
