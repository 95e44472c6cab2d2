"""Random drop: a prompt-compression floor that keeps random tokens (and the window)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import PromptMethod


@dataclass(frozen=True)
class RandomDrop(PromptMethod):
    """Keep the last ``window`` tokens and ``budget - window`` others drawn uniformly (seeded)."""

    name: ClassVar[str] = "random"

    budget: int = 1024
    window: int = 64
    seed: int = 0

    def compress(self, draft, input_ids, stop_ids=()):
        from draftwise.prompt import CompressedPrompt, select_tokens

        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(input_ids.shape[1], generator=generator)
        return CompressedPrompt(select_tokens(scores, self.budget, self.window), None, scores)
