"""The recorded queries reproduce the model's own attention, under every attention implementation."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, random_ids, tiny_model
from transformers import DynamicCache

from draftwise.attention import QueryRecorder, attention_modules, attention_rows
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
