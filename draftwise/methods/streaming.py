"""StreamingLLM: keep the first few tokens (attention sinks) and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import KVMethod, check_non_negative


@dataclass(frozen=True)
class StreamingLLM(KVMethod):
    """Keep the first ``sinks`` prefix keys and the most recent keys, ``budget`` in all per head.

    Position alone decides: sinks score highest, then later positions beat earlier ones.
    """

    name: ClassVar[str] = "streamingllm"
    widths: ClassVar[tuple[str, ...]] = ("sinks",)

    budget: int = 256
    window: int = 32
    sinks: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("sinks", self.sinks)

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        batch, heads, length, _ = keys.shape
        position = torch.arange(length, device=keys.device, dtype=torch.float32)
        score = torch.where(position < self.sinks, position.new_tensor(float(2 * length)), position)
        return score.expand(batch, heads, length)
