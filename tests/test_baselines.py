"""Selection rules of the key-only baselines, on hand-made keys and through a real pre-fill."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, tiny_model

from draftwise import KeyDiff, KNorm, StreamingLLM
from draftwise.cli import build_method
from draftwise.prefill import prefill
from draftwise.scoring import top_indices


def kept(method, keys: torch.Tensor) -> list[int]:
    return top_indices(method.score(None, keys), method.budget - method.window)[0, 0].tolist()


def test_streamingllm_keeps_sinks_and_the_most_recent():
    keys = torch.randn(1, 1, 20, 4)
    assert kept(StreamingLLM(budget=10, window=2, sinks=4), keys) == [0, 1, 2, 3, 16, 17, 18, 19]
    assert kept(StreamingLLM(budget=10, window=2, sinks=0), keys) == list(range(12, 20))


def test_knorm_keeps_the_smallest_norms():
    norms = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0])
    keys = norms[None, None, :, None] * torch.tensor([0.6, 0.8])  # unit direction times norm
    assert kept(KNorm(budget=4, window=1), keys) == [1, 3, 5]


def test_keydiff_keeps_the_keys_least_like_the_mean():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [-1.0, 0.2], [0.0, 1.0], [1.0, -0.1]])[
        None, None
    ]
    assert kept(KeyDiff(budget=3, window=1), keys) == [3, 4]


def test_baselines_prune_a_real_cache_to_the_budget():
    target = tiny_model("llama")
    ids = torch.tensor([random_ids(60)])
    full = prefill(target, ids)
    for method in (
        StreamingLLM(budget=20, window=4),
        KNorm(budget=20, window=4),
        KeyDiff(budget=20, window=4),
    ):
        pruned = prefill(target, ids, method)
        for layer, state in enumerate(pruned.cache.layers):
            assert state.keys.shape[2] == 20
            original = full.cache.layers[layer].keys
            expected = top_indices(method.score(None, original[:, :, :56]), 16)
            torch.testing.assert_close(
                state.keys[:, :, :16], original.gather(2, expected[..., None].expand(-1, -1, -1, 16))
            )
            torch.testing.assert_close(state.keys[:, :, 16:], original[:, :, 56:])


def test_cli_builds_baselines():
    assert build_method("streamingllm", budget=64, window=8) == StreamingLLM(budget=64, window=8)
    with pytest.raises(ValueError, match="knorm takes no --lookahead"):
        build_method("knorm", budget=64, lookahead=3)
