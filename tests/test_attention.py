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
    module_attention_rows,
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


def _reference_rows(queries, keys, positions, scaling, softcap=None):
    """Softmax of each query over the keys it may see (key position <= its own), in float64."""
    batch, heads, n_q, _ = queries.shape
    groups, n_k = keys.shape[1], keys.shape[2]
    rows = torch.zeros(batch, groups, heads // groups, n_q, n_k, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            g = h // (heads // groups)
            for i, position in enumerate(positions.tolist()):
                logits = (queries[b, h, i].double() @ keys[b, g].double().T) * scaling
                if softcap is not None:
                    logits = torch.tanh(logits / softcap) * softcap
                logits[torch.arange(n_k) > position] = float("-inf")
                rows[b, g, h % (heads // groups), i] = torch.softmax(logits, dim=-1)
    return rows


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_attention_rows_match_a_reference_per_sequence_of_a_batch(softcap):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 4, 3, 8, generator=generator) * 3
    keys = torch.randn(2, 2, 6, 8, generator=generator) * 3
    positions = torch.tensor([3, 4, 5])
    rows = attention_rows(queries, keys, positions, 0.5, softcap)
    expected = _reference_rows(queries, keys, positions, 0.5, softcap)
    assert torch.allclose(rows.double(), expected, atol=1e-6)
    assert torch.allclose(attention_rows(queries[1:], keys[1:], positions, 0.5, softcap), rows[1:])


def test_module_rows_use_the_modules_soft_capping():
    target = tiny_model("gemma3_text")
    module = attention_modules(target)[0]
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(1, target.config.num_attention_heads, 2, module.head_dim, generator=generator) * 4
    keys = torch.randn(1, target.config.num_key_value_heads, 5, module.head_dim, generator=generator) * 4
    positions = torch.tensor([3, 4])
    module.attn_logit_softcapping = 1.5
    capped = module_attention_rows(module, queries, keys, positions)
    assert torch.equal(capped, attention_rows(queries, keys, positions, module.scaling, 1.5))
    module.attn_logit_softcapping = None
    assert not torch.allclose(capped, module_attention_rows(module, queries, keys, positions))


def test_attention_modules_are_found_in_layer_order_or_refused_by_name():
    model = tiny_model("qwen2")
    layers = model.model.layers
    layers[0], layers[2] = layers[2], layers[0]  # module order no longer layer order
    assert [m.layer_idx for m in attention_modules(model)] == [0, 1, 2]
    with pytest.raises(TypeError) as caught:
        attention_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert str(caught.value) == (
        "Sequential has no attention modules with q_proj/k_proj/v_proj: draftwise supports Llama-style "
        "attention (Llama, Qwen2, Qwen3, Mistral, Gemma 3)"
    )


def test_recorder_takes_the_last_queries_of_each_forward_in_the_layers_asked():
    model = tiny_model("qwen2")
    ids = torch.tensor([random_ids(10, seed=3)])
    with torch.no_grad(), QueryRecorder(model, last=4) as everything:
        model(input_ids=ids)
    with torch.no_grad(), QueryRecorder(model, last=3, layers={1}) as recorder:
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], past_key_values=cache, use_cache=True)
        recorder.last = 5  # more than the next chunk holds: all of it
        model(input_ids=ids[:, 8:], past_key_values=cache, use_cache=True)
    recorded = recorder.queries(1)
    assert recorded.shape[2] == 3 + 2, "3 of the first forward, both of the second"
    torch.testing.assert_close(
        recorded[:, :, 1:], everything.queries(1), rtol=1e-4, atol=1e-5
    )  # positions 6-9
    with pytest.raises(KeyError, match="no queries were recorded for layer 0"):
        recorder.queries(0)  # not a layer it was asked for
    recorder.clear()
    with pytest.raises(KeyError, match="no queries were recorded for layer 1"):
        recorder.queries(1)
    with torch.no_grad(), QueryRecorder(model, last=0) as idle:
        model(input_ids=ids)
    assert not idle._chunks, "last=0 records nothing"
    with torch.no_grad(), QueryRecorder(model) as unset:
        model(input_ids=ids)
    assert not unset._chunks, "by default nothing is recorded until `last` is set"


def test_recorder_takes_more_queries_than_the_hidden_size_has_features():
    """``last`` counts positions (axis 1 of the hidden states ``[B, T, D]``), whatever D is."""
    model = tiny_model("llama")
    features = model.config.hidden_size
    ids = torch.tensor([random_ids(features + 30, seed=5)])
    with torch.no_grad(), QueryRecorder(model, last=features + 10, layers={0}) as recorder:
        model(input_ids=ids)
    assert recorder.queries(0).shape[2] == features + 10


def test_recorder_reads_positional_arguments_as_keyword_ones():
    """An attention module called with ``hidden_states`` and ``position_embeddings`` as positional
    arguments (as some models do) has the same queries recorded as one called with keywords."""
    model = tiny_model("qwen3")
    module = attention_modules(model)[0]
    hidden = torch.randn(1, 7, model.config.hidden_size)
    positions = torch.arange(7)[None]
    cos, sin = model.model.rotary_emb(hidden, positions)
    by_keyword, by_position = QueryRecorder(model, last=3), QueryRecorder(model, last=3)
    for recorder, args, kwargs in (
        (by_keyword, (), {"hidden_states": hidden, "position_embeddings": (cos, sin)}),
        (by_position, (hidden, (cos, sin)), {}),
    ):
        with recorder:
            recorder._hook(module, args, kwargs, None)
    torch.testing.assert_close(by_position.queries(0), by_keyword.queries(0), rtol=0, atol=0)
    assert by_keyword.queries(0).shape[2] == 3


def test_recorder_ignores_another_threads_forward():
    import threading

    model = tiny_model("qwen2")
    ids = torch.tensor([random_ids(6, seed=4)])
    with torch.no_grad(), QueryRecorder(model, last=2) as recorder:
        thread = threading.Thread(target=lambda: model(input_ids=ids))
        thread.start()
        thread.join()
    assert not recorder._chunks
