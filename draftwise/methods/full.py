"""Full: no compression, the accuracy ceiling and the speed floor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from draftwise.methods.base import Method


@dataclass(frozen=True)
class Full(Method):
    """Keep the whole prompt and the whole KV cache."""

    name: ClassVar[str] = "full"
