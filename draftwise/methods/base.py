"""What every compression method shares: a budget, and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

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
