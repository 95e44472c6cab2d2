"""The same invariants on a GPU, under every attention implementation installed there.

Skipped on machines without CUDA (CI here has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import (
    ARCHITECTURES,
    assert_fused_prefill_is_reference,
    forced,
    keeping_everything,
    random_ids,
    sliding_model,
    tiny_config,
    tiny_model,
)

from draftwise import AdaKV, Full, SpecKV, generate
from draftwise.cache import prunable_layers
from draftwise.flex_sparse import flex_vertical_slash_attention, fused_available
from draftwise.prefill import prefill
from draftwise.sparse import vertical_slash_attention
from draftwise.windowed import WindowedPrefill

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


needs_triton = pytest.mark.skipif(not fused_available("cuda"), reason="no Triton: no fused kernel on CUDA")


@needs_triton
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_the_fused_kernel_on_cuda_is_the_reference(dtype, tolerance, softcap):
    """FlexAttention compiled by Triton over [gathered verticals | keys] gives the plain implementation's
    attention (computed on the CPU in float32): GQA, a tile and a half of queries after a cached prefix."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 700, 64, generator=generator)
    k = torch.randn(2, 2, 900, 64, generator=generator)
    v = torch.randn(2, 2, 900, 64, generator=generator)
    chosen = [torch.randperm(800, generator=generator)[:150] for _ in range(4)]
    verticals = torch.stack(chosen).view(2, 2, 150)
    expected = vertical_slash_attention(q, k, v, verticals, 256, 64**-0.5, softcap)
    on_gpu = [t.to("cuda", dtype) for t in (q, k, v)]
    got = flex_vertical_slash_attention(*on_gpu, verticals.cuda(), 256, 64**-0.5, softcap)
    torch.testing.assert_close(got.float().cpu(), expected, rtol=tolerance, atol=tolerance)


@needs_triton
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_fused_sparse_prefill_on_cuda_is_the_reference_one(arch, attn):
    """The whole sparse pre-fill on the GPU (float32) with the fused kernel gives the reference kernel's
    logits, cache and kept positions."""
    target = tiny_model(arch, attn=attn).cuda()
    ids = torch.tensor([random_ids(300)], device="cuda")
    guess = torch.tensor([random_ids(6, seed=3)], device="cuda")
    method = SpecKV(budget=64, window=8, sparse_prefill=True, vertical=32, slash=64, sparse_kernel="flex")
    assert_fused_prefill_is_reference(target, ids, guess, method, tolerance=1e-3)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["gemma3_text", "mistral", "qwen2"])
def test_the_windowed_prefill_on_cuda_is_the_dense_one(arch, attn):
    """Sliding-window layers read through the band on the GPU (float32) give the dense pre-fill's logits,
    a padded batch included (its real positions)."""
    model = sliding_model(arch, attn).cuda()
    ids = torch.tensor([random_ids(300, seed=1), random_ids(300, seed=2)], device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :37] = 0  # left padding
    with torch.no_grad():
        dense = model(input_ids=ids, attention_mask=mask).logits
        with WindowedPrefill(model, block=64):
            banded = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(banded[real], dense[real], atol=1e-3, rtol=1e-3)
