"""PyramidKV: SnapKV with layer budgets decreasing linearly with depth, the same total."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from draftwise.methods.base import OptionError
from draftwise.methods.snapkv import SnapKV


def pyramid_budgets(spare: int, layers: int, beta: int) -> list[int]:
    """Per-layer counts decreasing linearly from ``2*spare - spare/beta`` to ``spare/beta`` that sum
    to exactly ``spare * layers`` (the remainder of rounding goes to the first layers)."""
    if layers == 1:
        return [spare]
    low = spare / beta
    high = 2 * spare - low
    raw = [high - (high - low) * i / (layers - 1) for i in range(layers)]
    counts = [int(r) for r in raw]
    for i in range(spare * layers - sum(counts)):
        counts[i % layers] += 1
    return counts


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """SnapKV's scores, but lower layers keep more KV pairs than higher ones (Cai et al., 2024).

    Besides the window, layer ``i`` of ``L`` keeps a count falling linearly from
    ``2(C-w) - (C-w)/beta`` to ``(C-w)/beta``; the average over layers is the budget ``C``.
    """

    name: ClassVar[str] = "pyramidkv"

    beta: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1:
            raise OptionError("beta", f"beta must be an integer >= 1, got {self.beta!r}")

    def layer_budget(self, index: int, layers: int) -> int:
        return self.window + pyramid_budgets(self.budget - self.window, layers, self.beta)[index]
