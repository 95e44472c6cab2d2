"""The target's verdict on the draft's lookahead (``accept_lookahead``): accepted tokens are the target's
own, the answer goes on from them at true positions, and sampling keeps the target's distribution."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import ARCHITECTURES, forced, random_ids, tiny_model

from draftwise import Full, GenerationRequest, PyramidKV, SnapKV, SpecKV, SpecKVPC, generate, generate_batch
from draftwise.acceptance import accept
from draftwise.decoding import Sampler, decode
from draftwise.draft import lookahead
from draftwise.prefill import prefill

N = 60
NEW = 12


def test_greedy_accepts_the_prefix_the_target_would_choose():
    logits = torch.full((4, 5), -5.0)
    for row, best in enumerate([2, 4, 1, 3]):  # the target's choice before each proposed token, then after
        logits[row, best] = 5.0
    assert accept(logits, torch.tensor([2, 4, 1])).accepted == [2, 4, 1]
    assert accept(logits, torch.tensor([2, 4, 0])).accepted == [2, 4]
    verdict = accept(logits, torch.tensor([0, 4, 1]))
    assert verdict.accepted == [] and verdict.next_token is None  # the next token: argmax of row 0


def test_sampling_keeps_the_targets_distribution():
    """Speculative sampling with the draft's greedy tokens: the first answer token is distributed as
    p1, and the second, given the first was the proposed one, as p2 (not as the proposal)."""
    p1 = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p2 = torch.tensor([0.1, 0.6, 0.2, 0.1])
    logits = torch.stack([p1.log(), p2.log(), torch.zeros(4)])
    sampler = Sampler(temperature=1.0, seed=0)
    draws = 20000
    first, second = torch.zeros(4), torch.zeros(4)
    for _ in range(draws):
        verdict = accept(logits, torch.tensor([1, 1]), sampler)
        tokens = verdict.accepted + ([verdict.next_token] if verdict.next_token is not None else [])
        first[tokens[0]] += 1
        if tokens[0] == 1 and len(tokens) > 1:
            second[tokens[1]] += 1
    assert second.sum() > 0.2 * draws
    for counts, p in ((first, p1), (second, p2)):
        observed, spread = counts / counts.sum(), 4 * (p * (1 - p) / counts.sum()).sqrt()
        assert ((observed - p).abs() <= spread).all(), (observed, p)


def test_sampling_is_reproducible_with_a_seed(tokenizer):
    target = tiny_model("qwen2")
    ids = random_ids(N)
    method = SpecKV(budget=24, window=8, lookahead=6)
    runs = [
        generate(target, target, tokenizer, ids, method=method, temperature=1.0, seed=7, max_new_tokens=NEW)
        for _ in range(2)
    ]
    assert runs[0].token_ids == runs[1].token_ids


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_draft_that_is_the_target_is_accepted_whole_and_the_answer_stays_fulls(arch, attn, tokenizer):
    """With the target as its own draft, the lookahead is the target's answer: all of it is accepted.
    Forced to keep the whole prompt, the answer is then Full's token for token (the accepted tokens'
    KV pairs and the sliding layers hold what Full's would)."""
    target = tiny_model(arch, seed=0, attn=attn)
    ids = random_ids(N)
    full = generate(target, None, tokenizer, ids, method=Full(), max_new_tokens=NEW)
    assert len(full.token_ids) > 6
    pyramid = PyramidKV(window=8, lookahead=6)
    pyramid = replace(pyramid, budget=8 + pyramid.beta * (N - 8))  # its smallest layer keeps all N
    for method in (SpecKV(budget=N, window=8, lookahead=6), pyramid):
        out = generate(target, target, tokenizer, ids, method=forced(method), max_new_tokens=NEW)
        assert out.stats.lookahead_accepted == 6, method
        assert out.token_ids == full.token_ids, method


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_decoding_goes_on_at_true_positions_after_the_accepted_tokens(arch, tokenizer):
    target = tiny_model(arch, attn="sdpa")
    ids = random_ids(N)
    steps = []
    hook = target.register_forward_pre_hook(
        lambda module, args, kwargs: steps.append(kwargs.get("position_ids")), with_kwargs=True
    )
    method = SpecKV(budget=24, window=8, lookahead=5)
    out = generate(target, target, tokenizer, ids, method=method, max_new_tokens=NEW)
    hook.remove()
    assert out.stats.lookahead_accepted == 5 and len(out.token_ids) > 6
    decoding = [p.flatten().tolist() for p in steps if p is not None and p.shape[-1] == 1]
    assert decoding[-(len(out.token_ids) - 6) :] == [[N + 5 + i] for i in range(len(out.token_ids) - 6)]


def test_nothing_accepted_is_the_method_without_acceptance(tokenizer):
    """Another draft whose lookahead the target rejects at once: the answer is exactly the one with
    ``accept_lookahead=False`` (which drops the whole lookahead, as before)."""
    target, draft = tiny_model("llama"), tiny_model("llama", seed=3, layers=2)
    ids = random_ids(N)
    for method in (SpecKV(budget=24, window=8, lookahead=6), SnapKV(budget=24, window=8, lookahead=4)):
        on = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=NEW)
        off = generate(
            target, draft, tokenizer, ids, method=replace(method, accept_lookahead=False), max_new_tokens=NEW
        )
        assert on.stats.lookahead_accepted == 0 and off.stats.lookahead_accepted == 0
        assert on.token_ids == off.token_ids


def test_accept_lookahead_false_drops_the_lookahead_as_before(tokenizer):
    """``False``: the pruned cache holds the prompt's kept pairs alone and decoding starts after the
    prompt, even when the target agrees with the whole lookahead."""
    target = tiny_model("mistral")
    ids = torch.tensor([random_ids(N)])
    method = SpecKV(budget=24, window=8, lookahead=5, accept_lookahead=False)
    ahead = lookahead(target, ids, 5)
    ready = prefill(target, ids, method, ahead)
    assert ready.accepted == [] and all(layer.keys.shape[2] == 24 for layer in ready.cache.layers)
    expected = decode(target, ready.cache, ready.logits, N, NEW, None, {1})[0].tolist()
    out = generate(target, target, tokenizer, ids, method=method, max_new_tokens=NEW)
    assert out.token_ids == expected and out.stats.lookahead_accepted == 0
    accepted = prefill(target, ids, replace(method, accept_lookahead=True), ahead)
    assert accepted.accepted == ahead[0].tolist()
    assert all(layer.keys.shape[2] == 24 + 5 for layer in accepted.cache.layers)
    assert all(layer.positions.shape[-1] == 24 for layer in accepted.cache.layers)


def test_the_accepted_tokens_end_the_answer_at_a_stop_or_the_token_limit(tokenizer):
    target = tiny_model("qwen2")
    ids = random_ids(N)
    method = SpecKV(budget=24, window=8, lookahead=8)
    whole = generate(target, target, tokenizer, ids, method=method, max_new_tokens=NEW)
    short = generate(target, target, tokenizer, ids, method=method, max_new_tokens=3)
    assert short.token_ids == whole.token_ids[:3] and short.stats.lookahead_accepted == 3
    assert short.stats.decode_seconds == 0.0
    seen = []

    def second_ends(token: int) -> bool:
        seen.append(token)
        return len(seen) == 2

    stopped = generate(
        target, target, tokenizer, ids, method=method, max_new_tokens=NEW, on_token=second_ends
    )
    assert stopped.token_ids == whole.token_ids[:2] == seen


def test_speckv_pc_and_batches_accept_too(tokenizer):
    """SpecKV-PC's shared lookahead (written by its SpecPC stage) is accepted by its SpecKV stage; rows of
    a batch take their accepted tokens before they join, and answer as alone."""
    target = tiny_model("qwen3")
    requests = [
        GenerationRequest(
            random_ids(n, seed=n),
            method=forced(SpecKVPC(kv_budget=n, prompt_budget=n, kv_window=8, prompt_window=8, lookahead=4)),
        )
        for n in (50, 70)
    ]
    requests.append(
        GenerationRequest(random_ids(40, seed=1), method=SpecKV(budget=24, window=8, lookahead=5))
    )
    alone = [
        generate(target, target, tokenizer, r.prompt, method=r.method, max_new_tokens=NEW) for r in requests
    ]
    assert all(a.stats.lookahead_accepted > 0 for a in alone)
    together = generate_batch(target, target, tokenizer, requests, max_new_tokens=NEW)
    assert [t.token_ids for t in together] == [a.token_ids for a in alone]
    assert [t.stats.lookahead_accepted for t in together] == [a.stats.lookahead_accepted for a in alone]
