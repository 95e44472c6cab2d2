"""Random drop: a prompt-compression floor that keeps random tokens (and the window)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import KeptTokens, OptionError, PromptMethod
from draftwise.token_selection import select_tokens


@dataclass(frozen=True)
class RandomDrop(PromptMethod):
    """Keep the last ``window`` tokens and ``budget - window`` others drawn uniformly (seeded)."""

    name: ClassVar[str] = "random"

    budget: int = 1024
    window: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not -(2**63) <= self.seed < 2**64:
            raise OptionError("seed", f"seed must be in [-2**63, 2**64), got {self.seed}")

    def keep_tokens(self, draft, input_ids, stop_ids=()):
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(input_ids.shape[1], generator=generator)
        return KeptTokens(select_tokens(scores, self.budget, self.window), None, scores)
