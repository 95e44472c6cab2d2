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
    Edges pool over the tokens that exist (no padding value enters a max or a mean), so a kernel wider
    than twice the row pools the whole row; time and memory are O(n log n) whatever the kernel.
    """
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    shape = scores.shape
    n = shape[-1]
    if kernel <= 1 or n == 0:
        return scores
    x = scores.reshape(-1, n).float()
    left, right = min(kernel // 2, n - 1), min((kernel - 1) // 2, n - 1)
    out = _window_max(x, left, right) if pool == "max" else _window_mean(x, left, right)
    return out.reshape(shape)


def _window_max(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Per row of ``x`` ``[R, n]``, the max of ``x[i - left : i + right + 1]`` (clipped), by doubling."""
    n, width = x.shape[-1], left + right + 1
    spans = F.pad(x, (left, right), value=float("-inf"))  # spans[j]: max of padded[j : j + span]
    span = 1
    while 2 * span <= width:
        spans = torch.maximum(spans[:, :-span], spans[:, span:])
        span *= 2
    return torch.maximum(spans[:, :n], spans[:, width - span : width - span + n])


def _window_mean(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Per row of ``x`` ``[R, n]``, the mean of ``x[i - left : i + right + 1]`` (clipped), by prefix sums."""
    n = x.shape[-1]
    sums = F.pad(x.double().cumsum(-1), (1, 0))  # sums[i] = x[:i].sum()
    position = torch.arange(n, device=x.device)
    lo, hi = (position - left).clamp_min(0), (position + right + 1).clamp_max(n)
    return ((sums[:, hi] - sums[:, lo]) / (hi - lo)).float()


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
