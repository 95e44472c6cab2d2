"""H2O: keep the heavy hitters, the keys with the most attention accumulated over the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from draftwise.methods.base import KVMethod, check_positive


@dataclass(frozen=True)
class H2O(KVMethod):
    """Heavy-Hitter Oracle (Zhang et al., 2023), one-shot after pre-fill: each prefix key's score is
    the attention it received from every prompt query, summed over queries and over the query heads
    of its KV group. Attention is computed in blocks of ``block`` queries (memory O(block * n)).
    ``caote=True`` applies CAOTE's correction to each weight before the sum."""

    name: ClassVar[str] = "h2o"
    uses_attention: ClassVar[bool] = True
    widths: ClassVar[tuple[str, ...]] = ("block",)

    block: int = 256
    caote: bool = False

    @property
    def uses_caote(self) -> bool:
        return self.caote

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("block", self.block)

    def observed_queries(self, prompt_length: int) -> int:
        return prompt_length

    def rows_at_once(self, prompt_length: int, lookahead: int) -> int:
        return min(self.block, prompt_length)

    def layer_scores(
        self,
        module: nn.Module,
        queries: torch.Tensor | None,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
        prefix: int,
    ) -> torch.Tensor:
        total = torch.zeros(keys.shape[0], keys.shape[1], prefix, device=keys.device)
        for start in range(0, queries.shape[2], self.block):
            stop = start + self.block
            block = queries[:, :, start:stop]
            rows = self.observation_rows(module, block, keys, values, query_positions[start:stop])
            total += rows[..., :prefix].sum(dim=(2, 3))
        return total
