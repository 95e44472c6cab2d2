"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from draftwise import Full, SnapKV, SpecKV, SpecKVPC, SpecPC, generate
from draftwise.prefill import prefill


@pytest.fixture(scope="module")
def pair():
    return tiny_model("qwen2"), tiny_model("qwen2", seed=1, layers=2)


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user", "content": ""}]])
def test_empty_prompt(pair, tokenizer, prompt):
    target, draft = pair
    with pytest.raises(ValueError, match="empty"):
        generate(target, draft, tokenizer, prompt, method=SpecKV(budget=64))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SpecKV(budget=0), "positive"),
        (lambda: SpecKV(budget=-5), "positive"),
        (lambda: SpecKV(budget=16, window=32), "at least the window"),
        (lambda: SpecPC(budget=32), "at least the window"),
        (lambda: SnapKV(budget=64, kernel=4), "odd"),
        (lambda: SnapKV(budget=64, pool="min"), "pool"),
        (lambda: SpecKV(budget=64, reduce="sum"), "reduce"),
        (lambda: SpecKV(budget=64, lookahead=0), "lookahead"),
        (lambda: SpecKVPC(kv_budget=8), "at least the window"),
        (lambda: SpecPC(budget=2.5), "positive integer"),
    ],
)
def test_bad_method_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_window_larger_than_prompt_in_low_level_calls(pair):
    target, _ = pair
    with pytest.raises(ValueError, match="larger than the prompt"):
        prefill(target, torch.tensor([random_ids(10)]), SpecKV(budget=64, window=32))


def test_budget_at_least_prompt_is_not_an_error(pair, tokenizer):
    target, draft = pair
    out = generate(target, draft, tokenizer, random_ids(10), method=SpecKV(budget=64, window=32))
    assert out.stats.prompt_tokens_kept == 10 and out.stats.kv_pairs_kept == 10


def test_prompt_beyond_context(pair, tokenizer):
    target, draft = pair
    with pytest.raises(ValueError, match="exceeds the target's context of 1024"):
        generate(target, draft, tokenizer, random_ids(1020), method=Full(), max_new_tokens=10)


def test_draft_with_another_vocabulary(pair, tokenizer):
    target, _ = pair
    other = tiny_model("llama")
    other.resize_token_embeddings(200)
    with pytest.raises(ValueError, match="vocabulary .* draft_tokenizer="):
        generate(target, other, tokenizer, random_ids(100), method=SpecKV(budget=32, window=8))


def test_unsupported_architecture(pair, tokenizer):
    _, draft = pair
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(TypeError, match="unsupported target architecture 'gpt2'"):
        generate(gpt2, draft, tokenizer, random_ids(50), method=SpecKV(budget=32, window=8))


def test_missing_draft(pair, tokenizer):
    target, _ = pair
    with pytest.raises(ValueError, match="needs a draft"):
        generate(target, None, tokenizer, random_ids(100), method=SpecPC(budget=64, window=8))


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_bad_max_new_tokens(pair, tokenizer, bad):
    target, draft = pair
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(target, draft, tokenizer, random_ids(20), max_new_tokens=bad)


def test_method_must_be_a_method(pair, tokenizer):
    target, draft = pair
    with pytest.raises(TypeError, match="method"):
        generate(target, draft, tokenizer, random_ids(20), method="speckv")


def test_bad_sampling_parameters(pair, tokenizer):
    target, draft = pair
    with pytest.raises(ValueError, match="top_p"):
        generate(target, draft, tokenizer, random_ids(20), temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(target, draft, tokenizer, random_ids(20), temperature=-1.0)


def test_chat_messages_without_template(pair, tokenizer):
    target, draft = pair
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>")
    with pytest.raises(ValueError, match="chat template"):
        generate(target, draft, plain, [{"role": "user", "content": "w7 w8"}])


def test_sampling_is_seeded(pair, tokenizer):
    target, draft = pair
    ids = random_ids(30)
    runs = [
        generate(
            target, draft, tokenizer, ids, temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8
        ).token_ids
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
