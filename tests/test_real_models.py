"""The embedded Qwen2.5-Coder pair (draft 0.5B, target 1.5B), installed by scripts/setup.sh."""

from __future__ import annotations

import pytest
import torch
from helpers import forced, real_models_enabled

from draftwise import Full, GenerationRequest, SpecKV, SpecKVPC, SpecPC, generate, generate_batch, load_model
from draftwise.bench.needle import needle_case
from draftwise.decoding import decode
from draftwise.draft import lookahead
from draftwise.generate import encode
from draftwise.prefill import prefill

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not real_models_enabled(), reason="DRAFTWISE_SKIP_REAL_MODELS=1"),
]


@pytest.fixture(scope="module")
def pair(real_pair):
    return real_pair


def test_forced_compression_keeping_everything_gives_full_answer(pair):
    """The real pair through each drafted method's whole path (draft lookahead and scores, selection,
    pruning), forced with a budget that keeps the whole prompt: Full's answer, token for token."""
    target, draft, tokenizer = pair
    case = needle_case(tokenizer, context_tokens=300, seed=3)
    full = generate(target, draft, tokenizer, case.messages, method=Full(), max_new_tokens=12)
    n = full.stats.prompt_tokens
    assert 300 < n < 1024
    for method in (
        SpecKV(budget=n),
        SpecPC(budget=n),
        SpecKVPC(kv_budget=n, prompt_budget=n),
    ):
        out = generate(target, draft, tokenizer, case.messages, method=forced(method), max_new_tokens=12)
        assert out.token_ids == full.token_ids, method
        assert out.stats.lookahead_tokens > 0 and out.stats.draft_seconds > 0, method


def test_pruning_machinery_keeping_everything_is_exact(pair):
    target, draft, tokenizer = pair
    ids = encode(tokenizer, needle_case(tokenizer, context_tokens=200, seed=4).messages)
    n = ids.shape[1]
    full = prefill(target, ids)
    expected = decode(target, full.cache, full.logits, n, 8)
    ahead = lookahead(draft, ids, 8)
    pruned = prefill(target, ids, SpecKV(budget=n, accept_lookahead=False), lookahead_ids=ahead)
    assert torch.equal(decode(target, pruned.cache, pruned.logits, n, 8), expected)
    accepting = prefill(target, ids, SpecKV(budget=n), lookahead_ids=ahead)  # its verified start is Full's
    assert accepting.accepted == expected[0, : len(accepting.accepted)].tolist()


def test_speckv_budget_256_retrieves_the_needle_at_4k(pair):
    target, draft, tokenizer = pair
    case = needle_case(tokenizer, context_tokens=4000, depth=0.5, seed=0)
    out = generate(target, draft, tokenizer, case.messages, method=SpecKV(budget=256), max_new_tokens=32)
    assert out.stats.prompt_tokens >= 4000
    assert out.stats.kv_pairs_kept == 256
    assert out.stats.kv_fraction < 0.07
    assert case.answer in out.text, out.text


def test_cross_tokenizer_draft_retrieves_the_needle_at_4k(pair):
    target, _, tokenizer = pair
    draft, draft_tokenizer = load_model("smollm2-135m-instruct")
    case = needle_case(tokenizer, context_tokens=4000, depth=0.5, seed=0)
    out = generate(
        target,
        draft,
        tokenizer,
        case.messages,
        method=SpecKVPC(kv_budget=256, prompt_budget=1024),
        max_new_tokens=32,
        draft_tokenizer=draft_tokenizer,
    )
    assert out.stats.prompt_tokens >= 4000 and out.stats.prompt_tokens_kept == 1024
    assert out.stats.kv_pairs_kept == 256 and out.stats.lookahead_tokens > 0
    assert case.answer in out.text, out.text


def test_batched_rows_answer_as_each_prompt_alone(pair):
    """The real pair (its own dtype): three needle prompts of different lengths, each with another
    method, decoded together, give each prompt's own answer token for token."""
    target, draft, tokenizer = pair
    requests = [
        GenerationRequest(needle_case(tokenizer, context_tokens=n, seed=s).messages, method=m)
        for n, s, m in ((300, 1, Full()), (500, 2, SpecKV(budget=128)), (700, 3, SpecPC(budget=256)))
    ]
    alone = [
        generate(target, draft, tokenizer, r.prompt, method=r.method, max_new_tokens=12) for r in requests
    ]
    together = generate_batch(target, draft, tokenizer, requests, max_new_tokens=12)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert together[1].stats.kv_pairs_kept == 128 and together[2].stats.prompt_tokens_kept == 256


def test_the_accepted_lookahead_is_fulls_answer_start(pair):
    """SpecKV@256 on the real pair: the draft's lookahead tokens the target accepts are Full's first
    tokens (the target read them with its full cache), and on these cases it accepts some."""
    target, draft, tokenizer = pair
    accepted = []
    for tokens, seed in ((200, 4), (1000, 5)):
        case = needle_case(tokenizer, context_tokens=tokens, seed=seed)
        full = generate(target, draft, tokenizer, case.messages, method=Full(), max_new_tokens=16)
        out = generate(target, draft, tokenizer, case.messages, method=SpecKV(budget=256), max_new_tokens=16)
        k = out.stats.lookahead_accepted
        assert out.token_ids[: k + 1] == full.token_ids[: k + 1], (tokens, seed, k)
        accepted.append(k)
    assert max(accepted) > 0, accepted


def test_speculative_decoding_answers_as_without_it(pair):
    """The real pair in its own dtype: a 24-token answer with the 0.5B draft proposing (and with
    prompt lookup) is the answer without it, for Full and SpecKV@128, and most proposals are taken."""
    from draftwise import SpeculativeConfig

    target, draft, tokenizer = pair
    case = needle_case(tokenizer, context_tokens=600, seed=6)
    for method in (Full(), SpecKV(budget=128, accept_lookahead=False)):
        plain = generate(target, draft, tokenizer, case.messages, method=method, max_new_tokens=24)
        for config in (SpeculativeConfig(k=4), SpeculativeConfig(k=6, proposer="lookup")):
            out = generate(
                target, draft, tokenizer, case.messages, method=method, max_new_tokens=24, speculative=config
            )
            assert out.token_ids == plain.token_ids, (method, config)
            if config.proposer == "draft":
                assert out.stats.speculative_accepted > out.stats.speculative_drafted / 2, out.stats
