"""SpecKV's vertical-slash pre-fill attention as one fused kernel: PyTorch's FlexAttention.

:func:`~draftwise.sparse.vertical_slash_attention` (the reference) loops over query blocks in Python and
materializes each block's weights. Here, as MInference does, each KV head's vertical keys and values are
gathered into a compact "bar" placed before the keys, so the keys read are ``[bar | all keys]``: a
query at position ``p`` sees bar entry ``j`` if its position ``v_j <= p - band`` (a vertical inside the
band is seen there), and key ``k`` of the band if ``p - band < k <= p``. The block structure is built
directly (every bar block, and the key blocks the band crosses, per 128-query tile), so FlexAttention
skips everything else without evaluating a dense mask; ``torch.compile`` fuses it on CUDA and on x86
CPUs. Work and memory are O(n (V + S)) per head.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from functools import cache

import torch
from torch._dynamo.exc import FailOnRecompileLimitHit
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128  # FlexAttention's tile: queries and keys
BUCKET = 512  # lengths are padded to a multiple of this: one compiled kernel serves many prompts
# Compiled variants of the kernel a process may hold (one per padded length, band, head layout, ...).
# Dynamo's own limit (8) is reached by a server within a few prompt lengths; past it, dynamo would run
# FlexAttention unfused, materializing every score: ours fails instead (RecompileLimit), and the
# caller falls back to the plain implementation.
RECOMPILE_LIMIT = 256
RecompileLimit = FailOnRecompileLimitHit


@cache
def compiled_flex_attention():
    """``flex_attention`` compiled once per process; each new padded shape compiles once (inductor's
    cache on disk keeps it for later processes). Dynamic shapes fail to compile on CPU in torch 2.13."""
    return torch.compile(flex_attention, dynamic=False)


@cache
def fused_available(device_type: str) -> bool:
    """Whether ``torch.compile`` can build the fused kernel on this kind of device: a C++ compiler for
    CPUs (inductor's, ``$CXX`` or ``g++``), Triton for CUDA."""
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    if device_type == "cpu":
        return shutil.which(os.environ.get("CXX") or "g++") is not None
    return False


def _bar(verticals: torch.Tensor, width: int) -> torch.Tensor:
    """``verticals`` ``[B, G, V]`` padded with never-visible positions to ``width`` entries."""
    missing = width - verticals.shape[-1]
    if missing == 0:
        return verticals
    never = torch.iinfo(torch.int32).max // 2
    return torch.nn.functional.pad(verticals, (0, missing), value=never)


def _compact(candidates: torch.Tensor, chosen: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``chosen`` ``[..., C]``: how many, and their ``candidates`` first (padded to ``total``)."""
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)
    indices = candidates.expand_as(chosen).gather(-1, order)
    indices = torch.nn.functional.pad(indices, (0, total - indices.shape[-1]))
    return chosen.sum(-1).to(torch.int32), indices.to(torch.int32)


def block_mask(length: int, n_keys: int, bar: torch.Tensor, band: int, heads: int) -> BlockMask:
    """The :class:`BlockMask` of ``length`` queries (the last of ``n_keys`` positions, ``heads`` query
    heads) over ``[bar | keys]``: ``bar`` ``[B, G, W]`` the verticals' positions, sorted per head (``W``
    a multiple of ``BLOCK``).

    Per 128-query tile, a key block is skipped when no query of the tile sees any of its keys, "full"
    when every query sees every key (no mask evaluated), else partial (``mask_mod`` decides)."""
    device = bar.device
    batch, kv_heads, width = bar.shape
    start = n_keys - length
    q_blocks = -(-length // BLOCK)
    bar_blocks = width // BLOCK
    first = start + torch.arange(q_blocks, device=device) * BLOCK  # each tile's first query position
    last = torch.clamp(first + BLOCK - 1, max=n_keys - 1)
    # the bar: block j holds verticals sorted ascending, so its least and greatest positions decide
    blocks = bar.view(batch, kv_heads, bar_blocks, BLOCK)
    lowest, highest = blocks.min(-1).values[..., None, :], blocks.max(-1).values[..., None, :]
    bar_full = highest <= (first - band)[:, None]  # [B, G, Q, bar_blocks]
    bar_partial = (lowest <= (last - band)[:, None]) & ~bar_full
    # the band: key blocks from the first query's band start to the last query
    low = torch.clamp(first - band + 1, min=0) // BLOCK
    most = int((last // BLOCK - low).max()) + 1
    key_blocks = low[:, None] + torch.arange(most, device=device)[None]  # [Q, most]
    crossed = key_blocks <= (last // BLOCK)[:, None]
    band_full = crossed & (key_blocks * BLOCK + BLOCK - 1 <= first[:, None])
    band_full &= last[:, None] - key_blocks * BLOCK < band
    band_partial = crossed & ~band_full
    shape = (batch, kv_heads, q_blocks, -1)
    candidates = torch.cat(
        [torch.arange(bar_blocks, device=device).expand(q_blocks, -1), key_blocks + bar_blocks], dim=-1
    )
    partial = torch.cat([bar_partial, band_partial.expand(shape)], dim=-1)
    full = torch.cat([bar_full, band_full.expand(shape)], dim=-1)
    total = -(-(width + n_keys) // BLOCK)  # FlexAttention sizes the mask from the last dimension
    group = heads // kv_heads
    counts, indices = (t.repeat_interleave(group, dim=1) for t in _compact(candidates, partial, total))
    full_counts, full_indices = (t.repeat_interleave(group, dim=1) for t in _compact(candidates, full, total))
    positions = bar.to(torch.int32)

    def band_only(b, h, q_idx, kv_idx):
        query = q_idx + start
        return (kv_idx <= query) & (query - kv_idx < band)

    def bar_and_band(b, h, q_idx, kv_idx):
        query = q_idx + start
        is_bar = kv_idx < width
        vertical = positions[b, h // group, torch.clamp(kv_idx, max=width - 1)]
        key = kv_idx - width
        seen_in_bar = is_bar & (query - vertical >= band)
        seen_in_band = ~is_bar & (key <= query) & (query - key < band)
        return seen_in_bar | seen_in_band

    return BlockMask.from_kv_blocks(
        counts,
        indices,
        full_counts,
        full_indices,
        BLOCK_SIZE=BLOCK,
        mask_mod=bar_and_band if width else band_only,
        seq_lengths=(length, width + n_keys),
    )


def flex_vertical_slash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    verticals: torch.Tensor | None,
    band: int,
    scaling: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """The same attention as :func:`~draftwise.sparse.vertical_slash_attention`, fused.

    Args:
        query: ``[B, H, T, d]``, the last ``T`` positions of the ``K`` keys.
        key, value: ``[B, G, K, d]``.
        verticals: ``[B, G, V]`` key positions every later query sees, or ``None``.
    Returns:
        ``[B, T, H, d]``.
    """
    batch, heads, length, _ = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    # Queries and keys padded at the end to a multiple of BUCKET: prompts of nearby lengths share one
    # compiled kernel. A padded key sits after every real query (never seen); padded queries are cut.
    extra = -length % BUCKET
    if extra:
        query = torch.nn.functional.pad(query, (0, 0, 0, extra))
        key = torch.nn.functional.pad(key, (0, 0, 0, extra))
        value = torch.nn.functional.pad(value, (0, 0, 0, extra))
        length, n_keys = length + extra, n_keys + extra
    if verticals is None:
        verticals = torch.empty(batch, kv_heads, 0, dtype=torch.long, device=key.device)
    width = -(-verticals.shape[-1] // BLOCK) * BLOCK
    bar = _bar(verticals.sort(dim=-1).values, width)  # sorted: each bar block's range is its ends
    safe = bar.clamp(max=n_keys - 1)[..., None]
    keys = torch.cat([key.gather(2, safe.expand(-1, -1, -1, key.shape[-1])), key], dim=2)
    values = torch.cat([value.gather(2, safe.expand(-1, -1, -1, value.shape[-1])), value], dim=2)
    mask = block_mask(length, n_keys, bar, band, heads)
    score_mod = None
    if softcap is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.tanh(score / softcap) * softcap

    # inference only: FlexAttention has no backward on CPU, and a pre-fill needs none
    query, keys, values = query.detach(), keys.detach(), values.detach()
    limits = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
    with torch._dynamo.config.patch(limits):
        out = compiled_flex_attention()(
            query, keys, values, score_mod=score_mod, block_mask=mask, scale=scaling, enable_gqa=True
        )
    return out[:, :, : length - extra].transpose(1, 2).contiguous()
