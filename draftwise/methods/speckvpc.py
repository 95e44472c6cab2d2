"""SpecKV-PC: SpecPC first, then SpecKV on the compressed prompt, sharing one lookahead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from draftwise.methods.base import Footprint, Method, check_budget_and_window, check_positive
from draftwise.methods.speckv import SpecKV
from draftwise.methods.specpc import SpecPC


@dataclass(frozen=True)
class SpecKVPC(Method):
    """The cascade: SpecPC to ``prompt_budget`` tokens with a ``lookahead``-token draft answer, then
    SpecKV to ``kv_budget`` KV pairs on the compressed prompt, reusing that same lookahead as SpecKV's
    lookahead queries (the draft runs once); with ``accept_lookahead`` the tokens of it the target
    accepts (reading the compressed prompt) start the answer. Paper defaults: prompt budget 2048,
    lookahead 8.
    """

    name: ClassVar[str] = "speckvpc"

    @property
    def needs_draft(self) -> bool:
        return True

    kv_budget: int = 256
    prompt_budget: int = 2048
    lookahead: int = 8
    kv_window: int = 32
    prompt_window: int = 64
    accept_lookahead: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("lookahead", self.lookahead)
        check_budget_and_window(self, "kv_budget", "kv_window")
        check_budget_and_window(self, "prompt_budget", "prompt_window")
        # The stages check the rest (e.g. the widths against the model's context) when they run.
        self.prompt_stage()
        self.kv_stage()

    def prompt_stage(self) -> SpecPC:
        """SpecPC to ``prompt_budget`` tokens, writing the shared lookahead."""
        return SpecPC(budget=self.prompt_budget, window=self.prompt_window, lookahead=self.lookahead)

    def kv_stage(self) -> SpecKV:
        """SpecKV to ``kv_budget`` pairs on the compressed prompt, reading the shared lookahead."""
        return SpecKV(
            budget=self.kv_budget,
            window=self.kv_window,
            lookahead=self.lookahead,
            accept_lookahead=self.accept_lookahead,
        )

    def compresses(self, prompt_length: int) -> bool:
        return self.prompt_stage().compresses(prompt_length) or self.kv_stage().compresses(prompt_length)

    def kept_length(self, prompt_length: int) -> int:
        return min(prompt_length, self.prompt_budget, self.kv_budget)

    def footprint(self, prompt_length: int, max_new_tokens: int) -> Footprint:
        """The draft writes one lookahead (the last token read too); the KV stage pre-fills it."""
        if not self.compresses(prompt_length):
            return Footprint(max_new_tokens, None)
        steps = self.lookahead
        kept = min(prompt_length, self.prompt_budget)
        return Footprint(
            max(max_new_tokens, steps),
            steps + 1,
            steps,
            rows=(self.kv_window + steps) * (kept + steps),
            draft_rows=(self.prompt_window + steps) * (prompt_length + steps),
        )
