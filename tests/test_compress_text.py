"""``draftwise.compress_text``: SpecPC on plain text with the draft alone (what ``draftwise compress`` and
the server's upstream mode run), checked before any work."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

from draftwise import SpecPC, compress_text
from draftwise.checks import TooLarge, kv_cache_bytes
from draftwise.methods.base import OptionError

TEXT = " ".join(f"w{6 + (i * 7) % 80}" for i in range(120))
METHOD = SpecPC(budget=40, window=8, kernel=5, neighbourhood=4, first_layer=1)


@pytest.fixture(scope="module")
def draft():
    return tiny_model("qwen2", seed=1, layers=2)


def test_the_kept_text_is_the_methods_choice_in_order(draft):
    tokenizer = tiny_tokenizer()
    out = compress_text(draft, tokenizer, TEXT, METHOD)
    assert (out.tokens, out.tokens_kept) == (120, 40)
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False).input_ids])
    chosen = METHOD.keep_tokens(draft, ids, {1}).positions
    assert out.text == tokenizer.decode(ids[0, chosen].tolist())
    words = TEXT.split()
    assert out.text.split()[-8:] == words[-8:], "the window (the question) is kept"


def test_the_drafts_lookahead_ends_at_the_tokenizers_end_of_sequence(draft):
    """The tokenizer's end-of-sequence token is the draft's first guess: the lookahead ends there, and
    the kept text is the choice made with that shorter lookahead."""
    method = SpecPC(budget=40, window=8, kernel=5, neighbourhood=4, first_layer=1, lookahead=4)
    tokenizer = tiny_tokenizer()
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False).input_ids])
    first = method.keep_tokens(draft, ids).lookahead_ids[0, 0].item()
    stopped = method.keep_tokens(draft, ids, {first}).positions
    assert not torch.equal(stopped, method.keep_tokens(draft, ids).positions), "the stop changes the choice"
    tokenizer.eos_token = f"w{first}"
    assert compress_text(draft, tokenizer, TEXT, method).text == tokenizer.decode(ids[0, stopped].tolist())


def test_a_text_within_the_budget_comes_back_unchanged(draft):
    out = compress_text(draft, tiny_tokenizer(), "w7 w8 w9", METHOD)
    assert (out.text, out.tokens, out.tokens_kept) == ("w7 w8 w9", 3, 3)


def test_the_text_is_read_without_added_special_tokens(draft):
    """A tokenizer that adds BOS to what it encodes: the text's tokens are its words alone."""
    from tokenizers import processors

    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    assert compress_text(draft, tokenizer, "w7 w8 w9", METHOD).tokens == 3
    out = compress_text(draft, tokenizer, TEXT, METHOD)
    assert (out.tokens, out.tokens_kept) == (120, 40) and "<bos>" not in out.text


def test_the_default_method_is_specpcs_paper_defaults(draft):
    out = compress_text(draft, tiny_tokenizer(), TEXT)
    assert out.tokens_kept == out.tokens == 120, "the default budget (1024) keeps 120 tokens"


def no_work(model):
    def refuse(module, args):
        raise AssertionError("the draft ran")

    return model.register_forward_pre_hook(refuse)


@pytest.mark.parametrize(
    "text, method, error, match",
    [
        ("  \n", METHOD, ValueError, "^the text to compress is empty$"),
        (" ".join(["w7"] * 1100), METHOD, ValueError, "exceeds the draft's context of 1024"),
        (TEXT, SpecPC(budget=40, window=8, kernel=4096, neighbourhood=4), OptionError, "kernel"),
        (" ".join(["w7"] * 1000), SpecPC(budget=40, window=8, lookahead=30), OptionError, "lookahead"),
    ],
    ids=["empty", "beyond the context", "kernel beyond the context", "lookahead beyond the context"],
)
def test_bad_input_is_refused_before_any_work(draft, text, method, error, match):
    handle = no_work(draft)
    try:
        with pytest.raises(error, match=match):
            compress_text(draft, tiny_tokenizer(), text, method)
    finally:
        handle.remove()


def test_the_memory_limit_counts_the_drafts_cache_and_scores(draft):
    handle = no_work(draft)
    try:
        with pytest.raises(TooLarge, match="MiB of KV cache and attention weights"):
            compress_text(draft, tiny_tokenizer(), TEXT, METHOD, max_bytes=kv_cache_bytes(draft, 121))
    finally:
        handle.remove()
    # The cache holds the prompt, the lookahead token and the last one read; the scores are 4 heads'
    # float32 weights (and their softmax) of 8 window + 1 lookahead queries over 121 keys.
    generous = kv_cache_bytes(draft, 120 + 2) + 2 * 4 * 4 * (8 + 1) * 121
    assert compress_text(draft, tiny_tokenizer(), TEXT, METHOD, max_bytes=generous).tokens_kept == 40
    with pytest.raises(TooLarge, match=r"\(a prompt of 120 tokens and a lookahead of 1\), over the limit"):
        compress_text(draft, tiny_tokenizer(), TEXT, METHOD, max_bytes=generous - 1)
