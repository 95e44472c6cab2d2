"""SnapKV: score each prefix key by the attention it gets from an observation window of queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from draftwise.methods.base import (
    KVMethod,
    OptionError,
    Pool,
    Reduce,
    check_non_negative,
    check_positive,
)
from draftwise.scoring import reduce_rows, smooth


@dataclass(frozen=True)
class SnapKV(KVMethod):
    """Keep, per layer and KV head, the ``budget - window`` prefix keys that the observation queries
    attend to most, plus the ``window`` most recent keys.

    The observation queries are the prompt's last ``window`` positions. Attention is reduced over the
    queries and over the query heads sharing a KV head with ``reduce``, then smoothed along the sequence
    with a centred 1-D ``pool`` of odd width ``kernel``.

    ``lookahead`` turns on the draft's lookahead as extra observation queries (``None``: as many
    tokens as will be generated; ``0``: none), which makes SnapKV into SpecKV and PyramidKV into
    lookahead-PyramidKV: the lookahead wraps any scorer of this family. The target reads the lookahead
    with its full cache, so it verifies it for free: with ``accept_lookahead`` (default) the tokens it
    accepts are the answer's first tokens (:mod:`draftwise.acceptance`); ``False`` drops them all.
    ``caote=True`` applies CAOTE's correction before the reduction (see
    :func:`draftwise.scoring.caote_correction`).
    """

    name: ClassVar[str] = "snapkv"
    uses_attention: ClassVar[bool] = True
    widths: ClassVar[tuple[str, ...]] = ("kernel",)

    budget: int = 256
    window: int = 32
    kernel: int = 7
    pool: Pool = "max"
    reduce: Reduce = "max"
    lookahead: int | None = 0
    accept_lookahead: bool = True
    caote: bool = False

    @property
    def uses_caote(self) -> bool:
        return self.caote

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("kernel", self.kernel)
        if self.kernel % 2 == 0:
            raise OptionError("kernel", f"kernel must be odd so the pool is centred, got {self.kernel}")
        if self.lookahead is not None:
            check_non_negative("lookahead", self.lookahead)

    @property
    def needs_draft(self) -> bool:
        return self.lookahead != 0

    def lookahead_length(self, max_new_tokens: int) -> int:
        return max_new_tokens if self.lookahead is None else self.lookahead

    @property
    def accepts_lookahead(self) -> bool:
        return self.accept_lookahead

    def score(self, rows: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Scores of prefix keys.

        Args:
            rows: attention probabilities ``[B, G, H/G, q, k]`` of the observation queries over the
                prefix keys (the keys before the window).
        Returns:
            ``[B, G, k]`` float32 scores, one per KV head and key.
        """
        return smooth(reduce_rows(rows, self.reduce), self.kernel, self.pool)
