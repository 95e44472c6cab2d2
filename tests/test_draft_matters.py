"""The draft matters, on the real pair: cases where the draft's lookahead or its attention scores make
the difference between the answer and a wrong one (greedy, so deterministic on a given machine).

RULER's UUID needle (``niah_single_3``, sample 1 at 1,024 tokens: 987 prompt tokens, the needle near
token 729): a 36-character UUID is hard to read back from a few kept KV pairs or tokens. With 128 KV
pairs per head SnapKV keeps only the UUID's start and makes the rest up; SpecKV's lookahead (the
draft's own answer, which holds the UUID) makes the target keep it all. With 256 prompt tokens SpecPC
keeps the needle's sentence, while keeping the head and tail (HeadTail) or random tokens (RandomDrop)
loses it. These tests fail if the lookahead's queries are dropped, or SpecPC's draft scores are negated
or zeroed (in-memory sabotage, recorded in docs/results/mutation.md).
"""

from __future__ import annotations

import pytest
import torch
from helpers import real_models_enabled

from draftwise import Full, HeadTail, RandomDrop, SnapKV, SpecKV, SpecPC, generate, load_model
from draftwise.bench.ruler import generate_task, prompt_ids, prompt_messages
from draftwise.shared_prefill import SharedPrefill

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(not real_models_enabled(), reason="DRAFTWISE_SKIP_REAL_MODELS=1"),
]

NEW = 36  # a UUID and its full stop; also SpecKV's lookahead length


@pytest.fixture(scope="module")
def uuid_case(real_pair):
    """``(messages, ids [1, n], answer)`` of the UUID needle sample."""
    _, _, tokenizer = real_pair
    sample = generate_task("niah_single_3", tokenizer, 1024, 2, max_new_tokens=NEW)[1]
    ids = torch.tensor([prompt_ids(tokenizer, sample.prompt, sample.answer_prefix)])
    return prompt_messages(sample.prompt, sample.answer_prefix), ids, sample.answers[0]


def test_speckv_answers_where_snapkv_at_the_same_budget_does_not(real_pair, uuid_case):
    target, draft, tokenizer = real_pair
    _, ids, answer = uuid_case
    shared = SharedPrefill(observed_queries=32)  # one pre-fill of the prompt for the three methods

    def run(method):
        return generate(target, draft, tokenizer, ids, method=method, max_new_tokens=NEW, reuse=shared)

    assert answer in run(Full()).text, "the task is answerable"
    snap = run(SnapKV(budget=128))
    spec = run(SpecKV(budget=128))
    assert spec.stats.kv_pairs_kept == snap.stats.kv_pairs_kept == 128
    assert spec.stats.lookahead_tokens > 0
    assert answer in spec.text, spec.text
    assert answer not in snap.text, snap.text


def test_specpc_answers_where_draft_free_prompt_baselines_do_not(real_pair, uuid_case):
    target, draft, tokenizer = real_pair
    _, ids, answer = uuid_case
    outs = {
        type(method).__name__: generate(target, draft, tokenizer, ids, method=method, max_new_tokens=NEW)
        for method in (SpecPC(budget=256), HeadTail(budget=256), RandomDrop(budget=256))
    }
    assert {name: out.stats.prompt_tokens_kept for name, out in outs.items()} == dict.fromkeys(outs, 256)
    assert answer in outs["SpecPC"].text, outs["SpecPC"].text
    assert answer not in outs["HeadTail"].text and answer not in outs["RandomDrop"].text


def test_gemma3_drafts_specpc_for_the_qwen_target(real_pair, uuid_case):
    """README: Gemma 3 270M (a base model with its own tokenizer and no chat template) drafts for
    Qwen2.5-Coder-1.5B: its scores reach the target's tokens through the characters they cover."""
    target, _, tokenizer = real_pair
    draft, draft_tokenizer = load_model("gemma-3-270m")
    assert draft.config.model_type == "gemma3_text" and draft_tokenizer.chat_template is None
    messages, ids, answer = uuid_case
    out = generate(
        target,
        draft,
        tokenizer,
        messages,
        method=SpecPC(budget=256),
        max_new_tokens=NEW,
        draft_tokenizer=draft_tokenizer,
    )
    assert out.stats.prompt_tokens == ids.shape[1] and out.stats.prompt_tokens_kept == 256
    assert answer in out.text, out.text
