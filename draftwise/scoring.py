"""How scores are made from attention rows: reduce, smooth, pick the top keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reduce_rows(rows: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """Reduce attention rows ``[B, G, H/G, q, k]`` over query heads and queries to ``[B, G, k]``."""
    flat = rows.flatten(2, 3)
    if reduce == "max":
        return flat.amax(dim=2)
    if reduce == "mean":
        return flat.mean(dim=2)
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def smooth(scores: torch.Tensor, kernel: int, pool: str = "max") -> torch.Tensor:
    """Centred 1-D pooling along the last axis, output the same length as the input.

    An even ``kernel`` takes ``kernel // 2`` tokens on the left and ``kernel // 2 - 1`` on the right.
    Edges pool over the tokens that exist (no padding value enters a max or a mean).
    """
    if kernel <= 1:
        return scores
    shape = scores.shape
    x = scores.reshape(-1, 1, shape[-1]).float()
    left, right = kernel // 2, (kernel - 1) // 2
    if pool == "max":
        padded = F.pad(x, (left, right), value=float("-inf"))
        out = F.max_pool1d(padded, kernel, stride=1)
    elif pool == "avg":
        total = F.avg_pool1d(F.pad(x, (left, right)), kernel, stride=1)
        count = F.avg_pool1d(F.pad(torch.ones_like(x), (left, right)), kernel, stride=1)
        out = total / count
    else:
        raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    return out.reshape(shape)


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores along the last axis, in ascending (original) order.

    Ties (common after max pooling) go to the earlier position, on every device.
    """
    count = min(count, scores.shape[-1])
    ranked = scores.argsort(dim=-1, descending=True, stable=True)
    return ranked[..., :count].sort(dim=-1).values


def caote_correction(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """CAOTE's eviction error (arXiv 2504.14051) for attention ``rows`` ``[B, G, g, q, k]`` over all ``k``
    keys with ``values`` ``[B, G, k, d]``: each weight ``a`` of a key with value ``v`` becomes
    ``a / (1 - a) * ||v - o||``, the change its eviction makes to the attention output
    ``o = rows @ values``."""
    v = values.float()[:, :, None]  # [B, G, 1, k, d]
    out = rows @ v  # [B, G, g, q, d]
    squared = (
        v.square().sum(-1)[..., None, :] - 2 * out @ v.transpose(-1, -2) + out.square().sum(-1, keepdim=True)
    )
    distance = squared.clamp_min(0).sqrt()
    return rows / (1 - rows).clamp_min(1e-6) * distance
