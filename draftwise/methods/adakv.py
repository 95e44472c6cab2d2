"""AdaKV: one top-k across all KV heads of a layer, so heads get unequal budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import check_share
from draftwise.methods.snapkv import SnapKV


def adaptive_selection(scores: torch.Tensor, count: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``count`` positions per head on average from ``scores`` ``[B, G, P]``.

    Each head first gets its own top ``floor * count``; the other ``G * (count - floor * count)`` places
    go to the best remaining scores of any head. Ties (common after max pooling) go to the earlier
    position, then to the earlier head, on every device. Returns ``(indices [B, G, L], valid [B, G, L])``:
    each head's chosen positions in ascending order, padded to the longest head (``valid`` False there).
    """
    batch, heads, length = scores.shape
    count = min(count, length)
    guaranteed = int(floor * count)
    rank = scores.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # ties: earlier first
    kept = rank < guaranteed
    # Position-major [B, P*G], so a stable sort breaks ties by position, then head (topk's order among
    # equal scores is unspecified and differs between devices).
    rest = scores.float().masked_fill(kept, float("-inf")).transpose(1, 2).reshape(batch, length * heads)
    extra = rest.argsort(dim=-1, descending=True, stable=True)[:, : heads * (count - guaranteed)]
    flat = kept.transpose(1, 2).reshape(batch, length * heads).scatter(1, extra, True)
    kept = flat.reshape(batch, length, heads).transpose(1, 2)
    counts = kept.sum(-1)  # [B, G]
    longest = int(counts.max())
    position = torch.arange(length, device=scores.device)
    order = (~kept * length + position).argsort(dim=-1)[..., :longest]  # kept positions first, ascending
    valid = torch.arange(longest, device=scores.device) < counts[..., None]
    # pad with the head's first kept position (hidden by `valid`)
    indices = torch.where(valid, order, order[..., :1])
    return indices, valid


@dataclass(frozen=True)
class AdaKV(SnapKV):
    """SnapKV's scores with AdaKV's allocation (Feng et al., 2024): the layer's ``G * (budget - window)``
    places go to the best scores of any head, each head keeping at least ``floor`` of its share.

    The layer's total equals SnapKV's; heads that keep fewer pairs are padded in the cache and masked
    at decode (``eager`` and ``sdpa`` attention). With ``lookahead`` it is Ada-SpecKV.
    """

    name: ClassVar[str] = "adakv"

    floor: float = 0.2

    @property
    def swaps_attention(self) -> bool:
        return True  # decoding masks the padded heads through an attention override

    def __post_init__(self) -> None:
        super().__post_init__()
        check_share("floor", self.floor)

    def select(self, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return adaptive_selection(scores, count, self.floor)
