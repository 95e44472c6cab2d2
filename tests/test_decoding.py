"""Decoding helpers (draftwise/decoding.py) not covered by the sampling and position tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import random_ids, tiny_model, tiny_tokenizer

from draftwise import AdaKV
from draftwise.cache import head_masks
from draftwise.decoding import GREEDY_BELOW, Sampler, decode, stop_token_ids
from draftwise.prefill import prefill


def test_stop_tokens_come_from_the_tokenizer_and_the_generation_config():
    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    model.generation_config.eos_token_id = [1, 7]
    assert stop_token_ids(tokenizer, model) == {1, 7}
    model.generation_config.eos_token_id = 9
    assert stop_token_ids(tokenizer, model) == {1, 9}
    tokenizer.eos_token = None
    model.generation_config.eos_token_id = None
    assert stop_token_ids(tokenizer, model) == set()


def test_a_tokenizer_or_config_without_an_eos_attribute_has_no_stop_ids():
    bare_model = SimpleNamespace(generation_config=SimpleNamespace())
    assert stop_token_ids(SimpleNamespace(), bare_model) == set()


def _adakv_prefill(n: int = 70):
    """A tiny model and a pre-fill whose heads kept unequal counts (decoded under the head mask)."""
    target = tiny_model("qwen2")
    out = prefill(target, torch.tensor([random_ids(n, seed=2)]), AdaKV(budget=24, window=4, floor=0.0))
    assert head_masks(out.cache), "heads got unequal counts"
    return target, out


def test_a_head_masked_decode_keeps_every_setting():
    """Under AdaKV's head mask, decoding still samples with the sampler given, calls ``on_token`` for
    every token, and with ``feed_last`` runs the last token through the model too."""
    n, steps = 70, 6
    draws = []
    for seed in (0, 0, 1):
        target, out = _adakv_prefill(n)
        sampler = Sampler(temperature=5.0, seed=seed)
        draws.append(decode(target, out.cache, out.logits, n, steps, sampler).tolist())
    assert draws[0] == draws[1] and draws[0] != draws[2], "seeded sampling, not greedy decoding"
    target, out = _adakv_prefill(n)
    seen: list[int] = []
    tokens = decode(target, out.cache, out.logits, n, steps, on_token=lambda t: seen.append(t) or False)
    assert seen == tokens[0].tolist() and len(seen) == steps, "False from on_token goes on"
    target, out = _adakv_prefill(n)
    assert decode(target, out.cache, out.logits, n, steps, on_token=lambda t: True).shape[1] == 1
    for feed_last, reads in ((False, steps - 1), (True, steps)):
        target, out = _adakv_prefill(n)
        before = out.cache.get_seq_length(0)
        decode(target, out.cache, out.logits, n, steps, feed_last=feed_last)
        assert out.cache.get_seq_length(0) == before + reads


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": -0.1}, "temperature must be a finite number >= 0, got -0.1"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0, got inf"),
        ({"temperature": True}, "temperature must be a finite number >= 0, got True"),
        ({"temperature": "1"}, "temperature must be a finite number >= 0, got '1'"),
        ({"top_p": 0}, "top_p must be a number in (0, 1], got 0"),
        ({"top_p": 1.01}, "top_p must be a number in (0, 1], got 1.01"),
        ({"top_p": float("nan")}, "top_p must be a number in (0, 1], got nan"),
        ({"seed": True}, "seed must be an integer in [-2**63, 2**64), got True"),
        ({"seed": 1.5}, "seed must be an integer in [-2**63, 2**64), got 1.5"),
        ({"seed": 2**64}, f"seed must be an integer in [-2**63, 2**64), got {2**64}"),
        ({"seed": -(2**63) - 1}, f"seed must be an integer in [-2**63, 2**64), got {-(2**63) - 1}"),
    ],
)
def test_sampling_settings_out_of_range_are_named(options, message):
    with pytest.raises(ValueError) as caught:
        Sampler(**options)
    assert str(caught.value) == message


def test_sampling_settings_at_their_bounds_are_taken():
    for options in (
        {"temperature": 0},
        {"top_p": 1},
        {"seed": -(2**63)},
        {"seed": 2**64 - 1},
        {"top_p": 1e-9},
    ):
        Sampler(**options)
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    assert Sampler(temperature=GREEDY_BELOW / 2, seed=0).greedy
    assert not Sampler(temperature=GREEDY_BELOW, seed=0).greedy
    assert all(int(Sampler(temperature=GREEDY_BELOW / 2)(logits)) == 1 for _ in range(5))
    # a nucleus that holds only the top token samples it every time, however hot
    nucleus = Sampler(temperature=1.0, top_p=0.5, seed=0)
    assert {int(nucleus(logits)) for _ in range(50)} == {1}
    assert len({int(Sampler(temperature=1.0, seed=s)(logits)) for s in range(50)}) > 1
