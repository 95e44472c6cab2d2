"""Head and tail: truncate the middle of the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import KeptTokens, PromptMethod, check_share
from draftwise.token_selection import select_tokens


@dataclass(frozen=True)
class HeadTail(PromptMethod):
    """Keep the first ``head`` share of the budget beyond the window from the start of the prompt, and
    the rest (the window included) from its end."""

    name: ClassVar[str] = "headtail"

    budget: int = 1024
    window: int = 64
    head: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_share("head", self.head)

    def keep_tokens(self, draft, input_ids, stop_ids=()):
        n = input_ids.shape[1]
        first = int((self.budget - self.window) * self.head)
        position = torch.arange(n, dtype=torch.float32)
        # the head scores above everything, then later tokens above earlier ones
        scores = torch.where(position < first, position.new_tensor(float(2 * n)), position)
        return KeptTokens(select_tokens(scores, self.budget, self.window), None, scores)
