"""TOVA: keep the keys the last prompt token attends to most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import KVMethod


@dataclass(frozen=True)
class TOVA(KVMethod):
    """Token Omission Via Attention (Oren et al., 2024): scores are the attention of the last prompt
    token, averaged over the query heads of each KV group (one-shot, at the end of pre-fill).
    ``caote=True`` applies CAOTE's correction to each weight first."""

    name: ClassVar[str] = "tova"
    uses_attention: ClassVar[bool] = True

    caote: bool = False

    @property
    def uses_caote(self) -> bool:
        return self.caote

    def observed_queries(self, prompt_length: int) -> int:
        return 1

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        return rows.mean(dim=(2, 3))
