"""Drafts with another tokenizer: character alignment, score transfer, lookahead translation."""

from __future__ import annotations

import pytest
import torch
from helpers import forced, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from draftwise import Full, Perplexity, SpecKV, SpecKVPC, SpecPC, generate
from draftwise.mapping import render, same_tokenizer, transfer_scores, translate
from draftwise.models import resolve

TRICKY = (
    "Héllo  wörld — naïve café\n\n日本語のテキスト\t\ttabs,  spaces   and the needle-7391 inside. Don't stop."
)


@pytest.fixture(scope="module")
def tokenizers():
    return {
        name: AutoTokenizer.from_pretrained(resolve(name))
        for name in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m")
    }


def tiny(arch: str, vocab: int, seed: int):
    torch.manual_seed(seed)
    config = tiny_config(arch, layers=2, vocab=vocab)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"])
@pytest.mark.parametrize("as_chat", [False, True])
def test_render_aligns_every_content_character(tokenizers, name, as_chat):
    tokenizer = tokenizers[name]
    prompt = [{"role": "user", "content": TRICKY}] if as_chat else TRICKY
    view = render(tokenizer, prompt)
    assert view.ids.shape[1] == len(view.offsets)
    ((start, end),) = view.contents
    assert view.text[start:end] == TRICKY
    spans = view.content_spans()
    covered = torch.zeros(len(TRICKY), dtype=torch.bool)
    for span in spans:
        if span is not None:
            assert 0 <= span[0] < span[1] <= len(TRICKY)
            covered[span[0] : span[1]] = True
    assert covered.all(), "every content character (multi-byte, whitespace runs) belongs to a token"
    # special and template tokens lie outside the content
    specials = set(tokenizer.all_special_ids)
    for token, span in zip(view.ids[0].tolist(), spans, strict=True):
        if token in specials:
            assert span is None


def test_transfer_scores_carries_a_word_across_tokenizers(tokenizers):
    source = render(tokenizers["smollm2-135m-instruct"], [{"role": "user", "content": TRICKY}])
    target = render(tokenizers["qwen2.5-coder-0.5b-instruct"], [{"role": "user", "content": TRICKY}])
    word = TRICKY.index("needle-7391")
    scores = torch.zeros(source.ids.shape[1])
    for i, span in enumerate(source.content_spans()):
        if span is not None and span[0] < word + 11 and span[1] > word:
            scores[i] = 1.0
    moved = transfer_scores(source, scores, target)
    for j, span in enumerate(target.content_spans()):
        if span is None:
            assert moved[j] == float("inf"), "template tokens are always kept"
        elif span[0] < word + 11 and span[1] > word:
            assert moved[j] == 1.0
        elif span[1] <= word - 2 or span[0] >= word + 13:
            assert moved[j] == 0.0


def test_translate_and_same_tokenizer(tokenizers):
    qwen, smol = tokenizers["qwen2.5-coder-0.5b-instruct"], tokenizers["smollm2-135m-instruct"]
    ids = smol(" The magic number is 7391.", add_special_tokens=False, return_tensors="pt").input_ids
    assert qwen.decode(translate(ids, smol, qwen)[0]) == " The magic number is 7391."
    assert same_tokenizer(qwen, qwen) and not same_tokenizer(qwen, smol)


@pytest.fixture(scope="module")
def cross_pair(tokenizers):
    qwen, smol = tokenizers["qwen2.5-coder-0.5b-instruct"], tokenizers["smollm2-135m-instruct"]
    return tiny("qwen2", len(qwen), 0), qwen, tiny("llama", len(smol), 1), smol


def test_cross_pair_forced_compression_keeping_everything_gives_full_answer(cross_pair, kept_positions):
    """The whole cross-tokenizer path (the draft reads its own rendering; scores cross through the
    characters; the lookahead is re-tokenized), forced with budgets that keep everything, is exact."""
    target, tokenizer, draft, draft_tokenizer = cross_pair
    messages = [{"role": "user", "content": " ".join([TRICKY] * 6)}]
    full = generate(target, None, tokenizer, messages, method=Full(), max_new_tokens=6)
    n = full.stats.prompt_tokens
    for method in (
        SpecKV(budget=n, window=16, lookahead=5),
        SpecPC(budget=n, window=16, kernel=16, neighbourhood=16, first_layer=1),
        SpecKVPC(kv_budget=n, prompt_budget=n, kv_window=16, prompt_window=16),
        Perplexity(budget=n),
    ):
        kept_positions.clear()
        out = generate(
            target,
            draft,
            tokenizer,
            messages,
            method=forced(method),
            max_new_tokens=6,
            draft_tokenizer=draft_tokenizer,
        )
        assert out.token_ids == full.token_ids, method
        assert out.stats.draft_seconds > 0, method
        assert (out.stats.lookahead_tokens > 0) == (not isinstance(method, Perplexity)), method
        assert bool(kept_positions) == isinstance(method, SpecKV | SpecKVPC), "pruning ran (keeping all)"


def test_cross_pair_budgets_count_target_tokens(cross_pair):
    target, tokenizer, draft, draft_tokenizer = cross_pair
    messages = [{"role": "user", "content": " ".join([TRICKY] * 12)}]
    kw = dict(max_new_tokens=3, draft_tokenizer=draft_tokenizer)
    out = generate(
        target, draft, tokenizer, messages, method=SpecPC(budget=120, window=16, first_layer=1), **kw
    )
    assert out.stats.prompt_tokens > 300 and out.stats.prompt_tokens_kept == 120
    out = generate(target, draft, tokenizer, messages, method=SpecKV(budget=64, window=8, lookahead=6), **kw)
    assert out.stats.kv_pairs_kept == 64 and out.stats.lookahead_tokens >= 1
    out = generate(target, draft, tokenizer, messages, method=SpecKVPC(kv_budget=64, prompt_budget=200), **kw)
    assert out.stats.prompt_tokens_kept == 200 and out.stats.kv_pairs_kept == 64
    out = generate(target, draft, tokenizer, messages, method=Perplexity(budget=150, window=16), **kw)
    assert out.stats.prompt_tokens_kept == 150 and out.stats.lookahead_tokens == 0


def test_cross_pair_needs_text_prompts(cross_pair):
    target, tokenizer, draft, draft_tokenizer = cross_pair
    ids = tokenizer(" ".join([TRICKY] * 12)).input_ids
    with pytest.raises(ValueError, match="text or chat messages"):
        generate(target, draft, tokenizer, ids, method=SpecKV(budget=64), draft_tokenizer=draft_tokenizer)


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"])
def test_render_continues_an_assistant_answer(tokenizers, name):
    answer = "Answer: the special magic number is"
    messages = [{"role": "user", "content": TRICKY}, {"role": "assistant", "content": answer}]
    view = render(tokenizers[name], messages)
    assert view.text.rstrip().endswith(answer), "the answer is left open for the model to continue"
    assert [view.text[s:e] for s, e in view.contents] == [TRICKY, answer]
    if tokenizers[name].chat_template:
        asking = render(tokenizers[name], messages[:1]).text
        assert view.text.startswith(asking), "the answer follows the user turn's generation prompt"


def test_ruler_harness_with_a_draft_of_another_tokenizer(cross_pair, tmp_path):
    from draftwise.bench.entries import build_entries
    from draftwise.bench.harness import run_ruler
    from draftwise.bench.records import read_records

    target, tokenizer, draft, draft_tokenizer = cross_pair
    entries = build_entries(["full", "speckv", "specpc"], [64], [256])
    out = tmp_path / "cross.jsonl"
    records = list(
        run_ruler(
            target,
            draft,
            tokenizer,
            entries,
            tasks=["niah_single_1"],
            lengths=[512],
            samples=1,
            out=out,
            max_new_tokens=3,
            progress=False,
            draft_tokenizer=draft_tokenizer,
        )
    )
    assert [r["label"] for r in records] == ["full", "speckv@64", "specpc@256"]
    assert records[1]["kv_pairs_kept"] == 64 and records[1]["lookahead_tokens"] >= 1
    assert records[2]["prompt_tokens_kept"] == 256
    assert len({r["prompt_tokens"] for r in records}) == 1
    assert read_records(out) == records


def test_speculative_decoding_refuses_a_draft_with_another_tokenizer(cross_pair):
    """Proposals are verified token by token, so speculative decoding needs the target's tokenizer: a
    clear error before any work (the same draft still serves SpecKV and SpecPC)."""
    from draftwise import SpeculativeConfig

    target, tokenizer, draft, draft_tokenizer = cross_pair
    messages = [{"role": "user", "content": TRICKY}]
    with pytest.raises(ValueError, match="target's tokenizer"):
        generate(
            target,
            draft,
            tokenizer,
            messages,
            draft_tokenizer=draft_tokenizer,
            speculative=SpeculativeConfig(),
        )
