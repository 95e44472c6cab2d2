"""Decoding helpers (draftwise/decoding.py) not covered by the sampling and position tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from helpers import random_ids, tiny_model, tiny_tokenizer

from draftwise import AdaKV
from draftwise.cache import head_masks
from draftwise.decoding import Sampler, decode, stop_token_ids
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
