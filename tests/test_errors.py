"""Bad input gets a clear error naming the problem."""

from __future__ import annotations

import copy
import typing
from dataclasses import fields

import pytest
import torch
from helpers import random_ids, tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from draftwise import (
    H2O,
    AdaKV,
    Full,
    HeadTail,
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
from draftwise.methods import METHODS, KVMethod
from draftwise.methods.base import Footprint, OptionError
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
        (lambda: SpecPC(lookahead=0), "lookahead must be a positive integer"),
        (lambda: SnapKV(budget=64, kernel=4), "odd"),
        (lambda: SnapKV(budget=64, pool="min"), "^pool must be one of max, avg, got 'min'$"),
        (lambda: SpecKV(budget=64, reduce="sum"), "reduce"),
        (lambda: SpecKV(budget=64, lookahead=0), "lookahead"),
        (lambda: SpecKVPC(kv_budget=8), "at least the window"),
        (lambda: SpecKVPC(lookahead=0), "lookahead must be a positive integer"),
        (lambda: SpecPC(budget=2.5), "budget must be an integer"),
        (
            lambda: SpecKV(budget=64, sparse_prefill="false"),
            "sparse_prefill must be true or false or one of auto",
        ),
        (lambda: SnapKV(budget=64, caote=1), "caote must be true or false"),
        (lambda: SpecPC(weighted_query="yes"), "weighted_query must be true or false"),
        (lambda: SpecKV(budget=64, kernel=7.0), "kernel must be an integer"),
        (lambda: SpecKV(budget=64, lookahead=True), "lookahead must be an integer or None"),
        (lambda: AdaKV(budget=64, floor=float("nan")), "floor must be a finite number"),
        (lambda: AdaKV(budget=64, floor=1.5), "floor must be a share"),
        (lambda: HeadTail(head="0.5"), "head must be a finite number"),
        (lambda: H2O(budget=64, block=0), "block must be a positive integer"),
        (lambda: HeadTail(head=1.5), "head must be a share"),
        (lambda: RandomDrop(seed=2**64), "seed must be in"),
        (lambda: RandomDrop(seed=-(2**63) - 1), "seed must be in"),
        (lambda: StreamingLLM(budget=64, sinks=-1), "sinks must be a non-negative integer"),
        (lambda: PyramidKV(budget=64, beta=0), "beta"),
        (lambda: SpecPC(first_layer=-1), "first_layer"),
    ],
)
def test_bad_method_parameters(make, message):
    with pytest.raises(OptionError, match=message) as caught:
        make()
    assert caught.value.option in str(caught.value), "the error names the option it is about"


# A value out of range for each option of any method (bools: not a bool).
OUT_OF_RANGE = dict(
    budget=0, window=0, kernel=0, pool="nope", reduce="nope", lookahead=-1, caote="yes",
    accept_lookahead="yes",
    sparse_prefill="yes", vertical=-1, slash=-1, sparse_kernel="triton",
    neighbourhood=0, first_layer=-1, weighted_query="yes",
    kv_budget=0, prompt_budget=0, kv_window=0, prompt_window=0, beta=-1, floor=1.5, sinks=-1, block=0,
    seed=2**64, head=1.5,
)  # fmt: skip


@pytest.mark.parametrize("name", [name for name in METHODS if name != "full"])
def test_every_option_out_of_range_is_named(name):
    """Built inside the test (not at collection), each option of each method, out of its range, raises
    an OptionError that names it, first thing in its message."""
    cls = METHODS[name]
    for option in (f.name for f in fields(cls)):
        with pytest.raises(OptionError) as caught:
            cls(**{option: OUT_OF_RANGE[option]})
        assert caught.value.option == option and str(caught.value).startswith(option), (option, caught.value)
    for option, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) is typing.Literal:
            for choice in typing.get_args(hint):
                assert getattr(cls(**{option: choice}), option) == choice


def test_a_budget_below_the_window_says_why():
    with pytest.raises(OptionError) as caught:
        SpecKV(budget=16, window=32)
    assert str(caught.value) == (
        "budget (16) must be at least the window (32): the window of the last tokens is always kept"
    )
    with pytest.raises(OptionError) as caught:
        SpecKVPC(kv_budget=8, kv_window=16)
    assert str(caught.value) == (
        "kv_budget (8) must be at least the window, kv_window (16): "
        "the window of the last tokens is always kept"
    )


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 1])
def test_random_drop_takes_every_seed_torch_takes(seed):
    kept = RandomDrop(budget=8, window=2, seed=seed).keep_tokens(None, torch.arange(20)[None]).positions
    assert len(kept) == 8


@pytest.mark.parametrize(
    "method, option",
    [
        (SpecPC(budget=40, window=8, kernel=50_000_000, neighbourhood=4), "kernel"),
        (SpecPC(budget=40, window=8, kernel=4, neighbourhood=20_000_000), "neighbourhood"),
        (SnapKV(budget=16, window=8, kernel=50_000_001), "kernel"),
        (SpecKV(budget=16, window=8, kernel=1025, lookahead=2), "kernel"),
        (H2O(budget=16, window=8, block=10**9), "block"),
        (StreamingLLM(budget=16, window=8, sinks=5000), "sinks"),
    ],
)
def test_widths_beyond_the_context_are_refused_before_any_work(pair, tokenizer, method, option):
    target, draft = pair

    def no_work(module, args):
        raise AssertionError("a model ran")

    hooks = [m.register_forward_pre_hook(no_work) for m in (target, draft)]
    try:
        with pytest.raises(OptionError, match=f"{option} .* at most the model's context") as caught:
            generate(target, draft, tokenizer, random_ids(50), method=method, max_new_tokens=4)
    finally:
        for hook in hooks:
            hook.remove()
    assert caught.value.option == option


def test_widths_are_not_bounded_when_the_model_gives_no_context():
    """A model config without a context length (``context_length`` is None) bounds no width."""
    SpecPC(kernel=10**6, neighbourhood=10**6).check_widths(None)
    with pytest.raises(OptionError, match="kernel"):
        SpecPC(kernel=10**6, neighbourhood=10**6).check_widths(4096)


def test_a_pool_and_neighbourhood_wider_than_the_prompt_span_it(pair, tokenizer):
    """SpecPC's defaults (kernel and neighbourhood 64) work on a 50-token prompt; from twice the
    prompt's length on, a wider pool or neighbourhood chooses alike (each spans the whole prompt)."""
    target, draft = pair
    ids = random_ids(50)
    default = generate(target, draft, tokenizer, ids, method=SpecPC(budget=24, window=8, first_layer=1))
    assert default.stats.prompt_tokens_kept == 24
    answers = [
        generate(target, draft, tokenizer, ids, max_new_tokens=6, method=method).token_ids
        for method in (
            SpecPC(budget=24, window=8, first_layer=1, kernel=101, neighbourhood=101),
            SpecPC(budget=24, window=8, first_layer=1, kernel=1001, neighbourhood=1024),
        )
    ]
    assert answers[0] == answers[1]


def test_lookahead_beyond_the_context_names_the_option(pair, tokenizer):
    target, draft = pair
    with pytest.raises(OptionError, match="lookahead .* exceeds the target's context of 1024") as caught:
        generate(target, draft, tokenizer, random_ids(500), method=SpecKV(budget=64, lookahead=600))
    assert caught.value.option == "lookahead"
    with pytest.raises(OptionError, match="lookahead .* exceeds the draft's context"):
        generate(target, draft, tokenizer, random_ids(500), method=SpecPC(budget=128, lookahead=600))


def test_footprint_counts_the_lookahead():
    """The lookahead's positions in both caches, and the attention rows its queries add to scoring."""
    assert SpecKV(budget=64, lookahead=600).footprint(300, 4) == Footprint(600, 600, 600, (32 + 600) * 900)
    assert SpecKV(budget=64, lookahead=None).footprint(300, 9) == Footprint(9, 9, 9, (32 + 9) * 309)
    assert SpecKV(budget=400).footprint(300, 4) == Footprint(4, None, 0), "no compression, no draft"
    assert SpecPC(budget=64, lookahead=3).footprint(300, 4) == Footprint(4, 4, 3, 0, (64 + 3) * 303)
    assert SnapKV(budget=64).footprint(300, 4) == Footprint(4, None, 0, 32 * 300)
    assert H2O(budget=64, block=16).footprint(300, 4) == Footprint(4, None, 0, 16 * 300)
    assert KNorm(budget=64).footprint(300, 4) == Footprint(4, None, 0, 0)
    assert SpecKVPC(lookahead=8).footprint(3000, 4) == Footprint(8, 9, 8, 40 * 2056, 72 * 3008)
    assert Perplexity(budget=64).footprint(300, 4) == Footprint(4, 0, 0)
    assert Perplexity(budget=400).footprint(300, 4) == Footprint(4, None), "no compression, no draft"
    assert HeadTail(budget=64).footprint(300, 4) == Footprint(4, None), "compresses with no draft"
    assert Full().footprint(300, 4) == Footprint(4, None) and not Full().compresses(10**6)
    # The prompt's last queries each scorer reads: none for a key-only scorer.
    assert [m.observed_queries(300) for m in (KNorm(budget=64), SnapKV(budget=64), H2O(budget=64))] == [
        0,
        32,
        300,
    ]


def test_window_larger_than_prompt_in_low_level_calls(pair):
    target, _ = pair
    with pytest.raises(ValueError, match="larger than the prompt"):
        prefill(target, torch.tensor([random_ids(10)]), SpecKV(budget=64, window=32))
    # a prompt exactly as long as the window is kept whole (nothing before the window to score)
    ids = torch.tensor([random_ids(8)])
    plain = prefill(target, ids)
    for cls in METHODS.values():
        if issubclass(cls, KVMethod):
            whole = prefill(target, ids, cls(budget=8, window=8))
            assert whole.cache.layers[0].keys.shape[2] == 8, cls.name
            assert torch.equal(whole.logits, plain.logits), cls.name


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


@pytest.mark.parametrize("temperature", [1e-300, 1e-6])
def test_a_tiny_temperature_is_greedy(pair, tokenizer, temperature):
    target, draft = pair
    greedy = generate(target, draft, tokenizer, random_ids(30), max_new_tokens=6)
    tiny = generate(target, draft, tokenizer, random_ids(30), max_new_tokens=6, temperature=temperature)
    assert tiny.token_ids == greedy.token_ids


def test_an_integer_temperature_samples(pair, tokenizer):
    target, draft = pair
    out = generate(target, draft, tokenizer, random_ids(30), max_new_tokens=4, temperature=1, seed=3)
    assert len(out.token_ids) >= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "top_p": float("nan")}, "top_p"),
        ({"temperature": 1.0, "seed": 2**64}, "seed"),
        ({"temperature": 1.0, "seed": 1.5}, "seed"),
    ],
)
def test_bad_sampling_values(pair, tokenizer, kwargs, message):
    target, draft = pair
    with pytest.raises(ValueError, match=message):
        generate(target, draft, tokenizer, random_ids(20), **kwargs)


def test_a_template_that_refuses_the_messages_is_a_value_error(pair, tokenizer):
    target, draft = pair
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('No system role') }}"
        "{% endif %}w3 {{ m['content'] }} w4 {% endfor %}w5"
    )
    messages = [{"role": "system", "content": "w7"}, {"role": "user", "content": "w8 w9"}]
    with pytest.raises(ValueError, match="chat template refused these messages: No system role"):
        generate(target, draft, strict, messages)


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


def test_a_prompt_method_without_draft_scores_says_so():
    with pytest.raises(NotImplementedError, match="random takes no draft scores"):
        RandomDrop(budget=64).token_scores(None, torch.tensor([random_ids(80)]))
