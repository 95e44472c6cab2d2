"""Decoding helpers (draftwise/decoding.py) not covered by the sampling and position tests."""

from __future__ import annotations

from helpers import tiny_model, tiny_tokenizer

from draftwise.decoding import stop_token_ids


def test_stop_tokens_come_from_the_tokenizer_and_the_generation_config():
    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    model.generation_config.eos_token_id = [1, 7]
    assert stop_token_ids(tokenizer, model) == {1, 7}
    model.generation_config.eos_token_id = 9
    assert stop_token_ids(tokenizer, model) == {1, 9}
    tokenizer.eos_token = None
    model.generation_config.eos_token_id = None
    assert stop_token_ids(tokenizer, model) == set()
