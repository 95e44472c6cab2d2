"""KeyDiff (arXiv 2504.15364): keep the keys least similar to the mean key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from draftwise.methods.base import KVMethod


@dataclass(frozen=True)
class KeyDiff(KVMethod):
    """Keep, per head, the ``budget - window`` prefix keys whose cosine similarity to the head's mean
    prefix key is lowest, plus the window. Needs no attention scores."""

    name: ClassVar[str] = "keydiff"

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        keys = keys.float()
        anchor = keys.mean(dim=2, keepdim=True)
        return -F.cosine_similarity(keys, anchor, dim=-1)
