"""Which prompt tokens a prompt method keeps, given one score per token (``select_tokens``)."""

from __future__ import annotations

import torch


class _FreeRuns:
    """The prefix positions not kept yet, with the nearest free one on either side of any position in
    near-constant time (union-find with path halving), so growing neighbourhoods costs O(n) in all."""

    def __init__(self, size: int) -> None:
        self.kept = bytearray(size)
        self._left = list(range(size + 1))  # index i + 1 stands for position i; 0 for "none left"
        self._right = list(range(size + 1))  # index i for position i; size for "none right"

    def left_of(self, i: int) -> int:
        """The nearest free position <= ``i`` (-1 if none)."""
        parent, j = self._left, i + 1
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j - 1

    def right_of(self, i: int) -> int:
        """The nearest free position >= ``i`` (``size`` if none)."""
        parent, j = self._right, i
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    def keep(self, i: int) -> None:
        self.kept[i] = 1
        self._left[i + 1] = i
        self._right[i] = i + 1


def select_tokens(scores: torch.Tensor, budget: int, window: int, neighbourhood: int = 1) -> torch.Tensor:
    """Choose ``min(budget, n)`` token positions from scores ``[n]``, in ascending order.

    The last ``window`` tokens are always kept. The other places go, in descending score order, to
    each scored token and its neighbourhood of ``neighbourhood`` tokens (offsets 0, -1, +1, -2, +2,
    ...: ``neighbourhood // 2`` to the left, ``(neighbourhood - 1) // 2`` to the right, nearest first,
    left before right), skipping tokens already kept, until ``budget`` tokens are kept. Ties go to
    the earlier position. Time is O(n log n) whatever the neighbourhood.
    """
    n = scores.shape[-1]
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [n], got shape {tuple(scores.shape)}")
    if budget <= 0 or window <= 0 or neighbourhood <= 0:
        raise ValueError("budget, window and neighbourhood must be positive")
    if window > n:
        raise ValueError(f"window ({window}) is larger than the prompt ({n} tokens)")
    if budget < window:
        raise ValueError(f"budget ({budget}) must be at least the window ({window})")
    if budget >= n:
        return torch.arange(n)
    prefix = n - window
    free = _FreeRuns(prefix)
    count = window
    reach_left, reach_right = neighbourhood // 2, (neighbourhood - 1) // 2
    # Stable descending sort: equal scores keep position order.
    order = torch.sort(scores[:prefix].float().cpu(), descending=True, stable=True).indices.tolist()
    for centre in order:
        if count == budget:
            break
        lo, hi = max(0, centre - reach_left), min(prefix - 1, centre + reach_right)
        left, right = free.left_of(centre), free.right_of(centre)
        while count < budget:
            left_ok, right_ok = left >= lo, right <= hi
            if not (left_ok or right_ok):
                break
            # nearest first; at equal distance the left one (offset -d comes before +d)
            if left_ok and (not right_ok or centre - left <= right - centre):
                free.keep(left)
                if left == right:
                    right = free.right_of(right + 1)
                left = free.left_of(left - 1)
            else:
                free.keep(right)
                right = free.right_of(right + 1)
            count += 1
    return _positions(free.kept, n)


def _positions(kept_prefix: bytearray, n: int) -> torch.Tensor:
    chosen = [i for i, flag in enumerate(kept_prefix) if flag]
    return torch.tensor(chosen + list(range(len(kept_prefix), n)), dtype=torch.long)
