"""KNorm: keep the keys of smallest L2 norm (no attention needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import KVMethod


@dataclass(frozen=True)
class KNorm(KVMethod):
    """Keep, per head, the ``budget - window`` prefix keys with the smallest L2 norm, plus the window.

    Low-norm keys tend to receive high attention (Devoto et al., 2024).
    """

    name: ClassVar[str] = "knorm"

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        return -keys.float().norm(dim=-1)
