"""Aligning two tokenizations through the prompt's characters (draftwise/mapping.py), on the tiny
word-level tokenizer, whose tokens cover words and never the spaces between them."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_tokenizer

from draftwise.mapping import render, same_tokenizer, tokenize, transfer_scores, translate


def with_template(template: str | None):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


PLAIN = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5"
TRIM = "{% for m in messages %}{{ m['content'] | trim }} {% endfor %}"


def test_text_renders_with_its_content_from_the_first_character():
    view = render(tiny_tokenizer(), "w7 w8")
    assert view.contents == [(0, 5)] and view.anchors == [0] and view.content_length == 5
    assert view.content_spans() == [(0, 2), (3, 5)]


def test_text_with_trailing_whitespace_is_located_whole():
    view = render(tiny_tokenizer(), "w7 w8 ")
    assert view.contents == [(0, 6)] and view.anchors == [0] and view.content_length == 6


def test_a_trimmed_content_is_found_after_the_previous_one_and_before_the_next():
    """The middle content, trimmed by the template, reads "w7" like its neighbours: it is the one
    between them, not the first or the last."""
    messages = [{"role": "user", "content": c} for c in ("w7", "\tw7\n", "w7")]
    view = render(with_template(TRIM), messages)
    assert view.text == "w7 w7 w7 "
    assert view.contents == [(0, 2), (3, 5), (6, 8)] and view.anchors == [0, 3, 6]


def test_equal_contents_are_located_one_after_another():
    messages = [{"role": "user", "content": "w7"}, {"role": "user", "content": "w7"}]
    view = render(with_template(PLAIN), messages)
    assert view.text == "w3 w7 w4 w3 w7 w4 w5"
    assert view.contents == [(3, 5), (12, 14)] and view.anchors == [0, 2]
    assert [s for s in view.content_spans() if s] == [(0, 2), (2, 4)]


def test_a_trimmed_content_maps_its_remaining_characters():
    """The template trims; the stripped text is found at the start of the rendering (position 0), and
    its characters keep their places in the content as given."""
    messages = [{"role": "user", "content": "  w7 w8\n"}, {"role": "user", "content": "w9\t"}]
    view = render(with_template(TRIM), messages)
    assert view.text == "w7 w8 w9 "
    assert view.contents == [(0, 5), (6, 8)]
    assert view.anchors == [2, 8], "the first skips its two leading spaces"
    assert view.content_length == len("  w7 w8\n") + len("w9\t")
    assert view.content_spans() == [(2, 4), (5, 7), (8, 10)]


def test_a_whitespace_only_content_that_the_template_drops_is_not_located():
    messages = [{"role": "user", "content": "   "}, {"role": "user", "content": "w8"}]
    view = render(with_template("{% for m in messages %}{{ m['content'] | trim }}|{% endfor %}"), messages)
    assert view.contents == [(1, 3)] and view.anchors == [3]


def test_a_token_across_two_contents_spans_both():
    """With no separator the two contents make one word (one token): its span runs from the first
    content's start to the second's end, in content coordinates."""
    messages = [{"role": "user", "content": "w7"}, {"role": "user", "content": "w8"}]
    view = render(with_template("w3 {% for m in messages %}{{ m['content'] }}{% endfor %}"), messages)
    assert view.text == "w3 w7w8"
    assert view.content_spans() == [None, (0, 4)]


def test_transfer_carries_located_content_and_keeps_template_tokens():
    source = render(with_template(PLAIN), [{"role": "user", "content": "w7 w8 w9"}])
    spaced = with_template("{% for m in messages %}w3 {{ m['content'] | replace(' ', ' w5 ') }} {% endfor %}")
    target = render(spaced, [{"role": "user", "content": "w7 w8 w9"}])
    assert target.text == "w3 w7 w5 w8 w5 w9 "
    scores = torch.tensor([9.0, 5.0, 3.0, 7.0, 9.0, 9.0])  # w3 w7 w8 w9 w4 w5
    moved = transfer_scores(source, scores, target)
    # Only w7, w8 and w9 are located content ("w7 w5 w8 w5 w9" is not the content): template tokens +inf.
    assert moved.tolist() == [float("inf")] * 6
    plain = render(with_template(PLAIN), [{"role": "user", "content": "w7 w8 w9"}])
    assert (
        transfer_scores(source, scores, plain).tolist() == [float("inf"), 5.0, 3.0, 7.0] + [float("inf")] * 2
    )


def test_transfer_fills_uncovered_characters_with_the_lowest_finite_score():
    """The space characters are covered by no word-level token: a target token covering only spaces
    takes the lowest finite source score (0 when there is none)."""
    source = render(tiny_tokenizer(), "w7  w8")
    spaces = copy.deepcopy(tiny_tokenizer())
    from tokenizers import pre_tokenizers

    spaces.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    target = render(spaces, "w7  w8")
    assert [target.text[a:b] for a, b in target.offsets] == ["w7", " ", " ", "w8"]
    moved = transfer_scores(source, torch.tensor([4.0, 6.0]), target)
    assert moved.tolist() == [4.0, 4.0, 4.0, 6.0]
    none_finite = transfer_scores(source, torch.tensor([float("inf"), float("inf")]), target)
    assert none_finite.tolist() == [float("inf"), 0.0, 0.0, float("inf")]
    whole = copy.deepcopy(tiny_tokenizer())
    whole.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("|", behavior="isolated")
    coarse = render(whole, "w7  w8")
    assert len(coarse.offsets) == 1, "one token for the whole text"
    assert transfer_scores(source, torch.tensor([4.0, 6.0]), coarse).tolist() == [6.0], "its highest"


def test_transfer_refuses_what_does_not_match():
    source = render(tiny_tokenizer(), "w7 w8")
    with pytest.raises(ValueError, match="^the two renderings hold different contents$"):
        transfer_scores(source, torch.zeros(2), render(tiny_tokenizer(), "w7 w8 w9"))
    with pytest.raises(ValueError):  # one score per source token
        transfer_scores(source, torch.zeros(3), render(tiny_tokenizer(), "w7 w8"))


def test_tokenize_matches_render_and_keeps_special_tokens_as_the_model_reads_them():
    bos = tiny_tokenizer()
    bos.backend_tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    assert tokenize(bos, "w7 w8").tolist() == [[0, 7, 8]] == render(bos, "w7 w8").ids.tolist()
    chat = [{"role": "user", "content": "w7"}]
    assert tokenize(with_template(PLAIN), chat).tolist() == [[3, 7, 4, 5]]
    assert tokenize(with_bos(PLAIN), chat).tolist() == [[3, 7, 4, 5]], "no BOS on the template's text"
    empty = tokenize(tiny_tokenizer(), "")
    assert empty.shape == (1, 0) and empty.dtype == torch.long
    assert tokenize(tiny_tokenizer(), "w7").dtype == torch.long


def test_translate_goes_through_the_text_without_special_tokens():
    tokenizer = tiny_tokenizer()
    assert translate(torch.tensor([[0, 7, 8, 1]]), tokenizer, tokenizer).tolist() == [[7, 8]]
    assert translate(torch.tensor([[0, 1]]), tokenizer, tokenizer) is None
    assert translate(torch.tensor([[0, 7, 8]]), tokenizer, with_bos(None)).tolist() == [[7, 8]], "no BOS"


def test_same_tokenizer_compares_vocabularies():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert same_tokenizer(a, a) and same_tokenizer(a, b)
    other = tiny_tokenizer()
    other.add_tokens(["zz"])
    assert not same_tokenizer(a, other)
    renamed = copy.deepcopy(a)
    vocab = renamed.get_vocab()
    renamed.get_vocab = lambda: {**vocab, "w7": 999}  # same size, another vocabulary
    assert len(renamed) == len(a) and not same_tokenizer(a, renamed)


def with_bos(template: str | None):
    from tokenizers import processors

    tokenizer = with_template(template)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    return tokenizer


def test_a_base_model_reads_the_contents_joined_by_blank_lines_with_its_special_tokens():
    messages = [{"role": "user", "content": "w7"}, {"role": "assistant", "content": "w8"}]
    view = render(with_bos(None), messages)
    assert view.text == "w7\n\nw8" and view.ids.tolist() == [[0, 7, 8]]
    assert view.content_spans() == [None, (0, 2), (2, 4)]


def test_a_chat_template_brings_its_own_special_tokens():
    view = render(with_bos(PLAIN), [{"role": "user", "content": "w7"}])
    assert view.ids.tolist() == [[3, 7, 4, 5]], "no BOS added on top of the template's text"


def test_message_contents_are_strings_or_nothing():
    messages = [{"role": "system", "content": None}, {"role": "user", "content": "w8"}]
    view = render(with_template(PLAIN), messages)
    assert view.content_length == 2 and [s for s in view.content_spans() if s] == [(0, 2)]
    with pytest.raises(TypeError, match="a message's content must be a string, got list"):
        render(with_template(PLAIN), [{"role": "user", "content": [{"type": "text", "text": "w7"}]}])
