"""What every compression method shares: a budget, and its validation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from draftwise.attention import module_attention_rows
from draftwise.scoring import caote_correction, top_indices

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

    @property
    def needs_draft(self) -> bool:
        """Whether the method runs the draft model."""
        return False

    def compresses(self, prompt_length: int) -> bool:
        """Whether this method would drop anything from a prompt of ``prompt_length`` tokens."""
        return False

    @property
    def swaps_attention(self) -> bool:
        """Whether a generation switches the model's attention implementation for a while (see
        :class:`draftwise.attention.AttentionOverride`): such a generation must not share the model
        with another running at the same time."""
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
    Attention scorers may declare a ``caote: bool`` field: CAOTE's correction then replaces each
    attention weight before scoring (:meth:`observation_rows`).
    """

    uses_attention: ClassVar[bool] = False

    def lookahead_length(self, max_new_tokens: int) -> int:
        """How many draft tokens feed the scorer as extra queries (none unless overridden)."""
        return 0

    def observed(self, prompt_length: int) -> int:
        """How many of the prompt's last queries the scorer reads (0 if it reads keys only)."""
        return self.window if self.uses_attention else 0

    def layer_budget(self, index: int, layers: int) -> int:
        """KV pairs per head kept in the ``index``-th of ``layers`` prunable layers (same for all here)."""
        return self.budget

    def select(self, scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``count`` best positions per head, ascending: ``(indices [B, G, count], None)``.

        A method giving heads unequal counts returns padded indices and a ``valid`` mask instead.
        """
        return top_indices(scores, count), None

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, G, k]`` of the prefix keys ``[B, G, k, d]`` (higher is kept); ``rows`` are
        attention probabilities ``[B, G, H/G, q, k]`` of the observation queries over those keys."""
        raise NotImplementedError

    def layer_scores(
        self,
        module: nn.Module,
        queries: torch.Tensor | None,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
        prefix: int,
    ) -> torch.Tensor:
        """Scores ``[B, G, prefix]`` of one layer's prefix keys, from its observed ``queries``
        ``[B, H, q, d]`` at ``query_positions`` and its cached ``keys`` and ``values`` ``[B, G, k, d]``."""
        rows = None
        if self.uses_attention:
            rows = self.observation_rows(module, queries, keys, values, query_positions)[..., :prefix]
        return self.score(rows, keys[:, :, :prefix])

    def observation_rows(
        self,
        module: nn.Module,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        query_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Attention rows ``[B, G, H/G, q, k]`` of ``queries`` over all cached keys, CAOTE-corrected
        when the method has ``caote=True``."""
        rows = module_attention_rows(module, queries, keys, query_positions)
        return caote_correction(rows, values) if getattr(self, "caote", False) else rows


@dataclass(frozen=True)
class PromptMethod(Budgeted):
    """A method that drops prompt tokens: the target reads the ``budget`` tokens it keeps, the last
    ``window`` included, in their original order."""

    def compress(self, draft: nn.Module | None, input_ids: torch.Tensor, stop_ids: Iterable[int] = ()):
        """The kept positions of ``input_ids`` ``[1, n]``, as a :class:`draftwise.prompt.CompressedPrompt`:
        by default the :meth:`choose` of the draft's :meth:`token_scores` (methods that need no draft
        override this)."""
        from draftwise.prompt import CompressedPrompt

        scores, lookahead_ids = self.token_scores(draft, input_ids, stop_ids)
        return CompressedPrompt(self.choose(scores), lookahead_ids, scores)

    def token_scores(
        self, draft: nn.Module, input_ids: torch.Tensor, stop_ids: Iterable[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For draft-scored methods: ``(scores [n], lookahead_ids [1, m] or None)`` of ``input_ids``
        ``[1, n]`` read by ``draft`` (higher is kept). A draft with another tokenizer scores its own
        tokens; the scores then reach the target's tokens through their characters, and
        :meth:`choose` picks among those."""
        raise NotImplementedError(f"{self.name} takes no draft scores")

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The kept positions (ascending) given per-token ``scores`` ``[n]``."""
        from draftwise.prompt import select_tokens

        return select_tokens(scores, self.budget, self.window)
