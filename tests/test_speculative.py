"""Speculative decoding with the draft (``generate(..., speculative=SpeculativeConfig(...))``): the target
verifies the draft's proposals in one forward over its own (pruned) cache, so greedy answers are the
answers without it, token for token, and sampling keeps the target's distribution."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ARCHITECTURES, every_method, mixed_requests, random_ids, tiny_model

from draftwise import (
    Full,
    GenerationRequest,
    SpecKV,
    SpeculativeConfig,
    StreamingLLM,
    generate,
    generate_batch,
    self_draft,
)
from draftwise.acceptance import accept
from draftwise.batching import BatchLayer, BatchSlidingLayer
from draftwise.cache import head_masks, tentative
from draftwise.checks import TooLarge
from draftwise.chunk_attention import ChunkAttention, chunk_mask, placeholder_mask
from draftwise.decoding import Answer, Sampler, decode
from draftwise.headmask import HeadMaskedAttention
from draftwise.prefill import prefill
from draftwise.speculative import Drafter, PromptLookup, SpeculativeStats, speculative_decode

N = 60
NEW = 20
CONFIGS = [SpeculativeConfig(k=3), SpeculativeConfig(k=5, draft_method=StreamingLLM(budget=20, window=4))]


def answer(target, draft, tokenizer, ids, method=None, speculative=None, new=NEW):
    return generate(target, draft, tokenizer, ids, method=method, max_new_tokens=new, speculative=speculative)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_answers_are_those_without_the_draft(arch, attn, tokenizer):
    """Every method, with another draft (its cache compressed too) and with the target proposing to
    itself: the same tokens as without the draft. With a full cache the target accepts all of its own
    proposals (its verification reads them exactly as decoding would)."""
    target = tiny_model(arch, seed=0, attn=attn)
    draft = tiny_model(arch, seed=1, attn=attn, layers=2)
    ids = random_ids(N)
    drafted = accepted = 0  # by the other draft, over every method
    for method in [Full(), *every_method(24)]:
        plain = answer(target, draft, tokenizer, ids, method)
        out = answer(target, draft, tokenizer, ids, method, CONFIGS[1])  # the draft's cache compressed too
        assert out.token_ids == plain.token_ids, method
        assert out.stats.speculative_drafted > 0
        drafted, accepted = drafted + out.stats.speculative_drafted, accepted + out.stats.speculative_accepted
        own = answer(target, target, tokenizer, ids, method, CONFIGS[0])
        if method.needs_draft:  # the target was SpecKV's or SpecPC's draft, too
            plain = answer(target, target, tokenizer, ids, method)
        assert own.token_ids == plain.token_ids, method
        if isinstance(method, Full):  # the draft's state is the target's: every proposal is its own
            assert own.stats.speculative_accepted == own.stats.speculative_drafted > 0
    assert accepted < drafted, "a random draft's proposals are not all the target's"


def test_a_self_draft_sharing_the_targets_layers(tokenizer):
    """The early-exit draft shares the target's attention modules (and their config): drafting and
    verifying take turns, each with its own cache's masks."""
    target = tiny_model("gemma3_text", seed=0, layers=4)
    draft = self_draft(target, 2)
    ids = random_ids(N)
    for method in (Full(), SpecKV(budget=24, window=8, lookahead=6)):
        plain = answer(target, draft, tokenizer, ids, method)
        out = answer(target, draft, tokenizer, ids, method, CONFIGS[1])
        assert out.token_ids == plain.token_ids and out.stats.speculative_accepted > 0, method


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_token_limits_and_stops_inside_a_round(limit, tokenizer):
    """The answer ends at ``max_new_tokens`` or a stop token even when it falls among accepted
    proposals; a stop token (here: every token after the third is made one) ends it there."""
    target = tiny_model("qwen2", seed=0)
    ids = random_ids(N)
    config = SpeculativeConfig(k=6)
    plain = generate(target, None, tokenizer, ids, max_new_tokens=limit)
    out = generate(target, target, tokenizer, ids, max_new_tokens=limit, speculative=config)
    assert out.token_ids == plain.token_ids and len(out.token_ids) <= limit
    # every proposal is accepted (a full cache proposing to itself), and each round's verification
    # adds one token of its own: no proposal is drafted that the answer has no room to keep
    drafted = out.stats.speculative_drafted
    assert out.stats.speculative_accepted == drafted and drafted == max(0, limit - 2)
    stop = plain.token_ids[2] if limit > 2 else None
    if stop is not None:
        target.generation_config.eos_token_id = stop
        try:
            plain = generate(target, None, tokenizer, ids, max_new_tokens=limit)
            out = generate(target, target, tokenizer, ids, max_new_tokens=limit, speculative=config)
        finally:
            target.generation_config.eos_token_id = 1
        assert out.token_ids == plain.token_ids and out.token_ids[-1] == stop


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reading_tokens_together_over_a_pruned_cache_equals_reading_them_one_by_one(arch, attn):
    """ChunkAttention's masks: 5 tokens read in one forward over a pruned (PyramidKV, AdaKV) cache give
    the logits of reading them one at a time, sliding-window layers included (window 16 < prompt);
    taking 3 back (tentative) leaves the cache reading 2 one at a time would leave."""
    from draftwise import AdaKV, PyramidKV

    model = tiny_model(arch, seed=0, attn=attn)
    ids = torch.tensor([random_ids(N)])
    tokens = random_ids(5, seed=3)
    for method in (PyramidKV(budget=24, window=8), AdaKV(budget=24, window=8)):
        one, together = prefill(model, ids, method), prefill(model, ids, method)
        stepwise = []
        padding = HeadMaskedAttention(model, head_masks(one.cache))  # AdaKV's, as decode() hides it
        for i, token in enumerate(tokens):
            with padding:
                out = model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=one.cache,
                    position_ids=torch.tensor([[N + i]]),
                    attention_mask=placeholder_mask(model),
                    use_cache=True,
                )
            stepwise.append(out.logits[0, -1])
            if i == 1:
                after_two = [layer.keys.clone() for layer in one.cache.layers]
        with ChunkAttention(model, together.cache), tentative(together.cache, 5) as trial:
            out = model(
                input_ids=torch.tensor([tokens]),
                past_key_values=together.cache,
                position_ids=torch.arange(N, N + 5)[None],
                attention_mask=placeholder_mask(model),
                use_cache=True,
            )
            trial.tokens = 3
        torch.testing.assert_close(out.logits[0], torch.stack(stepwise), rtol=1e-4, atol=1e-4)
        for kept, expected in zip(together.cache.layers, after_two, strict=True):
            torch.testing.assert_close(kept.keys, expected, rtol=1e-5, atol=1e-5)


def test_chunk_mask_sees_the_window_and_the_past_as_decoding_does():
    mask = chunk_mask(queries=2, keys=5, window=3, dtype=torch.float32, device="cpu")[0, 0]
    visible = (mask == 0).int().tolist()
    # 3 cached keys, then 2 new tokens: each sees the last 3 positions up to its own
    assert visible == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    full = (chunk_mask(2, 5, None, torch.float32, "cpu")[0, 0] == 0).int().tolist()
    assert full == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_sampling_with_a_sampling_draft_keeps_the_targets_distribution():
    """The rule with the draft's own distribution q: the first token is distributed as p1, and the
    second (given the first was the proposed one) as p2."""
    p1 = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p2 = torch.tensor([0.1, 0.6, 0.2, 0.1])
    q = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    logits = torch.stack([p1.log(), p2.log(), torch.zeros(4)])
    sampler = Sampler(temperature=1.0, seed=0)
    draws = 20000
    first, second = torch.zeros(4), torch.zeros(4)
    for _ in range(draws):
        proposed = [sampler.draw(q[0]), sampler.draw(q[1])]
        verdict = accept(logits, proposed, sampler, q)
        tokens = verdict.accepted + ([verdict.next_token] if verdict.next_token is not None else [])
        first[tokens[0]] += 1
        if len(verdict.accepted) >= 1 and len(tokens) > 1:
            second[tokens[1]] += 1
    for counts, p in ((first, p1), (second, p2)):
        observed, spread = counts / counts.sum(), 4 * (p * (1 - p) / counts.sum()).sqrt()
        assert ((observed - p).abs() <= spread).all(), (observed, p)


def test_speculative_sampling_on_a_model_keeps_its_distribution():
    """End to end on a tiny model: the second and third answer tokens, sampled with a draft's
    proposals, follow the target's own conditional distributions (computed exactly)."""
    target = tiny_model("llama", seed=0, vocab=16)
    draft = tiny_model("llama", seed=1, layers=2, vocab=16)
    ids = torch.tensor([[3, 7, 5, 9, 4, 11, 6, 8]])
    first = 10
    with torch.no_grad():
        context = torch.cat([ids, torch.tensor([[first]])], dim=1)
        p2 = target(context).logits[0, -1].softmax(-1)
        likely = int(p2.argmax())
        p3 = target(torch.cat([context, torch.tensor([[likely]])], dim=1)).logits[0, -1].softmax(-1)
    seconds, thirds = torch.zeros(16), torch.zeros(16)
    sampler = Sampler(temperature=1.0, seed=11)
    runs = 2000
    for _ in range(runs):
        cache = prefill(target, ids).cache
        answer = Answer(3)
        drafter = Drafter(draft, prefill(draft, ids).cache, ids.shape[1], SpeculativeConfig(k=3), sampler)
        speculative_decode(target, cache, None, ids.shape[1], answer, drafter, sampler, first_token=first)
        seconds[answer.tokens[1]] += 1
        if answer.tokens[1] == likely:
            thirds[answer.tokens[2]] += 1
    for counts, p in ((seconds, p2), (thirds, p3)):
        observed, spread = counts / counts.sum(), 4 * (p * (1 - p) / counts.sum()).sqrt() + 1e-3
        assert ((observed - p).abs() <= spread).all(), (observed, p)


def test_entropy_stop_drafts_less_and_changes_nothing(tokenizer):
    target = tiny_model("qwen3", seed=0)
    draft = tiny_model("qwen3", seed=1, layers=2)
    ids = random_ids(N)
    fixed = generate(target, draft, tokenizer, ids, max_new_tokens=NEW, speculative=SpeculativeConfig(k=4))
    strict = SpeculativeConfig(k=4, entropy_threshold=0.99)
    stopped = generate(target, draft, tokenizer, ids, max_new_tokens=NEW, speculative=strict)
    assert stopped.token_ids == fixed.token_ids
    assert stopped.stats.speculative_drafted < fixed.stats.speculative_drafted
    uniform = torch.full((96,), 1 / 96)
    bound = 1 - math.sqrt(0.2 * math.log(96))
    assert SpeculativeConfig(entropy_threshold=bound - 0.01).keeps_drafting(uniform)
    assert not SpeculativeConfig(entropy_threshold=bound + 0.01).keeps_drafting(uniform)
    assert SpeculativeConfig(entropy_threshold=0.9).keeps_drafting(torch.eye(96)[5])


def test_decode_and_speculative_decode_share_the_ending_rule():
    target = tiny_model("llama", seed=0)
    ids = torch.tensor([random_ids(N)])
    ready = prefill(target, ids)
    plain = decode(target, ready.cache, ready.logits, N, 9)[0].tolist()
    ready = prefill(target, ids)
    answer = Answer(9)
    drafter = Drafter(target, prefill(target, ids).cache, N, SpeculativeConfig(k=2), Sampler())
    stats = SpeculativeStats()
    speculative_decode(target, ready.cache, ready.logits, N, answer, drafter, Sampler(), stats=stats)
    assert answer.tokens == plain and answer.finish_reason == "length"
    assert 0 < stats.drafted <= 2 * stats.rounds  # never more than k a round


def test_bad_input_is_refused_before_any_work(tokenizer):
    target = tiny_model("llama", seed=0)
    ids = random_ids(N)
    with pytest.raises(ValueError, match="needs a draft"):
        generate(target, None, tokenizer, ids, speculative=SpeculativeConfig())
    with pytest.raises(ValueError, match="k must be"):
        SpeculativeConfig(k=0)
    with pytest.raises(ValueError, match="entropy_threshold"):
        SpeculativeConfig(entropy_threshold=1.5)
    with pytest.raises(ValueError, match="draft_method"):
        SpeculativeConfig(draft_method=SpecKV(budget=64))
    with pytest.raises(TypeError, match="SpeculativeConfig"):
        generate(target, target, tokenizer, ids, speculative={"k": 4})
    other = tiny_model("llama", seed=1, vocab=80)
    with pytest.raises(ValueError, match="vocabular"):
        generate(target, other, tokenizer, ids, speculative=SpeculativeConfig())
    flash = tiny_model("llama", seed=1)
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'eager' or 'sdpa'"):
        generate(target, flash, tokenizer, ids, speculative=SpeculativeConfig())


def test_prompt_lookup_proposes_what_followed_the_last_tokens_before():
    lookup = PromptLookup(
        torch.tensor([[5, 6, 7, 8, 9, 5, 6, 10, 11]]), SpeculativeConfig(k=3, proposer="lookup")
    )
    assert lookup.propose([5, 6], 3) == ([10, 11, 5], None)  # the latest match of (5, 6), then on
    assert lookup.propose([42, 7], 3) == ([8, 9, 5], None)  # only (7) matches
    assert lookup.propose([42, 43], 3) == ([], None)
    assert lookup.propose([5, 6], 1) == ([10], None)
    assert lookup.propose([7], 3, stop_ids={9}) == ([8, 9], None)  # ends at a stop token


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_prompt_lookup_answers_are_those_without_it(arch, tokenizer):
    """No model proposes (draft=None works for Full); greedy answers are unchanged, sampled ones keep
    their seed's reproducibility."""
    target = tiny_model(arch, seed=0)
    draft = tiny_model(arch, seed=1, layers=2)
    ids = random_ids(60, seed=5) + list(range(2, 96))  # every token occurs: every lookup finds one
    config = SpeculativeConfig(k=4, proposer="lookup")
    for method, helper in ((Full(), None), (SpecKV(budget=24, window=8, lookahead=6), draft)):
        plain = answer(target, helper, tokenizer, ids, method)
        out = answer(target, helper, tokenizer, ids, method, config)
        assert out.token_ids == plain.token_ids, method
        assert out.stats.speculative_drafted > 0
    with pytest.raises(ValueError, match="proposer='draft' only"):
        SpeculativeConfig(proposer="lookup", entropy_threshold=0.5)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_the_lookaheads_cache_is_the_drafts_cache_of_the_prompt(arch):
    """The draft's cache its lookahead leaves (handed to speculative decoding) holds the prompt alone,
    as a plain pre-fill does, sliding-window layers included (prompt 60 > window 16)."""
    from draftwise.draft import lookahead, lookahead_with_cache

    draft = tiny_model(arch, seed=1, layers=2)
    ids = torch.tensor([random_ids(N)])
    tokens, cache = lookahead_with_cache(draft, ids, 6)
    assert tokens.tolist() == lookahead(draft, ids, 6).tolist()
    fresh = prefill(draft, ids).cache
    for kept, plain in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(kept.keys, plain.keys)
        torch.testing.assert_close(kept.values, plain.values)


def test_a_shared_prefill_serves_speculative_decoding(tokenizer):
    """Benchmarks share one prompt's work between generations: with speculative decoding too, each
    answer and its drafting are what the generation gives alone."""
    from draftwise.shared_prefill import SharedPrefill

    target = tiny_model("mistral", seed=0)
    draft = tiny_model("mistral", seed=1, layers=2)
    ids = random_ids(N)
    shared = SharedPrefill(observed_queries=8 + NEW)
    for method in (Full(), SpecKV(budget=24, window=8), Full()):
        alone = answer(target, draft, tokenizer, ids, method, CONFIGS[0])
        together = generate(
            target,
            draft,
            tokenizer,
            ids,
            method=method,
            max_new_tokens=NEW,
            reuse=shared,
            speculative=CONFIGS[0],
        )
        assert together.token_ids == alone.token_ids, method
        assert together.stats.speculative_drafted == alone.stats.speculative_drafted, method
        assert together.stats.speculative_accepted == alone.stats.speculative_accepted, method


# ---- in batches: rows accept different counts ----


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_rows_answer_as_each_prompt_alone(arch, attn, tokenizer):
    """Every method x architecture x attention, rows joining and leaving (at most 3 at a time): each
    row's tokens are its prompt's plain answer, and its drafting (proposed, accepted) is what
    speculative decoding gives it alone -- rows accept different counts in the same verification and
    stay aligned (pruned, padded and sliding-window layers)."""
    target = tiny_model(arch, seed=0, attn=attn)
    draft = tiny_model(arch, seed=1, attn=attn, layers=2)
    requests = mixed_requests()
    # the target proposing to itself accepts much (not all: its cache is whole, the rows' are pruned);
    # the other draft, its cache compressed, little
    for config, proposer in ((CONFIGS[0], target), (CONFIGS[1], draft)):  # also SpecKV's draft
        plain = [
            generate(target, proposer, tokenizer, r.prompt, method=r.method, max_new_tokens=r.max_new_tokens)
            for r in requests
        ]
        alone = [
            generate(target, proposer, tokenizer, r.prompt, method=r.method, max_new_tokens=r.max_new_tokens,
                     speculative=config)
            for r in requests
        ]  # fmt: skip
        batch = generate_batch(target, proposer, tokenizer, requests, max_batch=3, speculative=config)
        for request, expected, one, together in zip(requests, plain, alone, batch, strict=True):
            assert together.token_ids == expected.token_ids, (config, request.method)
            drafting = (together.stats.speculative_drafted, together.stats.speculative_accepted)
            assert drafting == (one.stats.speculative_drafted, one.stats.speculative_accepted)
        rates = {r.stats.speculative_accepted / max(1, r.stats.speculative_drafted) for r in batch}
        assert len(rates) > 2, "rows should accept different shares"


def test_batched_sampling_draws_as_each_row_alone(tokenizer):
    """Sampled with a draft that samples too: each row's seeded draws (the draft's, the acceptance's, the
    residual's) are the ones it makes alone, whatever the others accept."""
    target = tiny_model("qwen2", seed=0)
    draft = tiny_model("qwen2", seed=1, layers=2)
    prompts = [random_ids(n, seed=n) for n in (20, 45, 33)]
    requests = [GenerationRequest(p, temperature=1.0, seed=7 + i) for i, p in enumerate(prompts)]
    config = SpeculativeConfig(k=3)
    batch = generate_batch(target, draft, tokenizer, requests, max_new_tokens=12, speculative=config)
    for request, result in zip(requests, batch, strict=True):
        alone = generate(
            target, draft, tokenizer, request.prompt, max_new_tokens=12, temperature=1.0,
            seed=request.seed, speculative=config,
        )  # fmt: skip
        assert result.token_ids == alone.token_ids
        assert result.stats.speculative_drafted == alone.stats.speculative_drafted > 0


def test_a_batch_layer_drops_each_rows_last_entries_by_hand():
    """Row 0 drops nothing, row 1 its last 2: row 1 moves right (its freed columns become padding), and
    the column that is padding in both rows goes."""
    keys = torch.tensor([[0.0, 1, 2, 3, 4], [0, 10, 11, 12, 13]])[:, None, :, None]  # [2, 1, 5, 1]
    valid = torch.tensor([[False, True, True, True], [False, True, True, True]])[:, None]  # 4 columns
    layer = BatchLayer(keys, keys.clone(), valid)
    layer.drop_last(torch.tensor([0, 2]))
    assert layer.keys[:, 0, :, 0].tolist() == [[1, 2, 3, 4], [0, 0, 10, 11]]
    assert layer.valid[:, 0].tolist() == [[True] * 4, [False, False, True, True]]
    layer.drop_last(torch.tensor([1, 1]))  # both alike: a plain crop, and a padding column less
    assert layer.keys[:, 0, :, 0].tolist() == [[1, 2, 3], [0, 0, 10]]
    assert layer.values[:, 0, :, 0].tolist() == [[1, 2, 3], [0, 0, 10]]
    assert layer.valid[:, 0].tolist() == [[True] * 3, [False, False, True]]


def test_a_sliding_layer_rolls_back_each_row_to_its_own_window():
    """A window of 4 holds 3 entries; a trial reads 3 more. Row 0 keeps one of them (its window: the 2
    last held and it), row 1 all three."""
    held = torch.tensor([[1.0, 2, 3], [21, 22, 23]])[:, None, :, None]
    layer = BatchSlidingLayer(4, held, held.clone(), None)
    layer.trial = True
    new = torch.tensor([[4.0, 5, 6], [24, 25, 26]])[:, None, :, None]
    keys, _ = layer.update(new, new.clone())
    assert keys.shape[2] == 6  # every state returned during the trial
    layer.drop_last(torch.tensor([2, 0]))
    assert layer.keys[:, 0, :, 0].tolist() == [[2, 3, 4], [24, 25, 26]]
    assert layer.valid is None and not layer.trial
    with pytest.raises(RuntimeError, match="trial"):
        layer.drop_last(torch.tensor([0, 0]))


def test_a_batchs_memory_counts_the_trial_tokens_and_the_drafts_cache(tokenizer):
    """max_memory refuses before any work a batch whose drafts' caches and trial tokens would not fit,
    while the same batch without speculative decoding fits."""
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=1, layers=2)
    prompts = [random_ids(N, seed=s) for s in range(3)]
    plain = generate_batch(target, draft, tokenizer, prompts, max_new_tokens=4)
    from draftwise.checks import kv_cache_bytes

    limit = 3 * kv_cache_bytes(target, N + 4, N + 4) + 1  # three plain rows, just
    generate_batch(target, draft, tokenizer, prompts, max_new_tokens=4, max_memory=limit)
    with pytest.raises(TooLarge, match="max_memory"):
        generate_batch(
            target, draft, tokenizer, prompts, max_new_tokens=4, max_memory=limit, speculative=CONFIGS[0]
        )
    lookup = SpeculativeConfig(k=1, proposer="lookup")  # one trial token a row more than plain
    with pytest.raises(TooLarge, match="max_memory"):
        generate_batch(
            target, None, tokenizer, prompts, max_new_tokens=4, max_memory=limit, speculative=lookup
        )
    spacious = generate_batch(target, draft, tokenizer, prompts, max_new_tokens=4, speculative=CONFIGS[0])
    assert [r.token_ids for r in spacious] == [r.token_ids for r in plain]
