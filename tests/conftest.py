"""Fixtures shared by the tests; the helpers they build on are in ``helpers.py``."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_tokenizer
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer()


@pytest.fixture
def kept_positions(monkeypatch) -> dict[int, list[list[int]]]:
    """Records what pruning keeps: per pruned layer, each KV head's cache positions ``[G][C]``, as
    passed to :func:`draftwise.cache.keep_positions` (the last pruning of that layer wins)."""
    import draftwise.prefill

    record: dict[int, list[list[int]]] = {}
    real = draftwise.prefill.keep_positions

    def spy(cache, layer: int, indices: torch.Tensor, valid=None, after=None) -> None:
        record[layer] = indices[0].tolist()
        real(cache, layer, indices, valid, after)

    monkeypatch.setattr(draftwise.prefill, "keep_positions", spy)
    return record


class ForwardInputs(list):
    """The ``input_ids`` ``[n]`` (as lists) of every forward of the models it watches, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list = []

    def watch(self, model):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.append(ids[0].tolist())

        self.handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))
        return model


@pytest.fixture
def target_inputs():
    """Use as ``target_inputs.watch(model)``: records which tokens each forward of ``model`` read."""
    inputs = ForwardInputs()
    yield inputs
    for handle in inputs.handles:
        handle.remove()


@pytest.fixture(scope="session")
def real_pair():
    """The embedded pair ``(target, draft, tokenizer)``: Qwen2.5-Coder 1.5B and 0.5B, loaded once for
    every real-model test (installed by scripts/setup.sh)."""
    from draftwise import load_default_pair

    return load_default_pair()
