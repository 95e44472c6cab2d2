"""What every compression method shares: a budget, and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

Pool = Literal["max", "avg"]
Reduce = Literal["max", "mean"]


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class Method:
    """Base of all methods. ``name`` is the identifier used by the CLI and in results."""

    name: ClassVar[str] = "method"
    needs_draft: ClassVar[bool] = False

    def compresses(self, prompt_length: int) -> bool:
        """Whether this method would drop anything from a prompt of ``prompt_length`` tokens."""
        return False


@dataclass(frozen=True)
class Budgeted(Method):
    """A method that keeps ``budget`` items (KV pairs or prompt tokens) and always keeps the last ``window``.

    A budget at least the prompt length is not an error: it means no compression.
    """

    budget: int = 256
    window: int = 32

    def __post_init__(self) -> None:
        check_positive("budget", self.budget)
        check_positive("window", self.window)
        if self.budget < self.window:
            raise ValueError(
                f"budget ({self.budget}) must be at least the window ({self.window}): "
                "the window of the last tokens is always kept"
            )

    def compresses(self, prompt_length: int) -> bool:
        return self.budget < prompt_length


@dataclass(frozen=True)
class KVMethod(Budgeted):
    """A method that drops KV pairs: per layer and KV head it keeps the ``budget - window`` best-scored
    prefix keys (the keys before the window) and the ``window`` most recent ones.

    Subclasses implement :meth:`score`. If ``uses_attention``, it receives the attention rows of the
    observation queries (the window's, plus a draft lookahead's for SpecKV); otherwise only the keys.
    """

    uses_attention: ClassVar[bool] = False

    def lookahead_length(self, max_new_tokens: int) -> int:
        """How many draft tokens feed the scorer as extra queries (none unless overridden)."""
        return 0

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, G, k]`` of the prefix keys ``[B, G, k, d]`` (higher is kept); ``rows`` are
        attention probabilities ``[B, G, H/G, q, k]`` of the observation queries over those keys."""
        raise NotImplementedError
