"""Batched generation over compressed caches (``generate_batch``, ``BatchDecoder``): every row answers as
its prompt does alone, whatever the other rows' methods, lengths, budgets and stopping points."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, mixed_requests, random_ids, tiny_model

from draftwise import GenerationRequest, SnapKV, SpecKV, generate, generate_batch
from draftwise.batching import BatchDecoder, BatchLayer, Row
from draftwise.checks import TooLarge
from draftwise.prefill import prefill


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_row_answers_as_its_prompt_alone(arch, attn, tokenizer):
    """Every method x architecture x attention: rows of unequal kept lengths, pruned layers (PyramidKV's
    per-layer lengths, AdaKV's padded heads), sliding-window layers shorter than the window, rows
    finishing at different steps; all at once, and at most 3 at a time (rows join as others leave)."""
    target = tiny_model(arch, seed=0, attn=attn)
    draft = tiny_model(arch, seed=1, attn=attn, layers=2)
    requests = mixed_requests()
    alone = [
        generate(target, draft, tokenizer, r.prompt, method=r.method, max_new_tokens=r.max_new_tokens)
        for r in requests
    ]
    assert len({len(a.token_ids) for a in alone}) > 3, "rows should finish at different steps"
    for max_batch in (None, 3):
        batch = generate_batch(target, draft, tokenizer, requests, max_batch=max_batch)
        for request, one, together in zip(requests, alone, batch, strict=True):
            assert together.token_ids == one.token_ids, (max_batch, request.method, len(request.prompt))
            assert together.text == one.text
            assert together.stats.kv_bytes == one.stats.kv_bytes
            assert together.stats.prompt_tokens_kept == one.stats.prompt_tokens_kept
            assert together.stats.new_tokens == len(one.token_ids)


def test_a_batch_of_one_and_a_row_done_at_its_first_token(tokenizer):
    target = tiny_model("llama")
    ids = random_ids(30)
    one = generate(target, None, tokenizer, ids, max_new_tokens=9)
    assert [r.token_ids for r in generate_batch(target, None, tokenizer, [ids], max_new_tokens=9)] == [
        one.token_ids
    ]
    requests = [GenerationRequest(ids, max_new_tokens=1), GenerationRequest(random_ids(20, seed=5))]
    first, second = generate_batch(target, None, tokenizer, requests, max_new_tokens=9)
    assert first.token_ids == one.token_ids[:1]
    assert (
        second.token_ids
        == generate(target, None, tokenizer, random_ids(20, seed=5), max_new_tokens=9).token_ids
    )


def test_sampling_is_seeded_per_row(tokenizer):
    """Each row samples from its own seeded generator: the tokens generate draws alone with that seed,
    again on a second run; rows with other seeds draw other tokens."""
    target = tiny_model("qwen2")
    prompts = [random_ids(30, seed=s) for s in range(3)]
    requests = [GenerationRequest(p, temperature=1.0, seed=100 + i) for i, p in enumerate(prompts)]
    first = generate_batch(target, None, tokenizer, requests, max_new_tokens=12)
    again = generate_batch(target, None, tokenizer, requests, max_new_tokens=12)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    for prompt, request, result in zip(prompts, requests, first, strict=True):
        alone = generate(
            target, None, tokenizer, prompt, temperature=1.0, seed=request.seed, max_new_tokens=12
        )
        assert result.token_ids == alone.token_ids
    greedy = generate(target, None, tokenizer, prompts[0], max_new_tokens=12)
    assert first[0].token_ids != greedy.token_ids, "temperature 1 should leave the greedy path"


def test_stop_strings_per_request(tokenizer):
    target = tiny_model("llama")
    ids = random_ids(30)
    full = generate(target, None, tokenizer, ids, max_new_tokens=10)
    words = full.text.split()
    assert len(words) >= 4
    stop_at = words[3]
    cut = full.text[: full.text.index(stop_at)]
    stopped, free = generate_batch(
        target, None, tokenizer, [GenerationRequest(ids, stop=[stop_at]), ids], max_new_tokens=10
    )
    assert stopped.text == cut
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)] and len(stopped.token_ids) < 10
    assert free.token_ids == full.token_ids


def test_padding_is_never_attended(tokenizer):
    """Rows of different lengths are left-padded to one; the padding's keys and values, set to huge
    random values, change nothing."""
    target = tiny_model("qwen3", attn="sdpa")
    prompts = [torch.tensor([random_ids(n, seed=n)]) for n in (9, 30)]
    expected = []
    for ids in prompts:
        expected.append(generate(target, None, tokenizer, ids, max_new_tokens=6).token_ids)
    decoder = BatchDecoder(target)
    rows = []
    for ids in prompts:
        ready = prefill(target, ids)
        rows.append(Row(ready.cache, ready.logits, ids.shape[1], 6))
        assert decoder.add(rows[-1])
    layer = decoder.cache.layers[0]
    assert isinstance(layer, BatchLayer) and layer.keys.shape[0] == 2 and not layer.valid[0].all()
    for layer in decoder.cache.layers:
        noise = torch.randn_like(layer.keys) * 1000
        layer.keys = torch.where(layer.valid[..., None], layer.keys, noise)
        layer.values = torch.where(layer.valid[..., None], layer.values, noise)
    while decoder.rows:
        decoder.step()
    assert [row.tokens for row in rows] == expected


def test_a_row_removed_leaves_at_once_and_the_others_go_on(tokenizer):
    target = tiny_model("mistral")
    prompts = [torch.tensor([random_ids(n, seed=n)]) for n in (20, 35, 50)]
    expected = [generate(target, None, tokenizer, ids, max_new_tokens=8).token_ids for ids in prompts]
    decoder = BatchDecoder(target)
    rows = []
    for ids in prompts:
        ready = prefill(target, ids)
        rows.append(Row(ready.cache, ready.logits, ids.shape[1], 8))
        decoder.add(rows[-1])
    decoder.step()
    decoder.remove(rows[2])
    assert decoder.rows == rows[:2]
    assert all(layer.keys.shape[0] == 2 for layer in decoder.cache.layers)
    assert all(layer.keys.shape[2] == 35 + 1 for layer in decoder.cache.layers), (
        "the longest row's padding goes"
    )
    while decoder.rows:
        decoder.step()
    assert [row.tokens for row in rows[:2]] == expected[:2]
    assert rows[2].tokens == expected[2][:2]


def test_an_exception_from_on_token_ends_that_row_only(tokenizer):
    target = tiny_model("llama")
    prompts = [torch.tensor([random_ids(n, seed=n)]) for n in (20, 35)]
    expected = [generate(target, None, tokenizer, ids, max_new_tokens=8).token_ids for ids in prompts]

    def gone(token: int) -> None:
        raise ConnectionError("client went away")

    decoder = BatchDecoder(target)
    rows = []
    for ids, on_token in zip(prompts, (None, gone), strict=True):
        ready = prefill(target, ids)
        rows.append(Row(ready.cache, ready.logits, ids.shape[1], 8, on_token=on_token))
        decoder.add(rows[-1])
    assert decoder.rows == rows[:1]
    assert rows[1].finish_reason == "error" and isinstance(rows[1].error, ConnectionError)
    while decoder.rows:
        decoder.step()
    assert rows[0].tokens == expected[0] and rows[0].finish_reason in ("stop", "length")


class _Counting:
    def __init__(self, model) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self)

    def __call__(self, *args) -> None:
        self.calls += 1


def test_bad_batches_are_refused_before_any_work(tokenizer):
    target = tiny_model("llama")
    calls = _Counting(target)
    ids = random_ids(30)
    with pytest.raises(ValueError, match="prompts is empty"):
        generate_batch(target, None, tokenizer, [])
    with pytest.raises(TypeError, match="list of prompts"):
        generate_batch(target, None, tokenizer, "w7 w8 w9")
    with pytest.raises(TypeError, match="list of prompts"):
        generate_batch(target, None, tokenizer, [{"role": "user", "content": "w7"}])
    with pytest.raises(ValueError, match="prompt 1: .*exceeds the target's context of 1024"):
        generate_batch(target, None, tokenizer, [ids, random_ids(1100)])
    with pytest.raises(ValueError, match="prompt 0: the prompt is empty"):
        generate_batch(target, None, tokenizer, ["  ", ids])
    with pytest.raises(ValueError, match="max_batch must be a positive integer"):
        generate_batch(target, None, tokenizer, [ids], max_batch=0)
    with pytest.raises(ValueError, match="prompt 0: .*temperature"):
        generate_batch(target, None, tokenizer, [GenerationRequest(ids, temperature=-1.0)])
    with pytest.raises(TypeError, match="prompt 0: stop must be a list of strings"):
        generate_batch(target, None, tokenizer, [GenerationRequest(ids, stop=[3])])
    assert calls.calls == 0


def test_a_batch_beyond_max_memory_is_refused_before_any_work(tokenizer):
    """The bound counts every row padded to the longest kept length: 8 Full rows of 200 tokens need 8x
    what SnapKV at budget 24 keeps per row, plus the new tokens."""
    target = tiny_model("llama")
    calls = _Counting(target)
    prompts = [random_ids(200, seed=s) for s in range(8)]
    per_position = 2 * 3 * 2 * 16 * 4  # K and V x layers x KV heads x head size x float32
    full_bytes = 8 * (200 + 10) * per_position
    with pytest.raises(TooLarge, match=r"8 rows of up to 210 positions.*max_memory"):
        generate_batch(target, None, tokenizer, prompts, max_new_tokens=10, max_memory=full_bytes - 1)
    with pytest.raises(TooLarge, match="4 rows"):
        generate_batch(
            target, None, tokenizer, prompts, max_new_tokens=10, max_batch=4, max_memory=full_bytes // 3
        )
    assert calls.calls == 0
    method = SnapKV(budget=24, window=8)
    out = generate_batch(
        target,
        None,
        tokenizer,
        prompts,
        method=method,
        max_new_tokens=10,
        max_memory=8 * (24 + 10) * per_position,
    )
    assert all(r.stats.kv_pairs_kept == 24 for r in out)


def test_flash_attention_is_refused_by_name(tokenizer):
    target = tiny_model("llama")
    target.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="needs 'eager' or 'sdpa' attention, not 'flash_attention_2'"):
        generate_batch(target, None, tokenizer, [random_ids(20)])


def test_rows_decode_at_their_true_positions(tokenizer):
    """A pruned row decodes at its prompt's length, not its cache's: with a rotary base that makes
    positions matter, the batch's answer is the one generate gives (itself checked in test_positions)."""
    target = tiny_model("qwen2", attn="sdpa")
    draft = tiny_model("qwen2", seed=1, layers=2)
    prompts = [random_ids(n, seed=n) for n in (60, 90)]
    method = SpecKV(budget=24, window=8, lookahead=4)
    alone = [
        generate(target, draft, tokenizer, p, method=method, max_new_tokens=10).token_ids for p in prompts
    ]
    seen = []
    hook = target.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    batch = generate_batch(target, draft, tokenizer, prompts, method=method, max_new_tokens=10)
    hook.remove()
    assert [r.token_ids for r in batch] == alone
    steps = [p for p in seen if p is not None and p.shape == (2, 1)]
    assert steps and steps[0].flatten().tolist() == [60, 90]
