"""The same invariants on a GPU, under every attention implementation installed there.

Skipped on machines without CUDA (CI here has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import ARCHITECTURES, forced, keeping_everything, random_ids, tiny_config

from draftwise import AdaKV, Full, SpecKV, generate
from draftwise.cache import prunable_layers
from draftwise.prefill import prefill

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IMPLEMENTATIONS = ["eager", "sdpa"] + (
    ["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []
)


def cuda_model(arch: str, attn: str, seed: int = 0, layers: int = 3):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers), attn_implementation=attn)
    return model.to("cuda", torch.bfloat16).eval()


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forced_exact_and_budgeted_on_cuda(arch, attn, tokenizer):
    """Every method's whole compression path, forced with budgets that keep everything, gives Full's
    answer on the GPU (AdaKV's per-head mask needs eager or sdpa); a small budget keeps its count.

    Methods that swap the attention function (the sparse pre-fill's plain-PyTorch attention, AdaKV's
    masked decode) compute the same attention by another kernel, which in bfloat16 is close but not
    bitwise: for them the first token must match and the rest is not compared."""
    target, draft = cuda_model(arch, attn), cuda_model(arch, attn, seed=1, layers=2)
    n = 90
    ids = random_ids(n)
    full = generate(target, draft, tokenizer, ids, method=Full(), max_new_tokens=8)
    for method in keeping_everything(n):
        if isinstance(method, AdaKV) and attn not in ("eager", "sdpa"):
            continue
        out = generate(target, draft, tokenizer, ids, method=forced(method), max_new_tokens=8)
        if method.swaps_attention:
            assert out.token_ids[0] == full.token_ids[0], method
        else:
            assert out.token_ids == full.token_ids, method
    filled = prefill(target, torch.tensor([ids]), SpecKV(budget=40, window=8), torch.tensor([ids[:4]]))
    for layer in prunable_layers(filled.cache):
        assert filled.cache.layers[layer].keys.shape[2] == 40
        assert filled.cache.layers[layer].keys.device.type == "cuda"
