"""The recorded queries reproduce the model's own attention, under every attention implementation."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, random_ids, tiny_model
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from draftwise.attention import (
    _OVERRIDES,
    AttentionOverride,
    QueryRecorder,
    _dispatch_override,
    attention_modules,
    attention_rows,
)
from draftwise.cache import prunable_layers


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_rows_match_eager_attention(arch, attn):
    n, last = 30, 6
    ids = torch.tensor([random_ids(n, seed=2)])
    reference = tiny_model(arch, attn="eager")
    with torch.no_grad():
        expected = reference(input_ids=ids, output_attentions=True).attentions
    model = tiny_model(arch, attn=attn)
    cache = DynamicCache(config=model.config)
    with QueryRecorder(model, last=last) as recorder, torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    modules = attention_modules(model)
    checked = 0
    for layer in prunable_layers(cache):
        rows = attention_rows(
            recorder.queries(layer),
            cache.layers[layer].keys,
            torch.arange(n - last, n),
            modules[layer].scaling,
        )
        batch, groups, per_group, queries, keys = rows.shape
        got = rows.reshape(batch, groups * per_group, queries, keys)
        torch.testing.assert_close(got, expected[layer][:, :, -last:].float(), rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 1


def test_recorder_removes_its_hooks():
    model = tiny_model("llama")
    with QueryRecorder(model, last=2):
        pass
    assert all(not m._forward_hooks for m in attention_modules(model))


def test_recorder_ignores_another_threads_forward_caught_mid_registration():
    """torch registers a kwargs hook in two steps (the hook, then its with-kwargs flag), so another
    thread's forward in between calls it as hook(module, args, output): that must not fail."""
    import threading

    model = tiny_model("qwen2")
    ids = torch.tensor([random_ids(12, seed=1)])
    errors = []

    def forward_elsewhere():
        try:
            with torch.no_grad():
                model(input_ids=ids)
        except Exception as error:  # noqa: BLE001 - the test reports what the other thread hit
            errors.append(error)

    with QueryRecorder(model, last=2) as recorder:
        for module in attention_modules(model):
            module._forward_hooks_with_kwargs.clear()  # the state between torch's two steps
        thread = threading.Thread(target=forward_elsewhere)
        thread.start()
        thread.join()
    assert errors == []
    assert not recorder._chunks  # another thread's queries are not recorded


class _Recording(AttentionOverride):
    """An override that records what each call received, then runs ``sdpa`` attention."""

    implementation = "draftwise_test_recording"

    def __init__(self, model) -> None:
        super().__init__(model)
        self.masks: list = []

    def attention(self, module, query, key, value, attention_mask, **kwargs):
        self.masks.append(attention_mask)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def test_an_override_lasts_exactly_its_with_block():
    target = tiny_model("qwen2", attn="sdpa")
    ids = torch.tensor([random_ids(6)])
    expected = target(ids).logits
    override = _Recording(target)
    with override:
        assert target.config._attn_implementation == override.implementation
        assert torch.allclose(target(ids).logits, expected, atol=1e-5)
    assert len(override.masks) == target.config.num_hidden_layers
    assert target.config._attn_implementation == "sdpa"
    assert id(target.config) not in _OVERRIDES  # nothing left behind for a later model's config


def test_the_dispatch_passes_the_models_mask_and_refuses_outside_a_block():
    target = tiny_model("qwen2")
    module = attention_modules(target)[0]
    query = torch.zeros(1, target.config.num_attention_heads, 2, 8)
    key = torch.zeros(1, target.config.num_key_value_heads, 2, 8)
    mask = torch.tensor([[[[0.0, -1e9], [0.0, 0.0]]]])
    override = _Recording(target)
    with override:
        _dispatch_override(module, query, key, key, mask, scaling=1.0, dropout=0.0)
    assert override.masks[0] is mask
    with pytest.raises(
        RuntimeError, match="^a draftwise attention override was called outside its `with` block$"
    ):
        _dispatch_override(module, query, key, key, mask, scaling=1.0, dropout=0.0)
