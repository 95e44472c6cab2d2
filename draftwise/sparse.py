"""Sparse pre-fill (SpecKV step 5, and SpecPC's draft when asked): each query attends only to ``V``
"vertical" keys, chosen per layer and KV head by the method's ranking, and to a "slash" band of the
last ``S`` keys, cutting pre-fill attention from O(n²) to O(n·(V+S)).

It runs through transformers' attention interface: :class:`SparsePrefill` switches the model to
:data:`SPARSE_ATTENTION` for one forward pass, then back. Each layer ranks its keys by the attention of
the pass's last ``observed`` queries (SpecKV: the window and the lookahead, with SpecKV's own scorer;
SpecPC: its window, by the largest weight), so the verticals are the keys the method itself favours.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from draftwise import flex_sparse
from draftwise.attention import AttentionOverride, attention_rows
from draftwise.flex_sparse import (
    RecompileLimit,
    flex_vertical_slash_attention,
    fused_available,
)
from draftwise.scoring import top_indices

if TYPE_CHECKING:  # the methods import this module
    from draftwise.methods.base import SparsePrefilling

SPARSE_ATTENTION = "draftwise_vertical_slash"
log = logging.getLogger(__name__)

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def vertical_slash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    verticals: torch.Tensor | None,
    band: int,
    scaling: float,
    softcap: float | None = None,
    block: int = 256,
) -> torch.Tensor:
    """Causal attention where a query at position ``p`` sees the keys at ``verticals`` (if ``<= p``)
    and the keys at ``p - band + 1 .. p``.

    Args:
        query: ``[B, H, T, d]``, the last ``T`` positions of the ``K`` keys.
        key, value: ``[B, G, K, d]``.
        verticals: ``[B, G, V]`` key positions every later query sees, or ``None``.
    Returns:
        ``[B, T, H, d]`` attention output (the layout transformers' attention functions return).
    """
    batch, heads, length, dim = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    group = heads // kv_heads
    start = n_keys - length
    q = query.reshape(batch, kv_heads, group, length, dim)
    if verticals is not None:
        index = verticals[..., None].expand(-1, -1, -1, dim)
        vertical_keys = key.gather(2, index)
        vertical_values = value.gather(2, verticals[..., None].expand(-1, -1, -1, value.shape[-1]))
    outputs = []
    for first in range(0, length, block):
        last = min(first + block, length)
        positions = torch.arange(start + first, start + last, device=query.device)  # [t]
        lo = max(0, start + first - band + 1)
        hi = start + last
        band_positions = torch.arange(lo, hi, device=query.device)
        logits = torch.matmul(q[:, :, :, first:last], key[:, :, None, lo:hi].transpose(-1, -2)) * scaling
        distance = positions[:, None] - band_positions[None, :]
        hidden = ((distance < 0) | (distance >= band)).expand(batch, kv_heads, group, -1, -1)
        values = value[:, :, lo:hi]
        if verticals is not None:
            vertical_logits = torch.matmul(
                q[:, :, :, first:last], vertical_keys[:, :, None].transpose(-1, -2)
            )
            # A vertical in the future is hidden; one inside the band is already counted there.
            gap = positions[None, None, :, None] - verticals[:, :, None, :]  # [B, G, t, V]
            vertical_hidden = (gap < band)[:, :, None].expand(-1, -1, group, -1, -1)
            logits = torch.cat([vertical_logits * scaling, logits], dim=-1)
            hidden = torch.cat([vertical_hidden, hidden], dim=-1)
            values = torch.cat([vertical_values, values], dim=2)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        weights = logits.float().masked_fill(hidden, float("-inf")).softmax(dim=-1).to(value.dtype)
        outputs.append(torch.matmul(weights, values[:, :, None]))
    out = torch.cat(outputs, dim=3)  # [B, G, g, T, d]
    return out.reshape(batch, heads, length, -1).transpose(1, 2).contiguous()


class SparsePrefill(AttentionOverride):
    """While active, ``model``'s attention is vertical-slash attention: the fused kernel
    (:func:`fused_attention`) or the plain :func:`vertical_slash_attention`, per ``settings.sparse_kernel``
    (sliding-window layers: always the plain one).

    Full-attention layers take ``settings.vertical`` verticals ranked by ``score`` (attention rows
    ``[B, G, H/G, q, k]`` and keys ``[B, G, k, d]`` to scores ``[B, G, k]``) over the attention of the
    pass's last ``observed`` queries, and a band of ``settings.slash`` keys; sliding-window layers
    keep their own window as the band, with no verticals (exactly their usual attention).
    """

    implementation = SPARSE_ATTENTION

    def __init__(self, model: nn.Module, settings: SparsePrefilling, score: Scorer, observed: int) -> None:
        super().__init__(model)
        self.settings, self.score, self.observed = settings, score, observed

    def attention(
        self, module, query, key, value, attention_mask, scaling=None, sliding_window=None, **kwargs
    ):
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        softcap = getattr(module, "attn_logit_softcapping", None)
        if sliding_window:  # its own window as the band, no verticals: exactly its usual attention
            # the plain loop: for a narrow band it beat the fused kernel (Gemma 3 270M, 16k: 0.47x
            # dense against 0.58x, docs/results/prefill-gemma.md)
            return vertical_slash_attention(query, key, value, None, sliding_window, scaling, softcap), None
        kernel = self.settings.sparse_kernel
        if kernel == "auto":
            kernel = "flex" if fused_available(query.device.type) else "reference"
        attend = fused_attention if kernel == "flex" else vertical_slash_attention
        n_keys = key.shape[2]
        observed = min(self.observed, query.shape[2])
        candidates = n_keys - observed
        verticals = None
        if candidates > 0 and self.settings.vertical > 0:
            positions = torch.arange(n_keys - observed, n_keys)
            rows = attention_rows(query[:, :, -observed:], key, positions, scaling, softcap)[..., :candidates]
            verticals = top_indices(self.score(rows, key[:, :, :candidates]), self.settings.vertical)
        return attend(query, key, value, verticals, self.settings.slash, scaling, softcap), None


def fused_attention(query, key, value, verticals, band, scaling, softcap):
    """:func:`~draftwise.flex_sparse.flex_vertical_slash_attention`, with a clear error where it cannot be
    compiled, and the plain implementation (the same attention) once the process holds
    :data:`~draftwise.flex_sparse.RECOMPILE_LIMIT` compiled variants."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    try:
        return flex_vertical_slash_attention(query, key, value, verticals, band, scaling, softcap)
    except RecompileLimit:
        _warn_recompile_limit()
        return vertical_slash_attention(query, key, value, verticals, band, scaling, softcap)
    except (BackendCompilerFailed, InductorError) as error:
        raise RuntimeError(
            "the fused sparse pre-fill (FlexAttention) could not be compiled here "
            f"({type(error).__name__}); pass sparse_kernel='reference' (CLI --sparse-kernel reference)"
        ) from error


@functools.cache
def _warn_recompile_limit() -> None:
    log.warning(
        "the fused sparse pre-fill holds %d compiled variants, its limit: new shapes run the plain "
        "implementation (slower, the same attention)",
        flex_sparse.RECOMPILE_LIMIT,
    )
