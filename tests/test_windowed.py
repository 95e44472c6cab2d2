"""The windowed pre-fill: sliding-window layers read only their band, with the same outputs."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from helpers import WINDOW, random_ids, sliding_model, tiny_model
from transformers import DynamicCache

import draftwise.windowed
from draftwise import SpecPC
from draftwise.windowed import WindowedPrefill, sliding_window, windowed_prefill


class KeyCounter:
    """Records how many keys each call of the band's attention function read."""

    def __init__(self, override: WindowedPrefill) -> None:
        self.keys: list[int] = []
        inner = override.inner

        def counted(module):
            function = inner(module)

            def call(module, query, key, *args, **kwargs):
                self.keys.append(key.shape[2])
                return function(module, query, key, *args, **kwargs)

            return call

        override.inner = counted


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["gemma3_text", "mistral", "qwen2"])
def test_the_band_gives_the_dense_outputs(arch, attn):
    model = sliding_model(arch, attn)
    assert sliding_window(model) == WINDOW
    ids = torch.tensor([random_ids(70, seed=1)])
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        override = WindowedPrefill(model, block=8)
        counter = KeyCounter(override)
        with override:
            banded = model(input_ids=ids).logits
    torch.testing.assert_close(banded, dense, atol=1e-4, rtol=1e-4)
    # the sliding layers read 8 queries' band at a time (at most 8 + 15 keys), never the whole prompt
    assert max(counter.keys) == 70 or arch == "mistral"  # full layers (Mistral has none) read all
    assert min(counter.keys) <= 8 + WINDOW - 1
    assert sum(k <= 8 + WINDOW - 1 for k in counter.keys) >= 9


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_a_pass_after_a_cached_prefix(attn):
    """The queries are the last of the keys: 30 tokens cached, then 70 more read through the band."""
    model = sliding_model("gemma3_text", attn)
    ids = torch.tensor([random_ids(100, seed=5)])
    outputs = []
    for band in (False, True):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :30], past_key_values=cache, use_cache=True)
            override = WindowedPrefill(model, block=8)
            counter = KeyCounter(override)
            with override if band else nullcontext():
                outputs.append(model(input_ids=ids[:, 30:], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    assert min(counter.keys) <= 8 + WINDOW - 1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padding_stays_hidden(attn):
    """A left-padded batch: the band slices transformers' own mask, padding included."""
    model = sliding_model("gemma3_text", attn)
    ids = torch.tensor([random_ids(60, seed=2), random_ids(60, seed=3)])
    mask = torch.ones_like(ids)
    mask[1, :13] = 0
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=mask).logits
        with WindowedPrefill(model, block=8):
            banded = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(banded[0], dense[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(banded[1, 13:], dense[1, 13:], atol=1e-4, rtol=1e-4)


def test_only_where_it_was_measured(monkeypatch):
    gemma = sliding_model("gemma3_text", "sdpa")
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {"cpu": 40})
    assert isinstance(windowed_prefill(gemma, 40), WindowedPrefill)
    assert isinstance(windowed_prefill(gemma, 39), nullcontext)  # too short
    assert isinstance(windowed_prefill(tiny_model("llama", attn="sdpa"), 400), nullcontext)  # nothing slides
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {})
    assert isinstance(windowed_prefill(gemma, 400), nullcontext)  # a device not measured


def test_flash_attention_is_refused():
    model = sliding_model("gemma3_text", "sdpa")
    model.config._attn_implementation = "flash_attention_2"  # what __enter__ reads; nothing runs
    with pytest.raises(ValueError, match="windowed pre-fill need 'eager' or 'sdpa'"):
        WindowedPrefill(model).__enter__()
    model.config._attn_implementation = "sdpa"


def test_specpc_draft_reads_through_the_band(monkeypatch):
    """SpecPC's draft pass takes the band from WINDOWED_FROM on, with the same scores and lookahead."""
    draft = sliding_model("gemma3_text", "sdpa")
    method = SpecPC(budget=32, window=8, kernel=4, neighbourhood=4, first_layer=0, lookahead=3)
    ids = torch.tensor([random_ids(120, seed=4)])
    entered = []
    original = WindowedPrefill.__enter__

    def spy(self):
        entered.append(self)
        return original(self)

    monkeypatch.setattr(WindowedPrefill, "__enter__", spy)
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {})
    dense_scores, dense_lookahead = method.token_scores(draft, ids)
    assert not entered
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {"cpu": 64})
    monkeypatch.setattr(draftwise.windowed, "BLOCK", 8)
    keys = []
    plain_inner = WindowedPrefill.inner

    def counted(self, module):
        function = plain_inner(self, module)

        def call(module, query, key, *args, **kwargs):
            keys.append(key.shape[2])
            return function(module, query, key, *args, **kwargs)

        return call

    monkeypatch.setattr(WindowedPrefill, "inner", counted)
    scores, lookahead = method.token_scores(draft, ids)
    assert len(entered) == 1
    assert min(keys) <= 8 + WINDOW - 1  # blocks of 8 queries over their band, not the whole prompt
    torch.testing.assert_close(scores, dense_scores, atol=1e-5, rtol=1e-4)
    assert torch.equal(lookahead, dense_lookahead)


def test_a_mask_that_is_not_one_row_per_query_passes_through():
    """A broadcast 4D mask (a placeholder, a caller's own) is handed to the attention unchanged."""
    model = sliding_model("gemma3_text", "eager")
    module = model.model.layers[0].self_attn  # a sliding layer
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 40, 16, generator=generator)
    key = torch.randn(1, 2, 40, 16, generator=generator)
    mask = torch.zeros(1, 1, 1, 1)
    with WindowedPrefill(model, block=8) as override:
        out, _ = override.attention(module, query, key, key, mask, scaling=0.25, sliding_window=WINDOW)
        plain, _ = override.inner(module)(module, query, key, key, mask, scaling=0.25)
    torch.testing.assert_close(out, plain)


@pytest.mark.parametrize("name", ["full", "snapkv", "speckv"])
def test_the_targets_prefill_reads_through_the_band(name, monkeypatch, tokenizer):
    """The target's pre-fill (Full's and every KV method's) takes the band from WINDOWED_FROM on: the
    same greedy answer as the plain pre-fill, the band entered."""
    from draftwise import generate
    from draftwise.methods import build_method

    target = sliding_model("gemma3_text", "sdpa")
    draft = tiny_model("gemma3_text", seed=1, layers=2, attn="sdpa")
    method = None if name == "full" else build_method(name, budget=40, window=8)
    ids = random_ids(120, seed=6)
    entered = []
    original = WindowedPrefill.__enter__
    monkeypatch.setattr(WindowedPrefill, "__enter__", lambda self: entered.append(self) or original(self))
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {})
    plain = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=8)
    assert not entered
    monkeypatch.setattr(draftwise.windowed, "WINDOWED_FROM", {"cpu": 64})
    monkeypatch.setattr(draftwise.windowed, "BLOCK", 8)
    banded = generate(target, draft, tokenizer, ids, method=method, max_new_tokens=8)
    assert any(e.model is target for e in entered)
    assert banded.token_ids == plain.token_ids
